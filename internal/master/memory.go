package master

import "runtime/debug"

// releaseMemory hands the heap a start-up or a reload used back to the
// kernel. The master is idle nearly all of its life, and Go's background
// scavenger returns freed pages only slowly: without this, the start and
// every reload (spawning, readiness probes, the control session) leave a
// few MiB of garbage resident until the next one, and the master's RSS
// reads twice its idle size. A forced collection of a heap this small
// costs well under a millisecond, off the event loop.
func releaseMemory() { go debug.FreeOSMemory() }
