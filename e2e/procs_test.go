package e2e

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/e2e/internal/tiertest"
)

// procStat is what /proc/PID/stat says about one process.
type procStat struct {
	pid, ppid, pgrp int
	state           byte   // R, S, D, Z, ...
	start           uint64 // start time in clock ticks since boot: with pid, a process's identity
}

func (p procStat) zombie() bool { return p.state == 'Z' || p.state == 'X' }

func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name is in parentheses and may hold spaces or ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 > len(data) {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(data[i+2:]))
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	p := procStat{pid: pid, state: f[0][0]}
	p.ppid, _ = strconv.Atoi(f[1])
	p.pgrp, _ = strconv.Atoi(f[2])
	p.start, _ = strconv.ParseUint(f[19], 10, 64)
	return p, nil
}

// allProcs lists every process on the machine.
func allProcs() map[int]procStat {
	entries, _ := os.ReadDir("/proc")
	procs := make(map[int]procStat, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, err := readStat(pid); err == nil {
			procs[pid] = p
		}
	}
	return procs
}

// processAlive reports whether pid is a running (not zombie) process.
func processAlive(pid int) bool {
	p, err := readStat(pid)
	return err == nil && !p.zombie()
}

// childrenOf returns the live (not zombie) children of pid.
func childrenOf(pid int) []int {
	var kids []int
	for _, p := range allProcs() {
		if p.ppid == pid && !p.zombie() {
			kids = append(kids, p.pid)
		}
	}
	return kids
}

// descendants returns every live process below pid.
func descendants(pid int) []int {
	byParent := map[int][]int{}
	for _, p := range allProcs() {
		if !p.zombie() {
			byParent[p.ppid] = append(byParent[p.ppid], p.pid)
		}
	}
	return descendantsIn(byParent, pid)
}

// descendantsIn walks a parent -> children map down from pid.
func descendantsIn(byParent map[int][]int, pid int) []int {
	var out []int
	queue := byParent[pid]
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, p)
		queue = append(queue, byParent[p]...)
	}
	return out
}

// cmdline returns a process's command line, for messages.
func cmdline(pid int) string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(strings.ReplaceAll(string(data), "\x00", " "))
}

func describeProcs(ps []procStat) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "  pid %d (ppid %d, pgid %d, state %c): %s\n", p.pid, p.ppid, p.pgrp, p.state, cmdline(p.pid))
	}
	return b.String()
}

// waitProcsGone waits until none of ps is alive and returns the survivors.
func waitProcsGone(ps []procStat, timeout time.Duration) []procStat {
	var alive []procStat
	waitUntil(timeout, func() bool {
		alive = alive[:0]
		for _, p := range ps {
			if now, err := readStat(p.pid); err == nil && now.start == p.start && !now.zombie() {
				alive = append(alive, now)
			}
		}
		return len(alive) == 0
	})
	return alive
}

// tracker remembers every process a baton started: the master, each worker
// (also the leader of its own process group) and what the master ran at
// cleanup time. A process is ours when its pid and start time match one we
// saw, or when it is in the process group of one of them: that catches a
// worker's own children (gunicorn's workers, a `sleep` it spawned) without
// ever touching a process that merely reuses a pid.
type tracker struct {
	mu     sync.Mutex
	starts map[int]uint64 // pid -> start time; 0 if it was gone when first seen
}

func (tr *tracker) init() { tr.starts = map[int]uint64{} }

func (tr *tracker) add(pid int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if _, ok := tr.starts[pid]; ok {
		return
	}
	var start uint64
	if p, err := readStat(pid); err == nil {
		start = p.start
	}
	tr.starts[pid] = start
}

// alive returns every live process that is ours.
func (tr *tracker) alive() []procStat {
	tr.mu.Lock()
	starts := make(map[int]uint64, len(tr.starts))
	for pid, start := range tr.starts {
		starts[pid] = start
	}
	tr.mu.Unlock()
	procs := allProcs()
	// A group is ours unless its pid now belongs to another process (a
	// group's id cannot be reused while the group has members).
	ourGroup := func(g int) bool {
		start, tracked := starts[g]
		if !tracked {
			return false
		}
		leader, exists := procs[g]
		return !exists || (start != 0 && leader.start == start)
	}
	var alive []procStat
	for _, p := range procs {
		if p.zombie() {
			continue
		}
		if start, ok := starts[p.pid]; (ok && start != 0 && start == p.start) || ourGroup(p.pgrp) {
			alive = append(alive, p)
		}
	}
	return alive
}

// aliveChildrenOf returns the live children of pid.
func aliveChildrenOf(pid int) []procStat {
	var kids []procStat
	for _, p := range allProcs() {
		if p.ppid == pid && !p.zombie() {
			kids = append(kids, p)
		}
	}
	return kids
}

// waitGone waits until no process of ours is alive and returns the ones
// that still are after timeout.
func (tr *tracker) waitGone(timeout time.Duration) []procStat {
	var alive []procStat
	waitUntil(timeout, func() bool {
		alive = tr.alive()
		return len(alive) == 0
	})
	return alive
}

// killAll sends SIGKILL to every process of ours, again and again for a
// short while (a gunicorn master may fork a new worker in between).
func (tr *tracker) killAll() {
	waitUntil(5*time.Second, func() bool {
		alive := tr.alive()
		for _, p := range alive {
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
		return len(alive) == 0
	})
}

// ---------------------------------------------------------------------------
// Sockets

// portFree reports whether a TCP address can be bound again.
func portFree(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// acceptQueue returns how many connections wait in the accept queue of the
// TCP listener on addr's port (the rx_queue of a LISTEN socket in
// /proc/net/tcp), and whether there is such a listener.
func acceptQueue(addr string) (int, bool) {
	_, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return 0, false
	}
	port, _ := strconv.Atoi(portText)
	total, found := 0, false
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 5 || f[3] != "0A" { // 0A: LISTEN
				continue
			}
			_, localPort, _ := strings.Cut(f[1], ":")
			if p, _ := strconv.ParseUint(localPort, 16, 32); int(p) != port {
				continue
			}
			_, rx, _ := strings.Cut(f[4], ":")
			n, _ := strconv.ParseUint(rx, 16, 32)
			total += int(n)
			found = true
		}
	}
	return total, found
}

// waitAccepted waits until no connection waits in addr's accept queue:
// every connection made so far has been accepted by a worker.
func waitAccepted(t testing.TB, addr string) {
	t.Helper()
	waitFor(t, waitTimeout, "the workers to accept every connection on "+addr, func() bool {
		n, ok := acceptQueue(addr)
		return ok && n == 0
	})
}

// ---------------------------------------------------------------------------
// Waiting

// waitUntil polls cond until it is true or timeout has passed, and returns
// its last result.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	return tiertest.WaitUntil(timeout, pollInterval, cond)
}

// waitFor polls cond and fails the test if it is not true within timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !waitUntil(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// statOf reads a process's /proc entry, so that its death can be checked
// later without being fooled by pid reuse.
func statOf(t testing.TB, pid int) procStat {
	t.Helper()
	p, err := readStat(pid)
	if err != nil {
		t.Fatalf("process %d: %v", pid, err)
	}
	return p
}
