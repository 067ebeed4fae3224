package master

import (
	"math/rand/v2"
	"time"
)

// Memory and age limits replace a worker the way a one-worker reload
// would: its successor starts in the same slot while it keeps serving, and
// it is retired (drained) only once the successor is ready, so capacity
// never drops. Replacements are skipped while a reload or shutdown runs
// (a reload replaces every worker anyway).

// memoryCheckEvery is how often worker RSS is read when a limit is set.
const memoryCheckEvery = time.Second

// armMemoryChecks starts the max_worker_memory loop when the serving
// generation has a limit and the loop is not running; at start and after
// every reload. The loop stops itself once no limit is set.
func (m *Master) armMemoryChecks() {
	if m.memoryChecks || m.current.opts.MaxWorkerMemory == 0 {
		return
	}
	m.memoryChecks = true
	m.after(memoryCheckEvery, m.checkMemory)
}

// checkMemory replaces the serving generation's ready workers whose
// process group uses more than its limit. /proc is read off the master's
// goroutine.
func (m *Master) checkMemory() {
	g := m.current
	limit := g.opts.MaxWorkerMemory
	if limit == 0 {
		m.memoryChecks = false
		return
	}
	var serving []*worker
	for _, w := range m.workers {
		if w.state == ready && w.gen == g {
			serving = append(serving, w)
		}
	}
	offLoop(m, func() []usage {
		use := make([]usage, len(serving))
		for i, w := range serving {
			use[i] = w.proc.Usage()
		}
		return use
	}, func(use []usage) {
		for i, w := range serving {
			if use[i].Memory > limit && w.gen.opts.MaxWorkerMemory == limit {
				m.replaceWorker(w, "memory", "memory", use[i].Memory, "max_worker_memory", limit)
			}
		}
		m.after(memoryCheckEvery, m.checkMemory)
	})
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
	if !m.alive(w) || w.state != ready || m.shutdown != running || m.reloading() ||
		w.gen != m.current || s == nil || s.worker != w || s.outgoing != nil {
		return
	}
	m.log.Info("replacing worker", append([]any{"slot", w.slot, "pid", w.pid, "reason", reason}, attrs...)...)
	if m.metrics != nil {
		m.metrics.WorkerRestarted(reason)
	}
	s.outgoing = w
	m.spawn(s)
}
