package control

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestDefaultPath(t *testing.T) {
	if got := DefaultPath("/run/app/baton.pid"); got != "/run/app/baton.sock" {
		t.Errorf("beside the pidfile: %q", got)
	}
	if got := DefaultPath("/run/app/master"); got != "/run/app/master.sock" {
		t.Errorf("pidfile without extension: %q", got)
	}
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	if got := DefaultPath(""); got != "/run/user/1000/baton.sock" {
		t.Errorf("XDG_RUNTIME_DIR: %q", got)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	want := "/run/baton.sock"
	if os.Getuid() != 0 {
		want = filepath.Join(os.TempDir(), "baton-"+itoa(os.Getuid())+".sock")
	}
	if got := DefaultPath(""); got != want {
		t.Errorf("no pidfile, no XDG_RUNTIME_DIR: %q, want %q", got, want)
	}
}

func itoa(n int) string { return fmt.Sprint(n) }
