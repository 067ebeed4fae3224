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
		out = append(out, fmt.Sprintf("slot %d: %d crashes in a row", id, m.current.slots[id].failures))
	}
	return out
}

// logLastWords logs what a crashed worker wrote last on stderr, once its
// stderr has drained (at most half a second, off the master's goroutine).
func (m *Master) logLastWords(w *worker, status string) {
	tail := w.proc.Stderr
	go func() {
		select {
		case <-tail.Wait():
		case <-time.After(500 * time.Millisecond):
		}
		lines := tail.Lines(stderrLines)
		if len(lines) == 0 {
			return
		}
		m.post(func() {
			m.log.Warn("last stderr lines of the worker that exited", "slot", w.slot, "pid", w.proc.Pid,
				"status", status, "stderr", lines)
		})
	}()
}
