package master

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// errMasterExited answers a request that arrives while the master exits.
var errMasterExited = errors.New("the master is exiting")

// call runs f on the master's goroutine and waits until it has run. If ctx
// ends or the master exits first, f may still run later and the caller
// must not read what it writes.
func (m *Master) call(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case m.events <- func() { f(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	case <-m.quit:
		return errMasterExited
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-m.quit:
		return errMasterExited
	}
}

// controlHandler serves the control socket for m.
type controlHandler struct{ m *Master }

// ControlHandler returns the control socket's view of m.
func (m *Master) ControlHandler() control.Handler { return controlHandler{m} }

func (h controlHandler) Status(ctx context.Context) (control.Status, error) {
	return h.m.Status(ctx)
}

// Status describes the master and its workers, with each worker's
// memory and process count.
func (m *Master) Status(ctx context.Context) (control.Status, error) {
	var st control.Status
	procs := map[int]process{}
	err := m.call(ctx, func() {
		st = m.status()
		for pid, w := range m.workers {
			procs[pid] = w.proc
		}
		for pid, t := range m.templates {
			procs[pid] = t.proc
		}
	})
	if err != nil {
		return control.Status{}, err
	}
	// Read here, off the master's goroutine.
	for i := range st.WorkerList {
		if p := procs[st.WorkerList[i].Pid]; p != nil {
			u := p.Usage()
			st.WorkerList[i].RSS, st.WorkerList[i].Procs = u.Memory, u.Procs
		}
	}
	for i := range st.Templates {
		if p := procs[st.Templates[i].Pid]; p != nil {
			st.Templates[i].RSS = p.Usage().Memory
		}
	}
	return st, nil
}

// status snapshots the state; it runs on the master's goroutine.
func (m *Master) status() control.Status {
	st := control.Status{
		Pid:          m.pid,
		Version:      m.opts.Version,
		Started:      m.started,
		Uptime:       time.Since(m.started).Seconds(),
		ConfigFile:   m.opts.ConfigFile,
		Containment:  m.containment,
		State:        m.serviceState(),
		ReadyWorkers: m.readyWorkers(),
		Reloading:    m.reloading(),
		ShuttingDown: m.shutdown != running,
		LastReload:   toControlResult(m.lastReload),
	}
	if m.current != nil {
		st.Generation, st.Workers = m.current.num, m.current.size
	}
	if m.shutdown == lameDuck {
		st.LameDuck = &control.LameDuck{
			Delay: m.opts.ShutdownDelay.Seconds(),
			Left:  m.lameDuckLeft().Seconds(),
		}
	}
	for _, l := range m.listeners {
		cl := control.Listener{Name: l.Name, Addr: l.Addr, State: "listening"}
		if why, down := m.listenersDown[l.Name]; down {
			cl.State, cl.Error = "down", why
		}
		st.Listeners = append(st.Listeners, cl)
	}
	st.Degraded = m.crashLooping()
	for pid, w := range m.workers {
		restarts := 0
		if s := w.gen.slots[w.slot]; s != nil {
			restarts = s.restarts
		}
		st.WorkerList = append(st.WorkerList, control.Worker{
			Slot: w.slot, Pid: pid, Generation: w.gen.num, State: w.state.String(),
			Started: w.started, Uptime: time.Since(w.started).Seconds(),
			Restarts: restarts, Status: w.status, ForeignListeners: w.foreign, Template: w.template, Watchdog: w.watched,
		})
	}
	st.Templates = m.templateStatus()
	sort.Slice(st.WorkerList, func(i, j int) bool {
		a, b := st.WorkerList[i], st.WorkerList[j]
		if a.Generation != b.Generation {
			return a.Generation > b.Generation
		}
		return a.Slot < b.Slot
	})
	return st
}

func toControlResult(r *ReloadResult) *control.ReloadResult {
	if r == nil {
		return nil
	}
	return &control.ReloadResult{
		Generation: r.Generation, OK: r.OK, Reason: r.Reason, Stderr: r.Stderr,
		Started: r.Started, Duration: r.Duration.Seconds(), MasterPid: r.MasterPid, Version: r.Version,
	}
}

func (h controlHandler) Reload(ctx context.Context, progress func(control.Progress)) (control.ReloadResult, error) {
	m := h.m
	report := func(r *reload) {
		if progress != nil {
			progress(m.progressOf(r))
		}
	}
	w := newReloadWaiter(report)
	err := m.call(ctx, func() {
		if m.reloading() && progress != nil {
			progress(control.Progress{Generation: m.lastGen + 1, Phase: "queued"})
		}
		m.requestReload(w)
	})
	if err != nil {
		return control.ReloadResult{}, err
	}
	return m.awaitResult(ctx, w)
}

// awaitResult waits for the reload or upgrade w waits on to end.
func (m *Master) awaitResult(ctx context.Context, w *reloadWaiter) (control.ReloadResult, error) {
	select {
	case res := <-w.done:
		return *toControlResult(&res), nil
	case <-ctx.Done():
		return control.ReloadResult{}, ctx.Err()
	case <-m.quit:
		return control.ReloadResult{}, errMasterExited
	}
}

func (h controlHandler) TriggerReload(ctx context.Context) error {
	return h.m.call(ctx, func() { h.m.requestReload(nil) })
}

// progressOf counts r's workers; it runs on the master's goroutine.
func (m *Master) progressOf(r *reload) control.Progress {
	p := control.Progress{Generation: r.next.num, Workers: r.next.size, Phase: "starting"}
	for _, w := range m.workers {
		switch {
		case w.state == draining:
			p.Draining++
		case w.gen == r.next && w.state == ready:
			p.Ready++
		case w.gen == r.next:
			p.Starting++
		default:
			p.OldServing++
		}
	}
	if p.Ready > 0 {
		p.Phase = "handing over"
	}
	return p
}

func (h controlHandler) Upgrade(ctx context.Context, progress func(control.Progress)) (control.ReloadResult, error) {
	m := h.m
	w := newReloadWaiter(nil)
	newMaster, inPlace := 0, false
	if err := m.call(ctx, func() {
		m.requestUpgrade(w)
		if m.upgrade != nil {
			newMaster, inPlace = m.upgrade.pid, m.upgrade.inPlace
		}
	}); err != nil {
		return control.ReloadResult{}, err
	}
	if progress != nil && newMaster != 0 && !inPlace {
		progress(control.Progress{Master: newMaster, Phase: "the new master is starting its workers"})
	}
	if progress != nil && inPlace {
		progress(control.Progress{Phase: "upgrade: checking the new binary; then this master executes it in place"})
	}
	return m.awaitResult(ctx, w)
}

func (h controlHandler) TriggerUpgrade(ctx context.Context) error {
	return h.m.call(ctx, func() { h.m.requestUpgrade(nil) })
}

func (h controlHandler) Scale(ctx context.Context, workers int) error {
	var err error
	if callErr := h.m.call(ctx, func() { err = h.m.scaleTo(workers) }); callErr != nil {
		return callErr
	}
	return err
}

func (h controlHandler) Stop(ctx context.Context, fast bool) error {
	mode := graceful
	if fast {
		mode = quick
	}
	return h.m.call(ctx, func() { h.m.beginShutdown(mode, 0) })
}
