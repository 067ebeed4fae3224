package master

import (
	"golang.org/x/sys/unix"
)

// bootNice is the niceness a worker boots with while others serve: an
// interpreter's start-up (imports, compiling) then takes CPU from the
// serving workers only when they leave some, so a reload does not push
// their latency up. The worker gets its normal priority back once ready.
const bootNice = 10

// canRestorePriority reports whether baton may lower a process's nice
// value back to its own (root, or RLIMIT_NICE allows it); without that a
// niced worker would stay slow, so boot priority is not lowered at all.
func canRestorePriority() bool {
	if unix.Geteuid() == 0 {
		return true
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NICE, &lim); err != nil {
		return false
	}
	own, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil {
		return false
	}
	// getpriority(2) returns 20-nice; RLIMIT_NICE allows nice down to
	// 20-rlim_cur.
	return lim.Cur >= uint64(own)
}

// lowerBootPriority makes the worker's process group boot at bootNice
// above baton's own priority, when baton can undo it and other workers
// serve: this master's, or, for the first generation of a master that an
// upgrade started, the old master's.
func (m *Master) lowerBootPriority(w *worker) {
	if !m.niceBoots || !m.othersServe() {
		return
	}
	if err := m.world.procs.SetGroupNice(w.pid, m.ownNice+bootNice); err != nil {
		m.log.Debug("cannot lower a booting worker's CPU priority", "pid", w.pid, "err", err)
		return
	}
	w.niced = true
}

// lowerRetirePriority makes a retiring worker's process group drain at
// bootNice while other workers serve. It takes no new connections any
// more, so what it still does is finish a few requests and tear down,
// and a teardown is start-up's mirror: 64 interpreters exiting at once
// after a reload took the CPU from the 64 new workers serving (the suite
// measured 80 ms requests for a second with uvicorn).
func (m *Master) lowerRetirePriority(w *worker) {
	if !m.niceBoots || !m.anyReady() {
		return
	}
	if err := m.world.procs.SetGroupNice(w.pid, m.ownNice+bootNice); err != nil {
		m.log.Debug("cannot lower a retiring worker's CPU priority", "pid", w.pid, "err", err)
	}
}

// restorePriority gives a niced worker's group baton's own priority.
func (m *Master) restorePriority(w *worker) {
	if !w.niced {
		return
	}
	w.niced = false
	if err := m.world.procs.SetGroupNice(w.pid, m.ownNice); err != nil {
		m.log.Warn("cannot restore a worker's CPU priority after boot", "pid", w.pid, "err", err)
	}
}

// lowerImportPriority makes a preload template import at bootNice while
// other workers serve: its import is the generation's start-up (the
// imports each exec'd worker would do, done once), so boot_nice keeps it
// off the serving workers' CPU as it keeps their boots. It gets its
// priority back once it has imported (restoreImportPriority): its forks
// then run at full speed, and each worker is niced on its own.
func (m *Master) lowerImportPriority(t *template) {
	if !m.niceBoots || !m.othersServe() {
		return
	}
	if err := m.world.procs.SetGroupNice(t.pid, m.ownNice+bootNice); err != nil {
		m.log.Debug("cannot lower an importing template's CPU priority", "pid", t.pid, "err", err)
		return
	}
	t.niced = true
}

// restoreImportPriority gives a niced template baton's own priority.
func (m *Master) restoreImportPriority(t *template) {
	if !t.niced {
		return
	}
	t.niced = false
	if err := m.world.procs.SetGroupNice(t.pid, m.ownNice); err != nil {
		m.log.Warn("cannot restore a template's CPU priority after its import", "pid", t.pid, "err", err)
	}
}

// othersServe reports whether workers serve while new ones start: this
// master's, or, for the first generation of a master that an upgrade
// started, the old master's.
func (m *Master) othersServe() bool {
	return m.anyReady() || m.upgradePipe != nil && !m.systemdReady
}

func (m *Master) anyReady() bool {
	for _, w := range m.workers {
		if w.state == ready {
			return true
		}
	}
	return false
}

// initBootPriority decides whether workers boot niced: at start, and
// when a reload changes boot_nice.
func (m *Master) initBootPriority() {
	m.niceBoots = false
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0)
	if err != nil || !m.opts.BootNice || !canRestorePriority() {
		return
	}
	m.niceBoots, m.ownNice = true, 20-prio
}
