package procinfo

import (
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

func TestGroupRSSSumsTheWholeProcessGroup(t *testing.T) {
	// A group leader with a child in its group: the sum must exceed the
	// leader's own RSS.
	cmd := exec.Command("sh", "-c", "sleep 30 & sleep 30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	leader := cmd.Process.Pid

	var group, own uint64
	for deadline := time.Now().Add(10 * time.Second); group <= own; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("group RSS %d never exceeded the leader's own %d: the children were not counted", group, own)
		}
		group = GroupRSS([]int{leader})[leader]
		own = ownRSS(t, leader)
	}
}

func TestMissingGroupIsZero(t *testing.T) {
	if got := GroupRSS([]int{999999999}); got[999999999] != 0 {
		t.Fatalf("GroupRSS of a missing group = %d, want 0", got[999999999])
	}
}

func ownRSS(t *testing.T, pid int) uint64 {
	t.Helper()
	p, err := procfs.NewProc(pid)
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return uint64(st.ResidentMemory())
}
