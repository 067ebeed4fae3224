package proc

import (
	"fmt"
	"math"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// CloseOnExecFrom marks every open file descriptor >= first close-on-exec,
// so that no exec'd program inherits it by accident; the process itself
// keeps them all. A descriptor handed to a child on purpose still reaches
// it: fork/exec dup2s each entry of syscall.ProcAttr.Files into place, and
// the copy does not carry the flag.
//
// baton runs it twice: the master, before anything else, on everything it
// inherited from its parent (a shell's open files, say), and the shim on
// everything beyond the worker's listeners, so that a worker gets only
// those and its standard streams, whoever opened what in the master.
func CloseOnExecFrom(first int) error {
	err := unix.CloseRange(uint(first), math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	// close_range(2) with CLOSE_RANGE_CLOEXEC needs Linux 5.11 (ENOSYS
	// before 5.9, EINVAL for the flag before 5.11), and a seccomp filter
	// may refuse a syscall it does not know with EPERM: whatever the
	// reason, the slow way does the same job, or reports why it cannot.
	if perr := closeOnExecByProc(first); perr != nil {
		return fmt.Errorf("close_range: %v; %w", err, perr)
	}
	return nil
}

// closeOnExecByProc sets FD_CLOEXEC on every fd >= first listed in
// /proc/self/fd.
func closeOnExecByProc(first int) error {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("cannot list the open file descriptors: %w", err)
	}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < first {
			continue
		}
		// FD_CLOEXEC is the only descriptor flag, so setting it outright
		// loses nothing. EBADF: the directory ReadDir had open, gone now.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return fmt.Errorf("fd %d: F_SETFD FD_CLOEXEC: %w", fd, err)
		}
	}
	return nil
}
