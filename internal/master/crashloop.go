package master

import (
	"fmt"
	"sort"
	"time"
)

// crashLoopAfter is how many crashes in a row (none living backoffReset)
// make a slot count as crash-looping: the master is then degraded.
const crashLoopAfter = 3

// crashLooping describes the current generation's crash-looping slots.
func (m *Master) crashLooping() []string {
	if m.current == nil {
		return nil
	}
	var ids []int
	for id, s := range m.current.slots {
		if s.failures >= crashLoopAfter {
			ids = append(ids, id)
		}
	}
	sort.Ints(ids)
	var out []string
	for _, id := range ids {
		s := m.current.slots[id]
		entry := fmt.Sprintf("slot %d: %d crashes in a row", id, s.failures)
		if s.crashHint != "" {
			entry += ": " + s.crashHint
		}
		out = append(out, entry)
	}
	return out
}

// logLastWords logs what a crashed worker wrote on stderr, and why it
// crashed when that is understood (an address another worker holds).
func (m *Master) logLastWords(w *worker, status string) {
	m.withLastLines(w, func(lines []string) {
		hint := m.bindConflictHint(w, lines)
		if s := w.gen.slots[w.slot]; s != nil {
			s.crashHint = hint
		}
		if len(lines) == 0 {
			return
		}
		attrs := []any{"slot", w.slot, "pid", w.pid, "status", status, "stderr", lines}
		if hint != "" {
			attrs = append(attrs, "hint", hint)
		}
		m.log.Warn("last stderr lines of the worker that exited", attrs...)
	})
}

// withLastLines calls then, on the master's goroutine, with the last lines
// w wrote on stderr, once its stderr has drained: the pipe may still hold
// them when its exit is reaped.
func (m *Master) withLastLines(w *worker, then func(lines []string)) {
	m.withStderrLines(w.proc, then)
}

// withStderrLines calls then, on the master's goroutine, with the first
// and last lines p (a worker or a preload template) wrote on stderr, once
// its stderr has closed. It waits off the master's goroutine, at most
// stderrDrainWait (a grandchild may keep stderr open).
func (m *Master) withStderrLines(p process, then func(lines []string)) {
	offLoop(m, func() []string {
		select {
		case <-p.StderrClosed():
		case <-time.After(stderrDrainWait):
		}
		return p.StderrLines(stderrFirstLines, stderrLastLines)
	}, then)
}
