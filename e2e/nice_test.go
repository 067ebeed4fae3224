package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// niceOf reads a process's nice value (field 19 of /proc/PID/stat); ok is
// false once it is gone.
func niceOf(pid int) (int, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	text := string(b)
	fields := strings.Fields(text[strings.LastIndexByte(text, ')')+1:])
	if len(fields) < 17 {
		return 0, false
	}
	n, err := strconv.Atoi(fields[16])
	return n, err == nil
}

// assertBootsNiced waits for a worker that is not one of known to start
// (logged into b, by its master or by one an upgrade started), and checks
// it runs at nice 10 while it boots and at nice 0 once it is ready. It
// returns the worker's pid.
func assertBootsNiced(t *testing.T, b *Baton, known map[int]bool) int {
	t.Helper()
	started := b.waitLog(t, "worker started", func(r record) bool { return !known[r.int("pid")] }, reloadTimeout)
	pid, gen := started.int("pid"), started.int("generation")
	if n, ok := niceOf(pid); !ok || n != 10 {
		t.Errorf("worker %d of generation %d boots at nice %d (alive %v), want 10 while others serve", pid, gen, n, ok)
	}
	b.waitLog(t, "worker ready", func(r record) bool { return r.int("pid") == pid }, reloadTimeout)
	if n, ok := niceOf(pid); ok && n != 0 {
		t.Errorf("worker %d serves at nice %d once ready, want 0", pid, n)
	}
	return pid
}

// startedWorkers is every worker pid b's log has named so far.
func startedWorkers(b *Baton) map[int]bool {
	known := map[int]bool{}
	for _, r := range b.logs("worker started", nil) {
		known[r.int("pid")] = true
	}
	return known
}

// TestWorkersBootNicedWhileOthersServe checks boot_nice where it matters:
// the new workers of a reload, and the first workers of a master an
// upgrade started (the old master's workers serve meanwhile). The first
// generation of a fresh start boots at normal priority: nobody serves yet.
func TestWorkersBootNicedWhileOthersServe(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("boot_nice needs root (or RLIMIT_NICE) to restore a worker's priority; this test runs as root in CI")
	}
	d := newDeployment(t, workerConfig(2, "", "-boot-delay", "1s"))
	b, bin, pidfile := upgradable(t, d)
	for pid := range servingGenerations(t, b.Addr(), 1) {
		if n, _ := niceOf(pid); n != 0 {
			t.Errorf("first-generation worker %d runs at nice %d, want 0", pid, n)
		}
	}

	b.waitLogs(t, "worker ready", nil, 2, waitTimeout) // serving is not yet "ready" to the master
	known := startedWorkers(b)
	b.signal(t, syscall.SIGHUP)
	assertBootsNiced(t, b, known)
	if r := b.waitReloadEnd(t, 2); !r.OK {
		t.Fatalf("reload: %s", describeReload(&r))
	}

	install(t, batonBin, bin)
	known = startedWorkers(b)
	done := make(chan cliResult, 1)
	go func() { done <- cli(t, nil, "upgrade", "--pid", pidfile) }()
	// The new master logs through the old one's stderr.
	assertBootsNiced(t, b, known)
	select {
	case r := <-done:
		if r.code != 0 {
			t.Fatalf("upgrade: exit %d: %s", r.code, r.stderr)
		}
	case <-time.After(reloadTimeout):
		t.Fatal("upgrade did not end")
	}
	stopNewMaster(t, pidfile)
}

// TestReplacedWorkersDrainNiced checks the other half of boot_nice: a
// worker that a reload replaced drains at nice 10 once it stops accepting,
// so its teardown yields the CPU to the new generation serving. The old
// worker ignores SIGTERM here, so it is still draining when checked.
func TestReplacedWorkersDrainNiced(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("boot_nice needs root (or RLIMIT_NICE) to restore a worker's priority; this test runs as root in CI")
	}
	d := newDeployment(t, workerConfig(1, "", "-ignore-term"))
	b := startBaton(t, "run", "-c", d.path)
	b.waitLogs(t, "worker ready", nil, 1, waitTimeout)
	old := b.workerPid(t, 1)
	if n, _ := niceOf(old); n != 0 {
		t.Fatalf("worker %d serves at nice %d, want 0", old, n)
	}
	if r := b.reload(t, 2); !r.OK {
		t.Fatalf("reload: %s", describeReload(&r))
	}
	deadline := time.Now().Add(waitTimeout)
	n, alive := niceOf(old)
	for alive && n != 10 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		n, alive = niceOf(old)
	}
	if !alive {
		t.Fatalf("replaced worker %d exited although it ignores SIGTERM (graceful_timeout is 10 s)", old)
	}
	if n != 10 {
		t.Errorf("replaced worker %d drains at nice %d, want 10", old, n)
	}
	if cur := b.workerPid(t, 1); cur == old {
		t.Fatalf("slot 1 still runs the old worker %d after the reload", old)
	} else if n, _ := niceOf(cur); n != 0 {
		t.Errorf("its successor %d serves at nice %d, want 0", cur, n)
	}
}
