package master

import "github.com/baton-pm/baton/internal/control"

// serviceState says in one word how the master serves (status's state):
// a master whose slots all crash-loop is down, not serving, and one
// where only some serve is degraded. It runs on the master's goroutine.
func (m *Master) serviceState() string {
	switch {
	case m.shutdown != running:
		return control.StateStopping
	case m.current == nil || m.current.size == 0:
		return control.StateStopped
	}
	if m.readyWorkers() == 0 {
		if !m.servedOnce && len(m.crashLooping()) == 0 {
			return control.StateStarting
		}
		return control.StateDown
	}
	switch {
	case m.reloading():
		return control.StateReloading
	case m.upgrade != nil && !m.upgrade.inPlace:
		return control.StateUpgrading
	case len(m.crashLooping()) > 0:
		return control.StateDegraded
	case !m.servedOnce:
		return control.StateStarting
	case m.slotsReady() < m.current.size:
		return control.StateDegraded
	}
	return control.StateServing
}

// readyWorkers counts the workers that serve, of any generation.
func (m *Master) readyWorkers() int {
	n := 0
	for _, w := range m.workers {
		if w.state == ready {
			n++
		}
	}
	return n
}

// slotsReady counts the current generation's slots with a ready worker:
// its own, or the one a memory or age replacement is retiring.
func (m *Master) slotsReady() int {
	n := 0
	for _, s := range m.current.slots {
		if (s.worker != nil && s.worker.state == ready) || (s.outgoing != nil && s.outgoing.state == ready) {
			n++
		}
	}
	return n
}
