package master

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Foreign listeners: a worker that binds a TCP socket of its own instead
// of using the listener it inherited serves where no request comes, and
// its siblings, binding the same address, crash with EADDRINUSE. That is
// puma with a -b that is not baton's bind, or none (`puma config.ru`
// binds 0.0.0.0:9292): it closes the inherited socket, one slot serves on
// 9292, the others crash-loop, and requests to baton's port hang. The
// master reads, off its goroutine, which TCP sockets each worker's tree
// listens on besides baton's (readiness.Probe.ForeignListeners), logs
// them, shows them in status, and names them in the crash report of a
// worker that died of EADDRINUSE.

const (
	// foreignScanEvery is how often the master looks for workers due a
	// scan: a booting worker is scanned every time, and once right after
	// it turned ready.
	foreignScanEvery = time.Second
	// foreignRescanServing is how long a serving worker goes between
	// scans (a scan reads its /proc entries and the namespace's TCP table).
	foreignRescanServing = 30 * time.Second
)

// startForeignScans scans the workers that are due, every
// foreignScanEvery, until the shutdown.
func (m *Master) startForeignScans() {
	var tick func()
	tick = func() {
		if m.shutdown != running {
			return
		}
		m.scanForeignListeners()
		m.after(foreignScanEvery, tick)
	}
	m.after(foreignScanEvery, tick)
}

// scanForeignListeners reads the foreign listeners of every worker due a
// scan, off the master's goroutine; one scan at a time.
func (m *Master) scanForeignListeners() {
	if m.foreignScanning {
		return
	}
	now := time.Now()
	var due []*worker
	var pids []int
	for _, w := range m.workers {
		if w.state != draining && !now.Before(w.nextForeignScan) {
			due = append(due, w)
			pids = append(pids, w.pid)
		}
	}
	if len(due) == 0 {
		return
	}
	m.foreignScanning = true
	inspect := m.world.inspect
	offLoop(m, func() map[int][]string { return inspect.ForeignListeners(pids) }, func(found map[int][]string) {
		m.foreignScanning = false
		for _, w := range due {
			if !m.alive(w) {
				continue
			}
			m.setForeignListeners(w, found[w.pid])
			if w.state == ready {
				w.nextForeignScan = time.Now().Add(foreignRescanServing)
			}
		}
	})
}

// setForeignListeners records what w's tree listens on besides baton's
// listeners, and logs it when it changed to something.
func (m *Master) setForeignListeners(w *worker, addrs []string) {
	if slices.Equal(w.foreign, addrs) {
		return
	}
	w.foreign = addrs
	if len(addrs) == 0 {
		return
	}
	m.log.Warn("worker listens on sockets baton did not pass", "slot", w.slot, "pid", w.pid, "generation", w.gen.num,
		"foreign_listeners", addrs, "hint", "if these are the app's own port, "+m.useInheritedListener())
}

// useInheritedListener says which fds baton's listeners are and to use
// them.
func (m *Master) useInheritedListener() string {
	var fds []string
	for i, l := range m.listeners {
		fds = append(fds, fmt.Sprintf("fd %d (%s, %s)", 3+i, l.Name, l.Addr))
	}
	which := "baton's listeners are fds 3 and up"
	switch len(fds) {
	case 0:
	case 1:
		which = "baton's listener is " + fds[0]
	default:
		which = "baton's listeners are " + strings.Join(fds, ", ")
	}
	return which + ": make the server use it (puma: -b must match the bind, or --bind-to-activated-sockets only; " +
		"gunicorn: no --bind, or --bind fd://3; uvicorn: --fd 3)"
}

// bindConflictHint explains a crash whose stderr says the address was in
// use when a worker (another, or the crashed one before) is known to
// listen on a socket of its own: "" otherwise.
func (m *Master) bindConflictHint(crashed *worker, lines []string) string {
	if !slices.ContainsFunc(lines, mentionsAddressInUse) {
		return ""
	}
	var holders []string
	seen := map[int]bool{}
	for _, w := range m.workersBySlot(crashed) {
		if len(w.foreign) > 0 && !seen[w.pid] {
			seen[w.pid] = true
			holders = append(holders, fmt.Sprintf("the worker in slot %d (pid %d) listens on %s itself",
				w.slot, w.pid, strings.Join(w.foreign, ", ")))
		}
	}
	if len(holders) == 0 {
		return ""
	}
	return strings.Join(holders, "; ") + "; " + m.useInheritedListener()
}

// workersBySlot is extra followed by every live worker, by slot and pid,
// so that a hint reads the same every time.
func (m *Master) workersBySlot(extra *worker) []*worker {
	ws := []*worker{extra}
	for _, w := range m.workers {
		ws = append(ws, w)
	}
	slices.SortStableFunc(ws[1:], func(a, b *worker) int {
		if a.slot != b.slot {
			return a.slot - b.slot
		}
		return a.pid - b.pid
	})
	return ws
}

// mentionsAddressInUse: EADDRINUSE as C, Python, Ruby, Node and Go say it.
func mentionsAddressInUse(line string) bool {
	return strings.Contains(line, "EADDRINUSE") || strings.Contains(strings.ToLower(line), "address already in use")
}
