package master

import (
	"math/rand/v2"
	"time"

	"github.com/baton-pm/baton/internal/procinfo"
)

// Memory and age limits replace a worker the way a one-worker reload
// would: its successor starts in the same slot while it keeps serving, and
// it is retired (drained) only once the successor is ready, so capacity
// never drops. Replacements are skipped while a reload or shutdown runs
// (a reload replaces every worker anyway).

// memoryCheckEvery is how often worker RSS is read when a limit is set.
const memoryCheckEvery = time.Second

// startLimits starts the memory check loop.
func (m *Master) startLimits() {
	if m.opts.MaxWorkerMemory == 0 {
		return
	}
	var check func()
	check = func() {
		leaders := map[int]*worker{}
		for pid, w := range m.workers {
			if w.state == ready && w.gen == m.current {
				leaders[pid] = w
			}
		}
		limit := m.opts.MaxWorkerMemory
		// /proc is read off the master's goroutine.
		go func() {
			pids := make([]int, 0, len(leaders))
			for pid := range leaders {
				pids = append(pids, pid)
			}
			rss := procinfo.GroupRSS(pids)
			m.post(func() {
				for pid, w := range leaders {
					if rss[pid] > limit {
						m.replaceWorker(w, "memory", "rss", rss[pid], "max_worker_memory", limit)
					}
				}
				m.after(memoryCheckEvery, check)
			})
		}()
	}
	m.after(memoryCheckEvery, check)
}

// scheduleAgeLimit replaces w once it reached max_worker_age plus a random
// share of the jitter, so workers started together are not all replaced at
// once.
func (m *Master) scheduleAgeLimit(w *worker) {
	age := w.gen.opts.MaxWorkerAge
	if age <= 0 {
		return
	}
	if j := w.gen.opts.MaxWorkerAgeJitter; j > 0 {
		age += rand.N(j)
	}
	m.workerAfter(w, "age", age, func() { m.replaceWorker(w, "age", "after", age.String()) })
}

// replaceWorker starts w's successor in its slot; markReady retires w once
// the successor is ready.
func (m *Master) replaceWorker(w *worker, reason string, attrs ...any) {
	s := w.gen.slots[w.slot]
	if m.workers[w.proc.Pid] != w || w.state != ready || m.shutdown != running || m.reload != nil ||
		w.gen != m.current || s == nil || s.worker != w || s.outgoing != nil {
		return
	}
	m.log.Info("replacing worker", append([]any{"slot", w.slot, "pid", w.proc.Pid, "reason", reason}, attrs...)...)
	if m.metrics != nil {
		m.metrics.WorkerRestarted(reason)
	}
	s.outgoing = w
	m.spawn(s)
}

// retireOutgoing retires a slot's outgoing worker, when the slot itself
// goes (scale down, WINCH, a reload's hand-over).
func (m *Master) retireOutgoing(s *slot) {
	if s.outgoing != nil {
		m.retire(s.outgoing)
		s.outgoing = nil
	}
}

// handOverSlot retires the worker a ready successor replaces.
func (m *Master) handOverSlot(w *worker) {
	s := w.gen.slots[w.slot]
	if s == nil || s.worker != w || s.outgoing == nil {
		return
	}
	old := s.outgoing
	s.outgoing = nil
	m.retire(old)
}
