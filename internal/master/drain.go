package master

import (
	"time"

	"github.com/baton-pm/baton/internal/proc"
	"github.com/baton-pm/baton/internal/readiness"
	"github.com/baton-pm/baton/internal/unlisten"
)

const (
	// unlistenTimeout bounds the wait for the unlisten helpers; the stop
	// signal goes out then whatever they did.
	unlistenTimeout = time.Second
	// readPause lets a worker that no longer accepts read the requests of
	// connections it accepted just before, so its shutdown finds them in
	// progress instead of idle.
	readPause = 100 * time.Millisecond
	// deafWait bounds how long a reload's answer waits for the old
	// workers to stop accepting.
	deafWait = 2 * time.Second
)

// whenOnlyServing calls then, on the master's goroutine, once no worker
// but g's waits for connections on a listener, as /proc shows (what
// ready = "auto" looks for: the retired workers were made deaf, or have
// exited), or after deafWait at the most. A successful reload answers
// then: when `baton reload` returns, a new connection reaches only the new
// code.
func (m *Master) whenOnlyServing(g *generation, then func()) {
	deadline := time.Now().Add(deafWait)
	var check func()
	check = func() {
		var old []int
		for pid, w := range m.workers {
			if w.gen != g {
				old = append(old, pid)
			}
		}
		if len(old) == 0 {
			then()
			return
		}
		offLoop(m, func() bool {
			for _, pid := range old {
				if m.world.inspect.Waiting(pid) {
					return true
				}
			}
			return false
		}, func(accepting bool) {
			switch {
			case !accepting:
				then()
			case time.Now().After(deadline):
				m.log.Warn("old workers still wait for connections; answering the reload anyway", "waited", deafWait.String())
				then()
			default:
				m.after(autoProbeInterval, check)
			}
		})
	}
	check()
}

// unlistenThen removes the shared listeners from w's epoll sets, so it
// accepts no new connection while the next generation does, and calls
// then once that is done (or could not be done) and readPause has passed.
// Workers that wait on listeners otherwise (poll, select, blocking accept)
// have nothing to remove and are stopped at once. The epoll sets are
// found in /proc, off the master's goroutine.
func (m *Master) unlistenThen(w *worker, then func()) {
	offLoop(m, func() []readiness.Registration { return m.world.inspect.Registrations(w.pid) },
		func(regs []readiness.Registration) {
			if !m.alive(w) {
				return
			}
			m.startUnlisten(w, m.unlistenTargets(regs), then)
		})
}

// startUnlisten starts a helper per group of targets (one for a worker's
// whole tree, usually; see unlisten.Plan) and calls then once all have
// exited, or after unlistenTimeout.
func (m *Master) startUnlisten(w *worker, targets []unlisten.Target, then func()) {
	if len(targets) == 0 {
		then()
		return
	}
	pending, removed, helpers := 0, 0, 0
	finished := false
	finish := func() {
		if !finished {
			finished = true
			m.log.Debug("retiring worker no longer accepts", "slot", w.slot, "pid", w.pid,
				"removed", removed, "registrations", len(targets), "helpers", helpers)
			m.after(readPause, then)
		}
	}
	for _, group := range unlisten.Plan(targets) {
		pid, err := m.world.procs.StartUnlisten(group)
		if err != nil {
			m.log.Warn("cannot make a retiring worker stop accepting; stopping it anyway", "pid", w.pid, "err", err)
			continue
		}
		pending++
		helpers++
		m.helpers[pid] = func(e proc.Exit) {
			code := -1
			if e.Status.Exited() {
				code = e.Status.ExitStatus()
			}
			failed := unlisten.NotRemoved(code, len(group))
			removed += len(group) - failed
			if code != 0 {
				m.log.Warn("could not make a retiring worker stop accepting", "pid", w.pid,
					"status", proc.Describe(e.Status), "not_removed", failed, "registrations", len(group))
			}
			if pending--; pending == 0 {
				finish()
			}
		}
	}
	if pending == 0 {
		then()
		return
	}
	m.after(unlistenTimeout, finish)
}

// unlistenTargets maps the registrations found in a worker's tree to
// the listeners the master holds.
func (m *Master) unlistenTargets(regs []readiness.Registration) []unlisten.Target {
	byInode := map[uint64]int{}
	for i, ino := range m.listenerInodes {
		byInode[ino] = m.listeners[i].FD()
	}
	var targets []unlisten.Target
	for _, r := range regs {
		fd, ok := byInode[r.Inode]
		if !ok {
			continue
		}
		targets = append(targets, unlisten.Target{Pid: r.Pid, EpollFD: r.EpollFD, FD: r.FD, ListenerFD: fd})
	}
	return targets
}
