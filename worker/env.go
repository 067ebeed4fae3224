package worker

import (
	"os"
	"strconv"
)

// WorkerID returns this worker's slot, 1 to N, from BATON_WORKER_ID. A slot
// is reused by the worker that replaces this one, so it suits per-worker
// resources such as a metrics port offset. It is 0 when not run by baton.
func WorkerID() int {
	return intFromEnv("BATON_WORKER_ID")
}

// Generation returns the generation this worker belongs to, from
// BATON_GENERATION: every reload starts a new, higher generation. It is 0
// when not run by baton.
func Generation() int {
	return intFromEnv("BATON_GENERATION")
}

// intFromEnv returns the integer in the named variable, or 0 when it is
// absent or not an integer.
func intFromEnv(name string) int {
	n, err := strconv.Atoi(os.Getenv(name))
	if err != nil {
		return 0
	}
	return n
}
