// Package procinfo reads worker processes from /proc, with
// prometheus/procfs: their memory and process count, and, where baton has
// no cgroups, a worker's whole tree, which it kills through pidfds
// (tree.go).
package procinfo

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
)

// GroupRSS returns, for each process group leader in leaders, the resident
// memory of its whole process group in bytes: a worker and every process
// it started (gunicorn's arbiter and its workers count as one worker).
// Processes that vanish while being read are skipped.
func GroupRSS(leaders []int) map[int]uint64 {
	rss := make(map[int]uint64, len(leaders))
	if len(leaders) == 0 {
		return rss
	}
	wanted := make(map[int]bool, len(leaders))
	for _, pid := range leaders {
		wanted[pid] = true
		rss[pid] = 0
	}
	procs, err := procfs.AllProcs()
	if err != nil {
		return rss
	}
	for _, p := range procs {
		st, err := p.Stat()
		if err != nil || !wanted[st.PGRP] {
			continue
		}
		rss[st.PGRP] += uint64(st.ResidentMemory())
	}
	return rss
}

// RSS is the resident memory of the given processes, in bytes; those
// that vanished count nothing.
func RSS(pids []int) uint64 {
	var sum uint64
	for _, pid := range pids {
		p, err := procfs.NewProc(pid)
		if err != nil {
			continue
		}
		if st, err := p.Stat(); err == nil {
			sum += uint64(st.ResidentMemory())
		}
	}
	return sum
}

// Private is the memory the given processes do not share, in bytes:
// their private pages, resident or swapped (Private_Clean, Private_Dirty
// and Swap of smaps_rollup). For a worker forked from a preload template
// this is what it costs on top of the template, where its RSS would count
// every page of the app it shares with the template and its siblings.
// Those that vanished count nothing.
func Private(pids []int) uint64 {
	var sum uint64
	for _, pid := range pids {
		p, err := procfs.NewProc(pid)
		if err != nil {
			continue
		}
		if r, err := p.ProcSMapsRollup(); err == nil {
			sum += r.PrivateClean + r.PrivateDirty + r.Swap
		}
	}
	return sum
}

// Group is the resident memory, in bytes, and the number of the
// processes of root's tree: root and its descendants, found through each
// thread's children list, which costs a read per process of the tree
// rather than a walk of all of /proc.
func Group(root int) (rss uint64, procs int) {
	tree := descendants(root)
	return RSS(tree), len(tree)
}

// GroupPrivate is Group with Private memory in place of RSS.
func GroupPrivate(root int) (private uint64, procs int) {
	tree := descendants(root)
	return Private(tree), len(tree)
}

// descendants is root and every process below it, as the kernel's
// children lists show them.
func descendants(root int) []int {
	if _, err := os.Stat("/proc/" + strconv.Itoa(root)); err != nil {
		return nil
	}
	var out []int
	queue := []int{root}
	seen := map[int]bool{}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		out = append(out, pid)
		files, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, field := range strings.Fields(string(data)) {
				if child, err := strconv.Atoi(field); err == nil {
					queue = append(queue, child)
				}
			}
		}
	}
	return out
}
