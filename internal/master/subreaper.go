package master

import (
	"os"

	"golang.org/x/sys/unix"
)

// becomeSubreaper makes the master the reaper of every orphaned process
// below it: when baton is PID 1 in a container (or asked with subreaper),
// a worker's grandchild whose parent died is reparented to baton, and the
// single reaper (proc.Reap) collects it, so no zombie piles up.
func (m *Master) becomeSubreaper() {
	if !m.opts.Subreaper && os.Getpid() != 1 {
		return
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		m.log.Warn("cannot become a child subreaper; orphaned grandchildren may stay zombies", "err", err)
		return
	}
	m.log.Info("reaping orphaned processes (child subreaper)", "pid1", os.Getpid() == 1)
}
