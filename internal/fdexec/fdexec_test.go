package fdexec

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func closeOnExec(t *testing.T, fd int) bool {
	t.Helper()
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil {
		t.Fatal(err)
	}
	return flags&unix.FD_CLOEXEC != 0
}

func TestKeepTogglesCloseOnExec(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	fd, err := KeepConn(r, true)
	if err != nil {
		t.Fatal(err)
	}
	if closeOnExec(t, fd) {
		t.Fatal("the fd is still close-on-exec after KeepConn(true)")
	}
	if err := Keep(fd, false); err != nil {
		t.Fatal(err)
	}
	if !closeOnExec(t, fd) {
		t.Fatal("the fd is not close-on-exec again after Keep(false)")
	}
}
