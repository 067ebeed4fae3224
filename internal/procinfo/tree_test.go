package procinfo

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A worker whose child left with setsid() and whose parent then died is
// found by its identity among the master's adopted children, and killed.
func TestWorkerTreeFindsSetsidEscapesTheMasterAdopted(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	id := Identity{MasterPid: os.Getpid(), NotifySocket: "@test-notify-" + t.Name()}
	start := func(script string) *exec.Cmd {
		cmd := exec.Command("sh", "-c", script)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+id.NotifySocket, fmt.Sprintf("BATON_MASTER_PID=%d", id.MasterPid))
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	// An unrelated child of the same master, with another identity.
	other := exec.Command("sleep", "1000")
	other.Env = append(os.Environ(), "NOTIFY_SOCKET=@someone-else", fmt.Sprintf("BATON_MASTER_PID=%d", id.MasterPid))
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()

	worker := start("setsid sleep 1000 & sleep 1000 & wait")
	var tree []Proc
	for deadline := time.Now().Add(10 * time.Second); len(tree) < 3; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("worker tree %v, want the shell and its two sleeps", tree)
		}
		tree = WorkerTree(worker.Process.Pid, id, nil)
	}
	// The worker's main process dies; its children are adopted by this
	// process, the subreaper; the setsid one is in no group of the worker.
	unix.Kill(worker.Process.Pid, unix.SIGKILL)
	worker.Wait()
	orphans := WorkerTree(worker.Process.Pid, id, map[int]bool{other.Process.Pid: true})
	if len(orphans) != 2 {
		t.Fatalf("after the worker died: %v, want its two adopted sleeps", orphans)
	}
	for _, p := range orphans {
		if p.PPid != id.MasterPid || p.Pid == other.Process.Pid {
			t.Errorf("%+v: want an orphan adopted by the master, not the other worker", p)
		}
	}
	if n := Kill(orphans); n != 2 {
		t.Fatalf("killed %d, want 2", n)
	}
	for _, p := range orphans {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(p.Pid, &ws, 0, nil); err != nil || !ws.Signaled() || ws.Signal() != unix.SIGKILL {
			t.Errorf("orphan %d: wait %v, status %v; want killed by SIGKILL", p.Pid, err, ws)
		}
	}
	if got := WorkerTree(worker.Process.Pid, id, nil); slices.ContainsFunc(got, func(p Proc) bool { return p.Pid != other.Process.Pid }) {
		t.Errorf("left after Kill: %v", got)
	}
}

// A pid that names another process than the one found is not signalled.
func TestKillSparesAProcessThatIsNotTheOneFound(t *testing.T) {
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	stale := Proc{Pid: cmd.Process.Pid, Start: 1} // as if the pid had been reused
	if n := Kill([]Proc{stale}); n != 0 {
		t.Fatalf("Kill of a stale entry killed %d", n)
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the process was hit: %v", err)
	}
}
