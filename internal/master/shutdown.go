package master

import (
	"syscall"
	"time"

	"github.com/baton-pm/baton/internal/proc"
)

// quickTimeout bounds a quick shutdown (INT, QUIT) before SIGKILL.
const quickTimeout = 2 * time.Second

// shutdownMode is how far a shutdown has gone; each mode only ever
// gives way to a later one.
type shutdownMode int

const (
	running shutdownMode = iota
	// lameDuck: TERM arrived with shutdown_delay set. /readyz says 503 so
	// that load balancers and Kubernetes' endpoints stop sending traffic,
	// while the workers still accept and serve; graceful follows when the
	// delay ends.
	lameDuck
	graceful
	quick
)

// beginShutdown stops every worker: TERM (graceful) gives them
// graceful_timeout to finish in-flight requests; INT and QUIT (quick) send
// SIGINT and kill after a short while. With shutdown_delay, a graceful
// shutdown first spends that long as a lame duck (beginLameDuck); a second
// graceful request skips the rest of it. A quick request during a graceful
// shutdown escalates it; a second quick request kills at once. A reload in
// progress is abandoned.
// sig is the signal that asked for it, or 0 for a control request.
func (m *Master) beginShutdown(mode shutdownMode, sig syscall.Signal) {
	cause := m.shutdownCause(sig)
	switch {
	case m.shutdown == quick && mode == quick:
		m.log.Warn("second quick shutdown request: killing workers now")
		m.killAll()
		return
	case m.shutdown >= mode:
		return
	case mode == graceful && m.shutdown == running && m.lameDuckApplies():
		m.beginLameDuck(cause)
		return
	case m.shutdown == lameDuck:
		m.log.Info("shutdown requested again during the lame-duck delay: stopping the workers now",
			append(cause, "delay_left", m.lameDuckLeft().Round(time.Millisecond).String())...)
	}
	m.stopAllForShutdown(mode, cause)
}

// shutdownCause names what asked for a shutdown, for the log.
func (m *Master) shutdownCause(sig syscall.Signal) []any {
	switch {
	case sig != 0:
		return []any{"signal", proc.SignalName(sig)}
	case m.steppedDown:
		return []any{"requested_by", "upgrade hand-over"}
	case m.fatal != nil:
		return []any{"reason", "the start failed"}
	}
	return []any{"requested_by", "control socket"}
}

// lameDuckApplies reports whether a graceful shutdown waits out
// shutdown_delay first: only while this master alone is the service and
// has workers serving. After an upgrade's hand-over the new master
// serves and answers /readyz, and without workers there is nothing to
// keep serving.
func (m *Master) lameDuckApplies() bool {
	return m.opts.ShutdownDelay > 0 && !m.steppedDown && m.upgrade == nil && len(m.workers) > 0
}

// beginLameDuck starts the shutdown_delay: the master reports that it is
// stopping (/readyz 503, STOPPING=1 to systemd) but signals no worker
// until the delay ends. Reloads, upgrades and scaling are refused from
// now on, as in any shutdown; a crashed worker is still replaced, since
// its slot still serves.
func (m *Master) beginLameDuck(cause []any) {
	delay := m.opts.ShutdownDelay
	m.shutdown = lameDuck
	m.lameDuckEnds = time.Now().Add(delay)
	m.tellSystemd("STOPPING=1", "STATUS=lame duck: stopping in "+delay.String())
	m.abandonReloads()
	m.log.Info("shutting down after shutdown_delay: /readyz says 503, the workers serve until then",
		append(cause, "shutdown_delay", delay.String(), "workers", len(m.workers))...)
	m.after(delay, func() {
		if m.shutdown == lameDuck {
			m.log.Info("shutdown_delay is over: stopping the workers")
			m.stopAllForShutdown(graceful, []any{"after", "shutdown_delay"})
		}
	})
}

// lameDuckLeft is how much of the lame-duck delay is left; 0 outside it.
func (m *Master) lameDuckLeft() time.Duration {
	if m.shutdown != lameDuck {
		return 0
	}
	return max(0, time.Until(m.lameDuckEnds))
}

// stopAllForShutdown sends every worker its stop signal (SIGINT for a
// quick shutdown) and kills what is left after the shutdown timeout.
func (m *Master) stopAllForShutdown(mode shutdownMode, cause []any) {
	m.shutdown = mode
	if !m.steppedDown {
		// After a hand-over the new master is the service.
		m.tellSystemd("STOPPING=1", "STATUS=shutting down")
	}
	m.abandonReloads()
	timeout := m.shutdownTimeout(mode)
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
