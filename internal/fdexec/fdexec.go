// Package fdexec decides which of the master's descriptors survive an
// exec: an in-place upgrade (see internal/master's reexec.go) hands
// listening sockets, notify sockets and stderr pipes to the master's next
// image by clearing their close-on-exec flag, and sets it again if the
// exec fails.
package fdexec

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// Keep makes fd survive an exec (keep), or not.
func Keep(fd int, keep bool) error {
	flag := unix.FD_CLOEXEC
	if keep {
		flag = 0
	}
	_, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, flag)
	return err
}

// KeepConn is Keep for the descriptor of a connection, a listener or a
// file, without taking it out of Go's poller (as Fd would); it returns the
// descriptor.
func KeepConn(c syscall.Conn, keep bool) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var kerr error
	if err := rc.Control(func(f uintptr) {
		fd = int(f)
		kerr = Keep(fd, keep)
	}); err != nil {
		return -1, err
	}
	return fd, kerr
}
