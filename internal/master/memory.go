package master

import (
	"os"
	"runtime/debug"

	"github.com/baton-pm/baton/internal/procinfo"
	"golang.org/x/sys/unix"
)

// releaseMemory hands the heap a start-up or a reload used back to the
// kernel. The master is idle nearly all of its life, and Go's background
// scavenger returns freed pages only slowly: without this, the start and
// every reload (spawning, readiness probes, the control session) leave a
// few MiB of garbage resident until the next one, and the master's RSS
// reads twice its idle size. A forced collection of a heap this small
// costs well under a millisecond, off the event loop.
func releaseMemory() {
	go func() {
		debug.FreeOSMemory()
		dropProgramPages()
	}()
}

// dropProgramPages unmaps the pages of baton's own code and read-only data
// from the master, as a kernel frees its init sections once booted. A Go
// program's start (every package's init, the command line, the config)
// and a reload touch code all over the binary, and the kernel maps what
// is around each page touched too (fault-around, 64 KiB): an idle master
// kept nearly its whole program mapped, 9 MiB of its 12 MiB RSS, most of
// it code it would not run again until the next reload. Dropped, the
// pages stay in the page cache, and those the master runs come back with a
// minor fault (the README's Footprint has the numbers); what it does not run is
// left for the kernel to reclaim under memory pressure, which it does
// more readily for pages nobody maps. Only the read-only mappings of the
// executable: dropping a page of them loses nothing.
func dropProgramPages() {
	ranges, err := procinfo.ProgramReadOnly()
	if err != nil {
		return // /proc unreadable: the pages stay mapped, as they would have
	}
	for _, r := range ranges {
		// Raw madvise(2): these pages are the program's, not Go memory a
		// slice may be made of.
		unix.Syscall(unix.SYS_MADVISE, r.Start, r.End-r.Start, unix.MADV_DONTNEED)
	}
}

// masterGCPercent is the master's GOGC, unless the environment sets one.
// Its live heap is small and its allocations come in bursts (a reload's
// /proc probes, a foreign-listener scan, a status call): at Go's default
// of 100 the heap grows to 4 MiB, most of it garbage, before a collection,
// and that garbage was most of an idle master's anonymous memory. At 25 a
// collection comes at a quarter of that; the master allocates too little
// for the extra collections to show in its CPU time.
const masterGCPercent = 25

// tuneGC sets masterGCPercent unless GOGC is set.
func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(masterGCPercent)
	}
}
