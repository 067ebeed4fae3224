package master

import (
	"os"

	"golang.org/x/sys/unix"
)

// setSubreaper makes the master the reaper of every orphaned process
// below it, or stops it being one: when baton is PID 1 in a container (or
// asked with subreaper), a worker's grandchild whose parent died is
// reparented to baton, and the single reaper (processes.Reap) collects
// it, so no zombie piles up. As PID 1 baton reaps orphans whatever the
// setting says.
func (m *Master) setSubreaper(on bool) {
	pid1 := os.Getpid() == 1
	if pid1 {
		on = true
	}
	flag := uintptr(0)
	if on {
		flag = 1
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, flag, 0, 0, 0); err != nil {
		m.log.Warn("cannot change the child subreaper setting; orphaned grandchildren may stay zombies", "on", on, "err", err)
		return
	}
	if on {
		m.log.Info("reaping orphaned processes (child subreaper)", "pid1", pid1)
	}
}
