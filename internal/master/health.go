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
// descriptor) breaks it for all. The shim's seccomp guard stops that for
// the inherited descriptors (package proc); a worker that dup'd its
// listener elsewhere can still do it. So the master checks every
// listener after every worker exit, at the end of every reload and every
// listenerCheckEvery, re-arms one that was shut down (listen(2) again,
// logged as an error naming the worker that exited before), and when
// that cannot be done (a unix socket keeps its shutdown for good) it says
// so: the listener is down in status, /readyz answers 503, and reloads
// fail until baton is restarted.

// listenerCheckEvery is how often the listeners are checked besides the
// events above.
const listenerCheckEvery = 2 * time.Second

// checkListeners checks every listener and re-arms those a worker shut
// down. after is the worker whose exit led to the check, if any.
func (m *Master) checkListeners(after *worker) {
	for _, l := range m.listeners {
		problem := l.Check()
		if problem == nil {
			if _, was := m.listenersDown[l.Name]; was {
				delete(m.listenersDown, l.Name)
				m.log.Info("listener accepts connections again", "listener", l.Name, "addr", l.Addr)
			}
			continue
		}
		if _, known := m.listenersDown[l.Name]; known {
			continue // reported already; it stays down
		}
		attrs := []any{"listener", l.Name, "addr", l.Addr, "problem", problem.Error()}
		if after != nil {
			attrs = append(attrs, "after_exit_of_slot", after.slot, "pid", after.pid, "generation", after.gen.num)
		}
		err := l.Rearm()
		if err == nil {
			m.log.Error("a worker shut a listener down; re-armed it (listen again): connections queued on it were lost", attrs...)
			continue
		}
		if !errors.Is(err, listener.ErrCannotRearm) {
			m.log.Error("a worker shut a listener down and re-arming it failed; trying again later", append(attrs, "err", err.Error())...)
			continue
		}
		m.listenersDown[l.Name] = problem.Error()
		m.log.Error("a worker shut a listener down for good: it refuses connections until baton is restarted", append(attrs, "err", err.Error())...)
	}
}

// downListeners describes the listeners that are down, or "".
func (m *Master) downListeners() string {
	var names []string
	for name, why := range m.listenersDown {
		names = append(names, name+": "+why)
	}
	sort.Strings(names)
	return strings.Join(names, "; ")
}

// startListenerChecks checks the listeners every listenerCheckEvery.
func (m *Master) startListenerChecks() {
	if len(m.listeners) == 0 {
		return
	}
	var check func()
	check = func() {
		m.checkListeners(nil)
		m.after(listenerCheckEvery, check)
	}
	m.after(listenerCheckEvery, check)
}
