package master

// generation is the workers started from one configuration snapshot.
type generation struct {
	num   int
	opts  GenerationOptions
	size  int           // how many slots it should have
	slots map[int]*slot // by slot number, 1..size
	// tmpl is its preload template, while it has one (template.go).
	tmpl *template
}

// slot is a numbered place for one worker; a crashed worker is replaced in
// its own slot, so BATON_WORKER_ID stays stable.
type slot struct {
	id       int
	gen      *generation
	worker   *worker
	failures int  // crashes in a row, for the backoff
	restarts int  // replacements of a crashed worker, for status
	pending  bool // a restart is scheduled
	// succeeded: during a reload, the next generation's worker in this
	// slot is ready, so this slot's worker was retired and the slot is not
	// refilled (unless the reload fails).
	succeeded bool
	// outgoing is the worker a memory or age replacement retires once
	// worker, its successor, is ready (limits.go).
	outgoing *worker
	// forking: its worker is being forked by the generation's preload
	// template (template.go).
	forking *forking
	// crashHint explains the last crash, when it is understood: another
	// worker listens on the address it could not bind (foreign.go).
	crashHint string
}

func (m *Master) newGeneration(opts GenerationOptions) *generation {
	m.lastGen++
	return &generation{num: m.lastGen, opts: opts, size: opts.Workers, slots: map[int]*slot{}}
}

// fill starts a worker in every slot of g that has none.
func (g *generation) fill(m *Master) {
	for id := 1; id <= g.size; id++ {
		m.spawn(g.slot(id))
	}
}

// slot returns g's slot id, creating it when needed.
func (g *generation) slot(id int) *slot {
	s, ok := g.slots[id]
	if !ok {
		s = &slot{id: id, gen: g}
		g.slots[id] = s
	}
	return s
}

func (g *generation) allReady() bool {
	for id := 1; id <= g.size; id++ {
		s := g.slots[id]
		if s == nil || s.worker == nil || s.worker.state != ready {
			return false
		}
	}
	return true
}

// retireSlot empties s for good: no restart is pending any more, and its
// worker, and the one a memory or age replacement was retiring, are
// retired (a reload's hand-over, scaling down, WINCH).
func (m *Master) retireSlot(s *slot) {
	s.pending = false
	m.cancelFork(s)
	m.retireOutgoing(s)
	if s.worker != nil {
		m.retire(s.worker)
	}
}

// retireOutgoing retires the worker a memory or age replacement is
// replacing in s, if any: its successor is ready, or s itself goes.
func (m *Master) retireOutgoing(s *slot) {
	if s.outgoing != nil {
		m.retire(s.outgoing)
		s.outgoing = nil
	}
}

// isLive reports whether g is the current generation or the one a reload
// is bringing up; workers of any other generation are on their way out.
func (m *Master) isLive(g *generation) bool {
	return g == m.current || m.isNew(g)
}

func (m *Master) isNew(g *generation) bool {
	return m.reload != nil && m.reload.next == g
}
