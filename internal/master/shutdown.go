package master

import (
	"fmt"
	"syscall"
	"time"

	"github.com/baton-pm/baton/internal/proc"
)

// quickTimeout bounds a quick shutdown (INT, QUIT) before SIGKILL.
const quickTimeout = 2 * time.Second

type shutdownMode int

const (
	running shutdownMode = iota
	graceful
	quick
)

// beginShutdown stops every worker: TERM (graceful) gives them
// graceful_timeout to finish in-flight requests; INT and QUIT (quick) send
// SIGINT and kill after a short while. A quick request during a graceful
// shutdown escalates it; a second quick request kills at once. A reload in
// progress is abandoned.
// sig is the signal that asked for it, or 0 for a control request.
func (m *Master) beginShutdown(mode shutdownMode, sig syscall.Signal) {
	switch {
	case m.shutdown == quick && mode == quick:
		m.log.Warn("second quick shutdown request: killing workers now")
		m.killAll()
		return
	case m.shutdown >= mode:
		return
	}
	m.shutdown = mode
	if !m.handedOver {
		// After a hand-over the new master is the service.
		m.tellSystemd("STOPPING=1", "STATUS=shutting down")
	}
	m.abandonReloads()
	stopSig, timeout := m.opts.StopSignal, m.opts.GracefulTimeout
	if mode == quick {
		stopSig, timeout = syscall.SIGINT, min(quickTimeout, m.opts.GracefulTimeout)
	}
	cause := []any{"requested_by", "control socket"}
	if m.handedOver {
		cause = []any{"requested_by", "upgrade hand-over"}
	}
	if sig != 0 {
		cause = []any{"signal", proc.SignalName(sig)}
	}
	m.log.Info("shutting down", append(cause, "graceful", mode == graceful,
		"workers", len(m.workers), "timeout", timeout.String())...)
	for _, w := range m.workers {
		w.state = draining
		m.signalWorker(w, stopSig)
	}
	m.after(timeout, func() {
		if m.shutdown == mode && len(m.workers) > 0 {
			m.log.Warn("workers still running after the shutdown timeout; killing them",
				"workers", len(m.workers), "timeout", timeout.String())
			m.killAll()
		}
	})
}

func (m *Master) killAll() {
	for _, w := range m.workers {
		m.signalWorker(w, syscall.SIGKILL)
	}
}

// scale adds or retires one worker of the current generation (TTIN, TTOU);
// never below one, and not while a reload is bringing up a generation.
func (m *Master) scale(delta int) {
	if m.shutdown != running {
		return
	}
	if m.reload != nil {
		m.log.Warn("cannot scale during a reload; send the signal again once it has finished")
		return
	}
	g := m.current
	if delta < 0 && g.size <= 1 {
		m.log.Warn("not scaling down: one worker is the minimum", "workers", g.size)
		return
	}
	if delta > 0 {
		g.size++
		m.log.Info("scaling up", "workers", g.size)
		m.spawn(g.slot(g.size))
		return
	}
	s := g.slots[g.size]
	delete(g.slots, g.size)
	g.size--
	m.log.Info("scaling down", "workers", g.size)
	s.pending = false
	m.retireOutgoing(s)
	if s.worker != nil {
		m.retire(s.worker)
	}
}

// abandonReloads ends the reload in progress and the queued one: the
// master is shutting down. Their waiters are told so.
func (m *Master) abandonReloads() {
	abandoned := ReloadResult{Reason: "abandoned: the master is shutting down", Started: time.Now()}
	if r := m.reload; r != nil {
		m.log.Warn("reload abandoned: shutting down", "generation", r.next.num)
		abandoned.Generation = r.next.num
		deliver(r.waiters, abandoned)
		m.reload = nil
	}
	deliver(m.queuedWaiters, abandoned)
	m.queued, m.queuedWaiters = false, nil
}

// scaleTo sets the current generation's worker count (baton scale N).
func (m *Master) scaleTo(n int) error {
	switch {
	case n < 1:
		return fmt.Errorf("scale: %d workers: one worker is the minimum", n)
	case m.shutdown != running:
		return fmt.Errorf("scale: the master is shutting down")
	case m.reload != nil:
		return fmt.Errorf("scale: a reload is in progress; try again when it has finished")
	}
	for m.current.size < n {
		m.scale(+1)
	}
	for m.current.size > n {
		m.scale(-1)
	}
	return nil
}
