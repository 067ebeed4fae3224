// Package procinfo reads what baton reports about worker processes from
// /proc, with prometheus/procfs.
package procinfo

import (
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
