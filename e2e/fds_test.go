package e2e

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestWorkersInheritOnlyTheListeners: a file baton inherited from its
// parent (here a root-only file the "shell" had open as fd 7, as in issue
// 11) reaches no worker, even one running as another user; the workers
// inherit the listeners and their standard streams and nothing else. The
// master keeps the file but marks it close-on-exec, so no other child of
// it (helpers, a new master) gets it either.
func TestWorkersInheritOnlyTheListeners(t *testing.T) {
	for _, mode := range containmentModes {
		t.Run("cgroup="+mode, func(t *testing.T) {
			t.Parallel()
			workersInheritOnlyTheListeners(t, mode)
		})
	}
}

func workersInheritOnlyTheListeners(t *testing.T, mode string) {
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root to start workers as nobody")
	}
	secretPath := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretPath, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	secret, err := os.Open(secretPath)
	if err != nil {
		t.Fatal(err)
	}
	defer secret.Close()
	secretInfo, err := secret.Stat()
	if err != nil {
		t.Fatal(err)
	}
	const secretFD = 7
	sock := filepath.Join(t.TempDir(), "app.sock")
	// The worker is sleep, which keeps no fd of its own open: once it
	// sleeps, its fd table is exactly what it inherited (settledFDs).
	b := launch(t, batonSpec{
		args: []string{"run", "-w", "2", "--cgroup", mode, "--user", "nobody", "--unix-owner", "nobody", "--ready", "delay:0s",
			"-b", "127.0.0.1:0", "-b", "unix:" + sock, "--", "sleep", "60"},
		// nil entries are closed in baton: the secret is its fd 7.
		extraFiles: []*os.File{nil, nil, nil, nil, secret},
	})
	b.waitStarted(t)
	pids := workerPidsOf(b.waitReady(t, 2).WorkerList)
	for _, pid := range pids {
		// Until the shim has exec'd the command, the fd table is the
		// shim's.
		waitFor(t, waitTimeout, fmt.Sprintf("worker %d to exec sleep", pid), func() bool {
			comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
			return strings.TrimSpace(string(comm)) == "sleep"
		})
	}

	// The master holds its inherited fd, close-on-exec.
	if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", b.Pid, secretFD)); target != secretPath {
		t.Fatalf("baton's fd %d is %q, want the secret file %s (the test's setup is wrong)", secretFD, target, secretPath)
	}
	if cloexec, err := closeOnExec(b.Pid, secretFD); err != nil || !cloexec {
		t.Errorf("baton's inherited fd %d: close-on-exec %v (%v), want true", secretFD, cloexec, err)
	}
	masterSockets := map[string]bool{}
	for _, target := range fdTargets(t, b.Pid) {
		if strings.HasPrefix(target, "socket:") {
			masterSockets[target] = true
		}
	}

	for _, pid := range pids {
		fds := settledFDs(t, pid)
		t.Logf("worker %d: %v", pid, fds)
		for fd, target := range fds {
			if fi, err := os.Stat(fmt.Sprintf("/proc/%d/fd/%d", pid, fd)); err == nil && os.SameFile(fi, secretInfo) {
				t.Errorf("worker %d (as nobody) has the root-only file as fd %d (%s)", pid, fd, target)
			}
			if fd > 4 {
				t.Errorf("worker %d has fd %d (%s): only stdio and the listeners (fds 3, 4) may cross", pid, fd, target)
			}
		}
		for fd := range 5 {
			target, ok := fds[fd]
			switch {
			case !ok:
				t.Errorf("worker %d lacks fd %d", pid, fd)
			case fd >= 3 && !masterSockets[target]:
				t.Errorf("worker %d: fd %d is %s, not one of the master's listeners", pid, fd, target)
			}
		}
	}
}

// fdTargets lists a process's open fds with what each points to (as
// readlink shows it: a path, "socket:[INODE]", "pipe:[INODE]"...).
func fdTargets(t *testing.T, pid int) map[int]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fds := map[int]string{}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			fds[fd] = target // else closed meanwhile
		}
	}
	return fds
}

// closeOnExec reads whether fd of pid has close-on-exec, from the octal
// flags in /proc/PID/fdinfo/FD (which include O_CLOEXEC when it does).
func closeOnExec(pid, fd int) (bool, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			if err != nil {
				return false, fmt.Errorf("fdinfo flags %q: %w", v, err)
			}
			return flags&syscall.O_CLOEXEC != 0, nil
		}
	}
	return false, fmt.Errorf("no flags in /proc/%d/fdinfo/%d", pid, fd)
}

// settledFDs is pid's fd table once sleep has started up: glibc opens
// files of its own for a moment as it starts (gconv-modules.cache, for the
// locale), so an fd above the listeners is looked at again for up to 5 s.
// One that was inherited never goes away, and the caller reports it.
func settledFDs(t *testing.T, pid int) map[int]string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fds := fdTargets(t, pid)
		if !slices.ContainsFunc(slices.Collect(maps.Keys(fds)), func(fd int) bool { return fd > 4 }) || time.Now().After(deadline) {
			return fds
		}
		time.Sleep(50 * time.Millisecond)
	}
}
