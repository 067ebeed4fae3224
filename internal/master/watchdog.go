package master

import (
	"strconv"
	"time"
)

// Worker watchdog (timeout): a worker that sent WATCHDOG=1 once has
// promised to keep sending it at least every timeout. One that falls
// silent is presumed hung: it gets its stop signal, SIGKILL after
// graceful_timeout, and is replaced in its slot like a crashed worker.
// Workers that never ping are never watched.

// watchdogEnv tells a worker how often to ping, as systemd does.
func watchdogEnv(timeout time.Duration) []string {
	if timeout <= 0 {
		return nil
	}
	return []string{"WATCHDOG_USEC=" + strconv.FormatInt(timeout.Microseconds(), 10)}
}

// onWatchdogPing records a WATCHDOG=1 and, on the first one, starts
// watching the worker.
func (m *Master) onWatchdogPing(w *worker) {
	timeout := w.gen.opts.WorkerTimeout
	if timeout <= 0 || w.state == draining {
		return
	}
	w.lastPing = time.Now()
	if !w.watched {
		w.watched = true
		m.workerAfter(w, "watchdog", timeout, func() { m.checkWatchdog(w) })
	}
}

// checkWatchdog runs every timeout while w is watched.
func (m *Master) checkWatchdog(w *worker) {
	if w.state == draining || w.hung {
		return
	}
	timeout := w.gen.opts.WorkerTimeout
	silent := time.Since(w.lastPing)
	if silent < timeout {
		m.workerAfter(w, "watchdog", timeout-silent, func() { m.checkWatchdog(w) })
		return
	}
	w.hung = true
	m.log.Warn("worker missed its watchdog; killing and replacing it", "slot", w.slot, "pid", w.pid,
		"generation", w.gen.num, "silent_for", silent.Round(time.Millisecond).String(), "timeout", timeout.String())
	// Not retire(): its exit must count as a crash so that the slot is
	// refilled.
	m.stopThenKill(w, w.gen.opts.StopSignal)
}
