package master

import (
	"fmt"
	"strings"
	"time"
)

// reload is a reload in progress: generation next is booting while old
// keeps serving. Old workers are retired slot by slot as their successors
// become ready; if any successor fails to boot, next is stopped and old is
// brought back to full strength.
//
// A HUP during a reload is queued (several coalesce into one) and starts a
// fresh reload, re-reading the config, once this one has ended either way:
// superseding a half-done reload would leave two partial generations to
// reconcile, and deploy tools send HUP after each step anyway.
type reload struct {
	old, next *generation
	// settings are the master's new settings, committed when the reload
	// succeeds (settings.go).
	settings *masterChange
	started  time.Time
	waiters  []*reloadWaiter // the clients waiting for this reload's end
}

// ReloadResult is how a reload ended.
type ReloadResult struct {
	Generation int
	OK         bool
	Reason     string
	Stderr     []string // the failing worker's last lines
	MasterPid  int      // upgrades: the new master
	Version    string   // upgrades: the new master's version
	Started    time.Time
	Duration   time.Duration
}

// reloadWaiter is a client (baton reload) waiting for a reload: it gets
// progress reports, which must not block, and the result.
type reloadWaiter struct {
	progress func(reload *reload)
	done     chan ReloadResult // buffered: delivering never blocks
}

func newReloadWaiter(progress func(*reload)) *reloadWaiter {
	return &reloadWaiter{progress: progress, done: make(chan ReloadResult, 1)}
}

// requestReload starts a reload, or queues one if a reload is in
// progress; w (nil for a HUP) waits for the one that reads the config
// after the request.
func (m *Master) requestReload(w *reloadWaiter) {
	if m.shutdown != running {
		m.log.Warn("reload ignored: shutting down")
		deliver([]*reloadWaiter{w}, ReloadResult{Reason: "the master is shutting down", Started: time.Now()})
		return
	}
	if m.upgrade != nil || m.steppedDown {
		m.log.Warn("reload refused: a binary upgrade is in progress")
		deliver([]*reloadWaiter{w}, ReloadResult{Reason: "a binary upgrade is in progress; reload when it has finished", Started: time.Now()})
		return
	}
	if m.reloading() {
		m.queued = true
		if w != nil {
			m.queuedWaiters = append(m.queuedWaiters, w)
		}
		m.log.Info("reload requested during a reload; it will start when this one ends",
			"generation", m.lastGen+1)
		return
	}
	m.startReload([]*reloadWaiter{w})
}

// reloading reports whether a reload is under way: its configuration
// being read, or its generation being brought up.
func (m *Master) reloading() bool {
	return m.reload != nil || m.loadingConfig
}

// deliver hands res to every waiter; nil waiters (HUPs) are skipped.
func deliver(waiters []*reloadWaiter, res ReloadResult) {
	for _, w := range waiters {
		if w != nil {
			w.done <- res
		}
	}
}

// configLoadTimeout bounds the reading of the configuration for a
// reload. Reading a regular file of at most 1 MiB takes milliseconds;
// this is for the file that is not one.
const configLoadTimeout = 10 * time.Second

// startReload reads the configuration off the master's goroutine, with
// a deadline: a configuration file that blocks (a FIFO, a hung network
// mount) must not stop the master from reaping and answering.
func (m *Master) startReload(waiters []*reloadWaiter) {
	started := time.Now()
	m.notifyReloading(m.lastGen + 1)
	m.loadingConfig = true
	type loaded struct {
		opts Options
		err  error
	}
	result := make(chan loaded, 1)
	go func() {
		opts, err := m.load()
		result <- loaded{opts, err}
	}()
	offLoop(m, func() loaded {
		select {
		case l := <-result:
			return l
		case <-time.After(configLoadTimeout):
			return loaded{err: fmt.Errorf("reading it took longer than %v", configLoadTimeout)}
		}
	}, func(l loaded) {
		m.loadingConfig = false
		if m.shutdown != running {
			deliver(waiters, ReloadResult{Generation: m.lastGen + 1, Reason: "abandoned: the master is shutting down", Started: started})
			return
		}
		m.applyConfig(waiters, started, l.opts, l.err)
	})
}

// applyConfig starts the reload of a configuration that was read.
func (m *Master) applyConfig(waiters []*reloadWaiter, started time.Time, opts Options, err error) {
	m.checkListeners("reload", nil)
	if down := m.downListeners(); down != "" {
		m.rejectConfig(waiters, started, down+"; restart baton to open it again")
		return
	}
	if err != nil {
		m.rejectConfig(waiters, started, "the configuration is invalid: "+err.Error(), "problems", strings.Split(err.Error(), "\n"))
		return
	}
	if changed := startOnlyChanges(m.opts, opts.Master); len(changed) > 0 {
		m.rejectConfig(waiters, started, "settings that apply at start only changed ("+strings.Join(changed, "; ")+
			"); restart baton to apply them")
		return
	}
	settings, err := m.prepareMasterChange(opts.Master)
	if err != nil {
		m.rejectConfig(waiters, started, err.Error())
		return
	}
	r := &reload{old: m.current, next: m.newGeneration(opts.Generation), settings: settings, started: started, waiters: waiters}
	m.reload = r
	g := opts.Generation
	m.log.Info("reload started", "generation", r.next.num, "workers", r.next.size,
		"strategy", string(g.Strategy), "ready", g.Ready.String(), "command", strings.Join(g.Command, " "))
	m.advanceReload()
}

// rejectConfig ends a reload whose new configuration cannot be applied;
// no worker was started, so the generation number stays free.
func (m *Master) rejectConfig(waiters []*reloadWaiter, started time.Time, reason string, attrs ...any) {
	gen := m.lastGen + 1
	m.log.Error("reload failed", append([]any{"generation", gen, "reason", reason + "; still running the old configuration",
		"serving_generation", m.current.num}, attrs...)...)
	res := m.endReload(ReloadResult{Generation: gen, OK: false, Reason: reason, Started: started})
	if m.metrics != nil {
		// A failure without a reload's duration: out of the histogram.
		m.metrics.ReloadRejected()
	}
	deliver(waiters, res)
	m.startQueued()
}

// advanceReload moves the reload in progress on after any event: retires
// the old workers whose successors are ready, finishes when all are
// ready, and starts as many new workers as the strategy allows.
func (m *Master) advanceReload() {
	r := m.reload
	if r == nil || m.shutdown != running {
		return
	}
	for id, s := range r.next.slots {
		if s.worker != nil && s.worker.state == ready {
			m.succeedSlot(r.old, id)
		}
	}
	if r.next.allReady() {
		m.completeReload()
		return
	}
	for id := 1; id <= r.next.size && len(m.workers) < m.processLimit(r); id++ {
		if _, started := r.next.slots[id]; started {
			continue
		}
		m.spawn(r.next.slot(id))
		if m.reload != r {
			return // the spawn failed the reload
		}
	}
	for _, w := range r.waiters {
		if w != nil && w.progress != nil {
			w.progress(r)
		}
	}
}

// processLimit is how many worker processes, draining ones included, may
// be alive during r.
func (m *Master) processLimit(r *reload) int {
	if r.next.opts.Strategy != Rolling {
		return int(^uint(0) >> 1)
	}
	return max(r.old.size, r.next.size) + r.next.opts.MaxSurge
}

// succeedSlot retires the old generation's worker in slot id: its
// successor is ready, or the whole new generation is.
func (m *Master) succeedSlot(old *generation, id int) {
	s := old.slots[id]
	if s == nil || s.succeeded {
		return
	}
	s.succeeded = true
	m.retireSlot(s)
}

func (m *Master) completeReload() {
	r := m.reload
	for id := range r.old.slots {
		m.succeedSlot(r.old, id)
	}
	m.current, m.reload = r.next, nil
	m.retireTemplates()
	m.commitMasterChange(r.settings)
	m.armMemoryChecks()
	m.checkListeners("reload", nil)
	d := time.Since(r.started)
	if down := m.downListeners(); down != "" {
		// The new generation serves what it can; the reload did not
		// bring the service back.
		reason := fmt.Sprintf("generation %d started, but %s; restart baton to open it again", r.next.num, down)
		m.log.Error("reload failed", "generation", r.next.num, "reason", reason)
		res := m.endReload(ReloadResult{Generation: r.next.num, OK: false, Reason: reason, Started: r.started})
		if m.metrics != nil {
			m.metrics.ReloadFinished(false, res.Duration)
		}
		deliver(r.waiters, res)
		m.startQueued()
		return
	}
	m.log.Info("reload succeeded", "generation", r.next.num, "workers", r.next.size,
		"duration", d.Round(time.Millisecond).String())
	res := m.endReload(ReloadResult{Generation: r.next.num, OK: true, Started: r.started})
	if m.metrics != nil {
		m.metrics.ReloadFinished(true, res.Duration)
	}
	deliver(r.waiters, res)
	m.startQueued()
}

// failReload stops the new generation and brings the old one back to full
// strength. culprit is the worker that failed, if any; its last stderr
// lines are logged once its stderr has drained.
func (m *Master) failReload(culprit *worker, reason string) {
	r := m.stopNewGeneration()
	if r == nil {
		return
	}
	result := ReloadResult{Generation: r.next.num, OK: false, Started: r.started, Reason: reason}
	if culprit != nil {
		result.Reason = fmt.Sprintf("worker in slot %d (pid %d) %s", culprit.slot, culprit.pid, reason)
	}
	recorded := m.endReload(result)
	if m.metrics != nil {
		m.metrics.ReloadFinished(false, recorded.Duration)
	}
	m.reportFailure(r, culprit, recorded)
	m.startQueued()
}

// failReloadReport fails the reload in progress for a reason no worker
// gave, reporting lines as its stderr: the preload template's traceback.
func (m *Master) failReloadReport(reason string, lines []string) {
	r := m.stopNewGeneration()
	if r == nil {
		return
	}
	res := m.endReload(ReloadResult{Generation: r.next.num, OK: false, Started: r.started, Reason: reason, Stderr: lines})
	if m.metrics != nil {
		m.metrics.ReloadFinished(false, res.Duration)
	}
	m.log.Error("reload failed", "generation", r.next.num, "reason", reason,
		"serving_generation", r.old.num, "duration", res.Duration.Round(time.Millisecond).String(), "stderr", lines)
	deliver(r.waiters, res)
	m.startQueued()
}

// stopNewGeneration ends the reload in progress as failed: the new
// generation is stopped, and the old one brought back to full strength.
// It returns the reload, nil when none was in progress.
func (m *Master) stopNewGeneration() *reload {
	r := m.reload
	if r == nil {
		return nil
	}
	m.reload = nil
	m.discardMasterChange(r.settings)
	for _, s := range r.next.slots {
		s.pending = false
		m.cancelFork(s)
		if s.worker != nil {
			m.retire(s.worker)
		}
	}
	for _, s := range r.old.slots {
		if s.succeeded {
			s.succeeded = false
			m.spawn(s)
		}
	}
	m.retireTemplates()
	return r
}

// reportFailure logs a failed reload and tells its waiters, with the
// culprit's last stderr lines.
func (m *Master) reportFailure(r *reload, culprit *worker, res ReloadResult) {
	report := func(lines []string) {
		res.Stderr = lines
		if hint := m.bindConflictHint(culprit, lines); culprit != nil && hint != "" {
			res.Reason += "; " + hint
		}
		if m.lastReload != nil && m.lastReload.Generation == res.Generation {
			m.lastReload.Stderr, m.lastReload.Reason = lines, res.Reason
		}
		m.log.Error("reload failed", "generation", r.next.num, "reason", res.Reason,
			"serving_generation", r.old.num, "duration", res.Duration.Round(time.Millisecond).String(), "stderr", lines)
		deliver(r.waiters, res)
	}
	if culprit == nil {
		report(nil)
		return
	}
	m.withLastLines(culprit, report)
}

// endReload records how a reload ended and returns the record. The
// reload an in-place upgrade began reports the upgrade: from its start,
// with this image's version.
func (m *Master) endReload(res ReloadResult) ReloadResult {
	if u := m.inPlaceUpgrade; u != nil {
		m.inPlaceUpgrade = nil
		res.Started, res.Version, res.MasterPid = u.started, m.opts.Version, m.pid
		if res.OK {
			m.log.Info("upgrade succeeded: this master runs the new binary, and its new generation serves",
				"version", m.opts.Version, "generation", res.Generation)
		}
	}
	res.Duration = time.Since(res.Started)
	m.lastReload = &res
	m.notifyReloadEnd(res)
	releaseMemory()
	return res
}

// startQueued starts the reload requested during the one that just ended.
func (m *Master) startQueued() {
	if !m.queued || m.shutdown != running {
		return
	}
	m.queued = false
	waiters := m.queuedWaiters
	m.queuedWaiters = nil
	m.log.Info("starting the reload that was queued")
	m.startReload(waiters)
}
