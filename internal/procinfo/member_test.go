package procinfo

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitChildren waits until parent has n children and returns their pids.
func waitChildren(t *testing.T, parent, n int) []int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", parent, parent))
		var pids []int
		for _, f := range strings.Fields(string(data)) {
			var pid int
			fmt.Sscan(f, &pid)
			pids = append(pids, pid)
		}
		if len(pids) >= n {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d has children %v, want %d", parent, pids, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The worker, its process group, a child that left the group with
// setsid() and a grandchild belong to the worker; the test process (its
// master), another worker and an unrelated process do not.
func TestInWorker(t *testing.T) {
	id := Identity{MasterPid: os.Getpid(), NotifySocket: "/run/baton/test/" + t.Name()}
	start := func(env []string, script string) *exec.Cmd {
		cmd := exec.Command("sh", "-c", script)
		cmd.Env = append(os.Environ(), env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
			cmd.Process.Kill()
			cmd.Wait()
		})
		return cmd
	}
	ident := []string{"NOTIFY_SOCKET=" + id.NotifySocket, fmt.Sprintf("BATON_MASTER_PID=%d", id.MasterPid)}
	// sh -> (setsid sh -> sleep) and sh -> sleep.
	worker := start(ident, "setsid sh -c 'sleep 1000 & wait' & sleep 1000 & wait")
	other := start([]string{"NOTIFY_SOCKET=/elsewhere", fmt.Sprintf("BATON_MASTER_PID=%d", id.MasterPid)}, "sleep 1000 & wait")
	// A stranger that forges the identity, but was not started by the
	// worker, nor adopted from it.
	strangerParent := start(nil, fmt.Sprintf("NOTIFY_SOCKET=%s BATON_MASTER_PID=%d sleep 1000 & wait", id.NotifySocket, id.MasterPid))
	stranger := waitChildren(t, strangerParent.Process.Pid, 1)[0]

	var kids []int
	var setsidShell int
	for deadline := time.Now().Add(10 * time.Second); setsidShell == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no setsid child among %v", kids)
		}
		kids = waitChildren(t, worker.Process.Pid, 2)
		for _, k := range kids {
			if _, pgrp, _ := parentAndGroup(k); pgrp == k {
				setsidShell = k
			}
		}
	}
	// It left the worker's process group: killed on its own.
	t.Cleanup(func() { unix.Kill(-setsidShell, unix.SIGKILL) })
	grandchild := waitChildren(t, setsidShell, 1)[0]
	otherKid := waitChildren(t, other.Process.Pid, 1)[0]

	for _, c := range []struct {
		name string
		pid  int
		want bool
	}{
		{"the worker", worker.Process.Pid, true},
		{"its children", kids[0], true},
		{"its children", kids[1], true},
		{"a grandchild out of its process group", grandchild, true},
		{"the master", os.Getpid(), false},
		{"another worker", other.Process.Pid, false},
		{"another worker's child", otherKid, false},
		{"a stranger with the worker's identity", stranger, false},
		{"init", 1, false},
		{"no pid", 0, false},
		{"a pid that is not running", 1 << 30, false},
	} {
		if got := InWorker(c.pid, worker.Process.Pid, id); got != c.want {
			t.Errorf("%s (pid %d): InWorker = %v, want %v", c.name, c.pid, got, c.want)
		}
	}

	// The worker dies; the setsid shell and its child, adopted by this
	// process (the master as subreaper), carry its identity.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	orphan := start(ident, "setsid sh -c 'sleep 1000 & wait' & exit 0")
	orphan.Wait()
	var adopted int
	for deadline := time.Now().Add(10 * time.Second); adopted == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the orphan was not adopted")
		}
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			var k int
			if _, err := fmt.Sscan(e.Name(), &k); err != nil {
				continue
			}
			known := k == worker.Process.Pid || k == other.Process.Pid || k == strangerParent.Process.Pid
			if ppid, pgrp, _ := parentAndGroup(k); ppid == os.Getpid() && pgrp == k && !known {
				adopted = k
			}
		}
	}
	t.Cleanup(func() { unix.Kill(-adopted, unix.SIGKILL); unix.Wait4(adopted, nil, 0, nil) })
	sleeper := waitChildren(t, adopted, 1)[0]
	if !InWorker(sleeper, orphan.Process.Pid, id) {
		t.Errorf("the child of an adopted orphan (pid %d) does not belong to the worker", sleeper)
	}
}

func TestInCgroup(t *testing.T) {
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var own string
	for _, line := range strings.Split(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			own = p
		}
	}
	if own == "" {
		t.Fatal("no cgroup v2 entry in /proc/self/cgroup")
	}
	if !InCgroup(os.Getpid(), own) {
		t.Errorf("InCgroup(self, %q) = false", own)
	}
	if own != "/" && !InCgroup(os.Getpid(), parentPath(own)) {
		t.Errorf("InCgroup(self, parent %q) = false: a process in a cgroup below belongs", parentPath(own))
	}
	if InCgroup(os.Getpid(), own+"/w-1-1") || InCgroup(os.Getpid(), own+"x") {
		t.Error("InCgroup accepts a cgroup the process is not in")
	}
	if InCgroup(1<<30, own) {
		t.Error("InCgroup accepts a pid that is not running")
	}
}

func parentPath(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}
