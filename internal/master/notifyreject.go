package master

import (
	"sync"
	"time"

	"github.com/baton-pm/baton/internal/sdnotify"
)

// rejectLogInterval is the least time between two log lines about the
// notify messages refused for one worker.
const rejectLogInterval = time.Second

// rejectLog counts the notify messages refused for one worker (their
// sender is not one of its processes), on the socket's own goroutine, so
// that a flood of them reaches the master's loop, its log and its metrics
// as at most one event per interval: the first refusal at once, the next
// ones as a count once the interval since the last line has passed.
type rejectLog struct {
	mu      sync.Mutex
	count   int              // refused since the last report
	last    sdnotify.Message // the latest of them
	next    time.Time        // no report before then
	pending *time.Timer      // the next report, when one is due
	report  func(n int, last sdnotify.Message)
}

// newRejectLog reports w's refused messages to the loop, which counts
// them in the metrics and logs them.
func (m *Master) newRejectLog(w *worker) *rejectLog {
	return &rejectLog{report: func(n int, last sdnotify.Message) {
		m.post(func() { m.onNotifyRejected(w, n, last) })
	}}
}

func (r *rejectLog) add(msg sdnotify.Message) {
	r.mu.Lock()
	r.count++
	r.last = msg
	if r.pending != nil {
		r.mu.Unlock()
		return
	}
	if wait := time.Until(r.next); wait > 0 {
		r.pending = time.AfterFunc(wait, r.flush)
		r.mu.Unlock()
		return
	}
	n, last := r.take()
	r.mu.Unlock()
	r.report(n, last)
}

// flush reports what was refused and not reported yet, if anything: when
// the interval has passed, and when the socket is closed.
func (r *rejectLog) flush() {
	r.mu.Lock()
	if r.pending != nil {
		r.pending.Stop()
		r.pending = nil
	}
	n, last := r.take()
	r.mu.Unlock()
	if n > 0 {
		r.report(n, last)
	}
}

// take empties the count and starts the next interval; r.mu is held.
func (r *rejectLog) take() (int, sdnotify.Message) {
	n, last := r.count, r.last
	if n > 0 {
		r.count = 0
		r.next = time.Now().Add(rejectLogInterval)
	}
	return n, last
}

// onNotifyRejected counts and logs notify messages refused for w.
func (m *Master) onNotifyRejected(w *worker, n int, last sdnotify.Message) {
	if m.metrics != nil {
		m.metrics.NotifyRejected(n)
	}
	m.log.Warn("refused notify messages from a process that is not the worker's",
		"slot", w.slot, "pid", w.pid, "generation", w.gen.num, "count", n,
		"sender_pid", last.Pid, "sender_uid", last.Uid)
}
