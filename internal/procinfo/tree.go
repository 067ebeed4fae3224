package procinfo

import (
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// Without cgroups, a worker's processes are found in /proc: its process
// group and their descendants while they are attached to it, and, once a
// process has left (setsid(), a double fork, its parent's death), by the
// identity every process of the worker inherits in its environment, as an
// orphan the master adopted as child subreaper. A process that scrubbed
// its environment and escaped its tree is out of reach: only cgroups
// close that gap.

// Proc is one process found in /proc.
type Proc struct {
	Pid, PPid, PGrp int
	Start           uint64 // start time in clock ticks after boot: with Pid, the process's identity
}

// Identity is how a worker's processes are known once they left its
// tree: the master that started it and the worker's own NOTIFY_SOCKET,
// which is unique to the worker and inherited by all it starts.
type Identity struct {
	MasterPid    int
	NotifySocket string
}

// WorkerTree lists what is left of a worker: leader itself, every process
// in its process group, the master's children that carry the worker's
// identity, and all their descendants. Processes in skip (the master's
// other workers and helpers) are never listed or descended into. A
// leader of 0 (one that was reaped, whose pid may be reused) looks for
// the orphans alone.
func WorkerTree(leader int, id Identity, skip map[int]bool) []Proc {
	all, err := procfs.AllProcs()
	if err != nil {
		return nil
	}
	stats := map[int]Proc{}
	children := map[int][]int{}
	for _, p := range all {
		st, err := p.Stat()
		if err != nil {
			continue
		}
		pr := Proc{Pid: st.PID, PPid: st.PPID, PGrp: st.PGRP, Start: st.Starttime}
		stats[pr.Pid] = pr
		children[pr.PPid] = append(children[pr.PPid], pr.Pid)
	}
	var roots []int
	for pid, pr := range stats {
		switch {
		case skip[pid] || pid == id.MasterPid:
		case leader > 0 && (pid == leader || pr.PGrp == leader):
			roots = append(roots, pid)
		case pr.PPid == id.MasterPid && carries(pid, id):
			roots = append(roots, pid)
		}
	}
	seen := map[int]bool{}
	var tree []Proc
	for len(roots) > 0 {
		pid := roots[len(roots)-1]
		roots = roots[:len(roots)-1]
		if seen[pid] || skip[pid] || pid == id.MasterPid {
			continue
		}
		seen[pid] = true
		tree = append(tree, stats[pid])
		roots = append(roots, children[pid]...)
	}
	return tree
}

// carries reports whether process pid's environment holds id.
func carries(pid int, id Identity) bool {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return false
	}
	env, err := p.Environ()
	if err != nil {
		return false
	}
	notify, master := false, false
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET":
			notify = v == id.NotifySocket
		case "BATON_MASTER_PID":
			master = v == strconv.Itoa(id.MasterPid)
		}
	}
	return notify && master
}

// Kill sends SIGKILL to each process through a pidfd opened after
// checking that the pid still names the process found (the same start
// time), so a pid reused since /proc was read is never hit. It returns
// how many it killed.
func Kill(procs []Proc) int {
	killed := 0
	for _, p := range procs {
		fd, err := unix.PidfdOpen(p.Pid, 0)
		if err != nil {
			continue // gone already
		}
		if same(p) && unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil {
			killed++
		}
		unix.Close(fd)
	}
	return killed
}

// same reports whether p.Pid still names the process p (read after its
// pidfd was opened: the pidfd pins whatever process had the pid then).
func same(p Proc) bool {
	pr, err := procfs.NewProc(p.Pid)
	if err != nil {
		return false
	}
	st, err := pr.Stat()
	return err == nil && st.Starttime == p.Start
}
