package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestPidfile: the pidfile holds the master's pid while it runs, replaces a
// stale one (a dead pid, or garbage), and is removed on exit.
func TestPidfile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		stale string // what the pidfile holds before baton starts; "" for no file
	}{
		{name: "new"},
		{name: "dead pid", stale: deadPid(t) + "\n"},
		{name: "garbage", stale: "not a pid\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pidfile := filepath.Join(t.TempDir(), "baton.pid")
			if tc.stale != "" {
				writeFile(t, filepath.Dir(pidfile), "baton.pid", tc.stale, 0o644)
			}
			b := startBaton(t, "run", "--pid", pidfile, "--", testworkerBin)
			data, err := os.ReadFile(pidfile)
			if err != nil {
				t.Fatalf("pidfile while running: %v", err)
			}
			if got := strings.TrimSpace(string(data)); got != strconv.Itoa(b.Pid) {
				t.Errorf("pidfile holds %q, want the master's pid %d", got, b.Pid)
			}
			b.signal(t, syscall.SIGTERM)
			if code := b.waitExit(t, exitTimeout); code != 0 {
				t.Errorf("exit code %d after TERM, want 0", code)
			}
			if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
				t.Errorf("pidfile still there after exit (err %v)", err)
			}
			b.assertNothingLeft(t)
		})
	}
}

// deadPid returns a pid no process has: above pid_max if possible.
func deadPid(t *testing.T) string {
	for _, pid := range []int{999999, 4194304, 32767} {
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			return strconv.Itoa(pid)
		}
	}
	t.Fatal("no dead pid found")
	return ""
}
