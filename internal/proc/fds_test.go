package proc

import (
	"testing"

	"golang.org/x/sys/unix"
)

// Both ways of marking fds close-on-exec, close_range(2) and the fallback
// over /proc/self/fd, mark the fds from first up and leave the ones below.
func TestCloseOnExecFrom(t *testing.T) {
	for name, mark := range map[string]func(int) error{
		"close_range": CloseOnExecFrom,
		"proc":        closeOnExecByProc,
	} {
		t.Run(name, func(t *testing.T) {
			// Far above anything this process holds, so that marking
			// does not touch fds that belong to others.
			below := inheritable(t, 1000)
			first := inheritable(t, below+1)
			above := inheritable(t, first+10)
			if err := mark(first); err != nil {
				t.Fatal(err)
			}
			for fd, want := range map[int]bool{below: false, first: true, above: true} {
				flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
				if err != nil {
					t.Fatal(err)
				}
				if got := flags&unix.FD_CLOEXEC != 0; got != want {
					t.Errorf("fd %d (marking from %d): close-on-exec %v, want %v", fd, first, got, want)
				}
			}
		})
	}
}

// inheritable opens /dev/null without close-on-exec at the lowest free fd
// from min up.
func inheritable(t *testing.T, min int) int {
	t.Helper()
	fd, err := unix.FcntlInt(uintptr(devNull), unix.F_DUPFD, min)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}
