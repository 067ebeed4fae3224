package master

import (
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/baton-pm/baton/internal/listener"
)

// Listener health: a listening socket is shared by every worker, and a
// worker that shuts it down (shutdown(2) acts on the socket, not on the
// descriptor) breaks it for all: it refuses connections, resets the ones
// queued and wakes every worker's accept with an error. The shim's
// seccomp guard stops that for the inherited descriptors (package proc);
// a worker that dup'd its listener elsewhere can still do it. So the
// master re-arms a listener the moment it is shut down (listener.Watch),
// checks every listener after every worker exit, at the end of every
// reload and every listenerCheckEvery, and says what it found: an error
// naming the workers that were stopping (the usual culprits). A unix
// listener cannot be re-armed (Linux keeps its shutdown): it is down in
// status, /readyz answers 503, and reloads fail until baton restarts.

const (
	// listenerCheckEvery is how often the listeners are checked besides
	// the events above (a check costs microseconds).
	listenerCheckEvery = time.Second
	// stoppedRecently is how long a worker that exited after its stop
	// signal counts among the suspects of a shutdown found later.
	stoppedRecently = 2 * time.Second
)

// The records of a shut-down listener, at level ERROR.
const (
	msgListenerRearmed = "listener was shut down; re-armed"
	msgListenerDown    = "listener is shut down and cannot be re-armed"
)

// watchListeners re-arms a listener the moment a worker shuts it down,
// on the watcher's goroutine (the sooner, the fewer connections are
// refused), and reports it on the master's.
func (m *Master) watchListeners() {
	if len(m.listeners) == 0 {
		return
	}
	w, err := listener.Watch(m.listeners, func(l *listener.Listener) {
		problem := l.Check()
		if problem == nil {
			return
		}
		rearm := l.Rearm()
		m.post(func() { m.reportListener(l, problem, rearm, "watch", nil) })
	})
	if err != nil {
		m.log.Error("cannot watch the listeners; they are checked every second instead", "err", err)
		return
	}
	m.listenerWatch = w
}

// checkListeners checks every listener and re-arms those shut down.
// after says what the check follows; w is the worker that exited, if any.
func (m *Master) checkListeners(after string, w *worker) {
	for _, l := range m.listeners {
		problem := l.Check()
		if problem == nil {
			if _, was := m.listenersDown[l.Name]; was {
				delete(m.listenersDown, l.Name)
				m.log.Info("listener accepts connections again", "listener", l.Name, "addr", l.Addr)
			}
			continue
		}
		m.reportListener(l, problem, l.Rearm(), after, w)
	}
}

// reportListener logs a listener found shut down and what re-arming it
// did, and keeps it down when it could not be re-armed.
func (m *Master) reportListener(l *listener.Listener, problem, rearm error, after string, w *worker) {
	attrs := []any{"listener", l.Name, "addr", l.Addr, "after", after}
	if w != nil {
		attrs = append(attrs, "pid", w.pid, "slot", w.slot, "generation", w.gen.num)
	}
	attrs = append(attrs, "stopping", m.stoppingWorkers())
	if rearm == nil {
		delete(m.listenersDown, l.Name)
		m.log.Error(msgListenerRearmed, append(attrs, "cause", problem.Error())...)
		return
	}
	if _, known := m.listenersDown[l.Name]; known {
		return // reported already
	}
	if !errors.Is(rearm, listener.ErrCannotRearm) && after == "watch" {
		// Perhaps only for now (another socket took the port): the next
		// check tries again, and reports it then if it persists.
		m.log.Warn("re-arming a shut-down listener failed; trying again", append(attrs, "err", rearm.Error())...)
		return
	}
	m.listenersDown[l.Name] = rearm.Error()
	m.log.Error(msgListenerDown, append(attrs, "err", rearm.Error())...)
}

// stoppingWorkers are the workers sent their stop signal that still run
// or exited within stoppedRecently, by pid.
func (m *Master) stoppingWorkers() []int {
	var pids []int
	for pid, w := range m.workers {
		if w.state == draining {
			pids = append(pids, pid)
		}
	}
	m.forgetStoppedLongAgo()
	for pid := range m.recentlyStopped {
		pids = append(pids, pid)
	}
	sort.Ints(pids)
	return pids
}

// forgetStoppedLongAgo drops the workers that exited more than
// stoppedRecently ago: without it, every reload would add to the map for
// the master's whole life.
func (m *Master) forgetStoppedLongAgo() {
	for pid, at := range m.recentlyStopped {
		if time.Since(at) >= stoppedRecently {
			delete(m.recentlyStopped, pid)
		}
	}
}

// downListeners describes the listeners that are down, or "".
func (m *Master) downListeners() string {
	var down []string
	for name, why := range m.listenersDown {
		down = append(down, "listener "+name+" is shut down: "+why)
	}
	sort.Strings(down)
	return strings.Join(down, "; ")
}

// startListenerChecks checks the listeners every listenerCheckEvery.
func (m *Master) startListenerChecks() {
	if len(m.listeners) == 0 {
		return
	}
	var check func()
	check = func() {
		if m.shutdown != running {
			return
		}
		m.checkListeners("timer", nil)
		m.after(listenerCheckEvery, check)
	}
	m.after(listenerCheckEvery, check)
}
