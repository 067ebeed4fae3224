package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/e2e/internal/tiertest"
)

// A worker that double-forks leaves an orphan (here a short sleep whose
// parent shell exited). Reparented to baton, it must be reaped, not left a
// zombie: with --subreaper, and as PID 1 in a pid namespace (a container).
func TestOrphansOfWorkersAreReaped(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	// The subshell starts the orphan and exits at once.
	worker := []string{"--", sh, "-c", `(sleep 3 &); exec "$0"`, testworkerBin}
	for _, tc := range []struct {
		name   string
		prefix []string // a command baton runs under
		args   []string
	}{
		{"subreaper", nil, []string{"--subreaper"}},
		{"pid 1 in a pid namespace", []string{requireTool(t, "unshare"), "--pid", "--fork", "--kill-child"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Started without the harness, so given its own control
			// socket here (else root's would be /run/baton/baton.sock).
			ctl := filepath.Join(t.TempDir(), "baton.sock")
			args := append(append([]string{"run", "-b", "127.0.0.1:0", "-w", "1", "--control", ctl}, tc.args...), worker...)
			cmd := exec.Command(batonBin, args...)
			if tc.prefix != nil {
				cmd = exec.Command(tc.prefix[0], append(append(tc.prefix[1:], batonBin), args...)...)
			}
			cmd.Env = cleanEnv()
			var stderr tiertest.SyncBuffer
			cmd.Stderr = &stderr
			cmd.Dir = t.TempDir()
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-done })

			master := cmd.Process.Pid
			if tc.prefix != nil {
				// unshare forks baton into the namespace as its PID 1.
				waitFor(t, waitTimeout, "baton under unshare", func() bool { return len(childrenOf(master)) == 1 })
				master = childrenOf(master)[0]
			}
			var orphan int
			if !waitUntil(waitTimeout, func() bool {
				for _, p := range allProcs() {
					if p.ppid == master && isSleep(p.pid) {
						orphan = p.pid
						return true
					}
				}
				return false
			}) {
				var kids []string
				for _, p := range allProcs() {
					if p.ppid == master {
						kids = append(kids, itoa(p.pid)+" "+strings.ReplaceAll(cmdlineOf(p.pid), "\x00", " "))
					}
				}
				t.Fatalf("timed out after %v waiting for the orphan to be reparented to baton %d; its children: %q; its stderr:\n%s",
					waitTimeout, master, kids, stderr.String())
			}
			waitFor(t, waitTimeout, "the orphan to exit and be reaped", func() bool {
				_, err := os.Stat(filepath.Join("/proc", itoa(orphan)))
				return os.IsNotExist(err)
			})
			for _, p := range allProcs() {
				if p.ppid == master && p.zombie() {
					t.Errorf("zombie %d left under baton", p.pid)
				}
			}
			syscall.Kill(master, syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(exitTimeout):
				t.Fatal("baton did not exit after TERM")
			}
		})
	}
}

func isSleep(pid int) bool {
	cmdline, _ := os.ReadFile(filepath.Join("/proc", itoa(pid), "cmdline"))
	return strings.HasPrefix(string(cmdline), "sleep")
}

func itoa(n int) string { return strconv.Itoa(n) }

func cmdlineOf(pid int) string {
	b, _ := os.ReadFile(filepath.Join("/proc", itoa(pid), "cmdline"))
	return string(b)
}
