package master

import (
	"errors"
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
	// deafWaitLimit bounds how long a reload's answer waits for the old
	// workers to stop accepting.
	deafWaitLimit = 2 * time.Second
)

// whenOnlyServing calls then, on the master's goroutine, once no worker
// but g's can accept a connection: every other one was made deaf (its
// unlisten helpers removed each of its listeners' epoll registrations),
// or has exited; after deafWait at the most. A worker that waits in poll,
// select or accept (gunicorn's sync worker, puma) cannot be made deaf, and
// between two requests it is not even seen waiting: only its exit tells.
// A successful reload answers then: when `baton reload` returns, a new
// connection reaches only the new code.
func (m *Master) whenOnlyServing(g *generation, then func()) {
	if m.accepting(g) == 0 {
		then()
		return
	}
	d := &deafWait{gen: g, then: then}
	m.deafWaits = append(m.deafWaits, d)
	m.after(deafWaitLimit, func() {
		if !d.done {
			m.log.Warn("old workers may still accept connections; answering the reload anyway",
				"workers", m.accepting(g), "waited", deafWaitLimit.String())
			d.done = true
			d.then()
		}
	})
}

// deafWait is a reload's answer waiting for the old workers to stop
// accepting (whenOnlyServing).
type deafWait struct {
	gen  *generation
	then func()
	done bool
}

// accepting counts the workers of generations older than g that may
// still accept a connection: neither made deaf nor exited. A newer
// generation's (a queued reload that started as g's ended) serves newer
// code, not older: it does not hold g's answer back.
func (m *Master) accepting(g *generation) int {
	n := 0
	for _, w := range m.workers {
		if w.gen.num < g.num && !w.deaf {
			n++
		}
	}
	return n
}

// answerDeafWaits answers the reloads whose old workers all stopped
// accepting; it runs after each worker exit and each unlisten.
func (m *Master) answerDeafWaits() {
	waiting := m.deafWaits[:0]
	for _, d := range m.deafWaits {
		if !d.done && m.accepting(d.gen) == 0 {
			d.done = true
			d.then()
		}
		if !d.done {
			waiting = append(waiting, d)
		}
	}
	m.deafWaits = waiting
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

// startUnlisten removes the targets, a group at a time (one for a
// worker's whole tree, usually; see unlisten.Plan), and calls then once
// every group is done with, or after unlistenTimeout.
func (m *Master) startUnlisten(w *worker, targets []unlisten.Target, then func()) {
	if len(targets) == 0 {
		then()
		return
	}
	groups := unlisten.Plan(targets)
	pending, removed := len(groups), 0
	finished := false
	finish := func() {
		if !finished {
			finished = true
			w.deaf = removed == len(targets)
			m.answerDeafWaits()
			m.log.Debug("retiring worker no longer accepts", "slot", w.slot, "pid", w.pid,
				"removed", removed, "registrations", len(targets), "by_helper", m.unlistenByHelper)
			m.after(readPause, then)
		}
	}
	for _, group := range groups {
		m.removeRegistrations(w, group, func(notRemoved int) {
			removed += len(group) - notRemoved
			if pending--; pending == 0 {
				finish()
			}
		})
	}
	m.after(unlistenTimeout, finish)
}

// removeRegistrations removes one group of w's registrations, on a thread
// of the master's own (off the loop), or by a helper process where that
// cannot be had, and calls done with how many it could not remove.
func (m *Master) removeRegistrations(w *worker, group []unlisten.Target, done func(notRemoved int)) {
	if m.unlistenByHelper {
		m.startUnlistenHelper(w, group, done)
		return
	}
	type result struct {
		notRemoved int
		failures   []error
		err        error
	}
	offLoop(m, func() result {
		n, failures, err := m.world.procs.UnlistenInThread(group)
		return result{n, failures, err}
	}, func(r result) {
		switch {
		case errors.Is(r.err, unlisten.ErrNoPrivateTable):
			if !m.unlistenByHelper {
				m.unlistenByHelper = true
				m.log.Warn("cannot remove a retiring worker's listener registrations from a thread of the master's own; "+
					"a helper process does it from now on (one fork and exec of baton per retiring worker)", "err", r.err)
			}
			m.startUnlistenHelper(w, group, done)
		case r.err != nil:
			m.log.Warn("cannot make a retiring worker stop accepting; stopping it anyway", "pid", w.pid, "err", r.err)
			done(len(group))
		default:
			if r.notRemoved > 0 {
				m.log.Warn("could not make a retiring worker stop accepting", "pid", w.pid,
					"not_removed", r.notRemoved, "registrations", len(group), "err", errors.Join(r.failures...))
			}
			done(r.notRemoved)
		}
	})
}

// startUnlistenHelper has a helper process remove one group of w's
// registrations and calls done once it exited.
func (m *Master) startUnlistenHelper(w *worker, group []unlisten.Target, done func(notRemoved int)) {
	pid, err := m.world.procs.StartUnlisten(group)
	if err != nil {
		m.log.Warn("cannot make a retiring worker stop accepting; stopping it anyway", "pid", w.pid, "err", err)
		done(len(group))
		return
	}
	m.helpers[pid] = func(e proc.Exit) {
		code := -1
		if e.Status.Exited() {
			code = e.Status.ExitStatus()
		}
		failed := unlisten.NotRemoved(code, len(group))
		if code != 0 {
			m.log.Warn("could not make a retiring worker stop accepting", "pid", w.pid,
				"status", proc.Describe(e.Status), "not_removed", failed, "registrations", len(group))
		}
		done(failed)
	}
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
