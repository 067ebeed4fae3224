package master

import (
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
	if !m.steppedDown {
		// After a hand-over the new master is the service.
		m.tellSystemd("STOPPING=1", "STATUS=shutting down")
	}
	m.abandonReloads()
	timeout := m.shutdownTimeout(mode)
	cause := []any{"requested_by", "control socket"}
	if m.steppedDown {
		cause = []any{"requested_by", "upgrade hand-over"}
	}
	if m.fatal != nil {
		cause = []any{"reason", "the start failed"}
	}
	if sig != 0 {
		cause = []any{"signal", proc.SignalName(sig)}
	}
	m.log.Info("shutting down", append(cause, "graceful", mode == graceful,
		"workers", len(m.workers), "timeout", timeout.String())...)
	for _, t := range m.templates {
		if !t.retired {
			m.retireTemplate(t)
		}
	}
	for _, w := range m.workers {
		w.state = draining
		stopSig := w.gen.opts.StopSignal
		if mode == quick {
			stopSig = syscall.SIGINT
		}
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

// shutdownTimeout is how long a shutdown waits for the workers before
// SIGKILL: the longest graceful_timeout among their generations, and at
// most quickTimeout for a quick one.
func (m *Master) shutdownTimeout(mode shutdownMode) time.Duration {
	timeout := m.current.opts.GracefulTimeout
	for _, w := range m.workers {
		timeout = max(timeout, w.gen.opts.GracefulTimeout)
	}
	if mode == quick {
		timeout = min(quickTimeout, timeout)
	}
	return timeout
}

func (m *Master) killAll() {
	for _, w := range m.workers {
		m.killTree(w)
	}
	for _, t := range m.templates {
		m.killTemplate(t)
	}
}

// abandonReloads ends the reload in progress and the queued one: the
// master is shutting down. Their waiters are told so.
func (m *Master) abandonReloads() {
	abandoned := ReloadResult{Reason: "abandoned: the master is shutting down", Started: time.Now()}
	if r := m.reload; r != nil {
		m.log.Warn("reload abandoned: shutting down", "generation", r.next.num)
		abandoned.Generation = r.next.num
		m.discardMasterChange(r.settings)
		deliver(r.waiters, abandoned)
		m.reload = nil
	}
	deliver(m.queuedWaiters, abandoned)
	m.queued, m.queuedWaiters = false, nil
}
