package master

import (
	"fmt"

	"github.com/baton-pm/baton/internal/control"
)

// scale adds or retires one worker of the current generation (TTIN, TTOU);
// never below one nor above control.MaxWorkers, and not while a reload is
// bringing up a generation.
func (m *Master) scale(delta int) {
	if m.shutdown != running {
		m.log.Warn("not scaling: the master is shutting down")
		return
	}
	if m.reloading() {
		m.log.Warn("cannot scale during a reload; send the signal again once it has finished")
		return
	}
	g := m.current
	if delta < 0 && g.size <= 1 {
		m.log.Warn("not scaling down: one worker is the minimum", "workers", g.size)
		return
	}
	if delta > 0 && g.size >= control.MaxWorkers {
		m.log.Warn("not scaling up: baton's ceiling is reached", "workers", g.size, "max", control.MaxWorkers)
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
	m.retireSlot(s)
}

// scaleTo sets the current generation's worker count (baton scale N).
func (m *Master) scaleTo(n int) error {
	switch {
	case n < 1:
		return fmt.Errorf("scale: %d workers: one worker is the minimum", n)
	case n > control.MaxWorkers:
		// The control server refuses it already; this is the second line.
		return fmt.Errorf("scale: %d workers: %d is baton's ceiling", n, control.MaxWorkers)
	case m.shutdown != running:
		return fmt.Errorf("scale: the master is shutting down")
	case m.reloading():
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

// stopAllWorkers is WINCH: every worker stops gracefully and none is
// replaced, while the listeners stay open (the old master's step in a
// manual upgrade).
func (m *Master) stopAllWorkers() {
	if m.shutdown != running || m.reloading() {
		m.log.Warn("WINCH ignored: shutting down or reloading")
		return
	}
	m.log.Info("WINCH: stopping every worker; the listeners stay open", "workers", len(m.workers))
	for id, s := range m.current.slots {
		m.retireSlot(s)
		delete(m.current.slots, id)
	}
	m.current.size = 0
}
