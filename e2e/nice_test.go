package e2e

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
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

// assertBootsNiced checks that worker pid of generation gen, which is
// booting, runs at nice 10, and at nice 0 once ready has returned (having
// seen it ready).
func assertBootsNiced(t *testing.T, pid, gen int, ready func()) {
	t.Helper()
	if n, ok := niceOf(pid); !ok || n != 10 {
		t.Errorf("worker %d of generation %d boots at nice %d (alive %v), want 10 while others serve", pid, gen, n, ok)
	}
	ready()
	if n, ok := niceOf(pid); ok && n != 0 {
		t.Errorf("worker %d serves at nice %d once ready, want 0", pid, n)
	}
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
		t.Fatal("boot_nice needs root (or RLIMIT_NICE) to restore a worker's priority: run the suite as root, as ./scripts/test does")
	}
	d := newDeployment(t, workerConfig(2, "", "-boot-delay", "1s"))
	b, bin, pidfile := upgradable(t, d)
	for pid := range servingGenerations(t, b.Addr(), 1) {
		if n, _ := niceOf(pid); n != 0 {
			t.Errorf("first-generation worker %d runs at nice %d, want 0", pid, n)
		}
	}

	b.waitReady(t, 2) // serving is not yet "ready" to the master
	b.signal(t, syscall.SIGHUP)
	var booting control.Worker
	b.waitStatus(t, "a booting worker of generation 2", reloadTimeout, func(st control.Status) bool {
		i := slices.IndexFunc(st.WorkerList, func(w control.Worker) bool { return w.Generation == 2 && w.State == "starting" })
		if i >= 0 {
			booting = st.WorkerList[i]
		}
		return i >= 0
	})
	assertBootsNiced(t, booting.Pid, 2, func() {
		b.waitStatus(t, fmt.Sprintf("worker %d to be ready", booting.Pid), reloadTimeout, func(st control.Status) bool {
			w, ok := withPid(st, booting.Pid)
			return ok && w.State == "ready"
		})
	})
	if r := b.waitReloadEnd(t, 2); !r.OK {
		t.Fatalf("reload: %s", describeReload(&r))
	}

	install(t, batonBin, bin)
	known := startedWorkers(b)
	done := make(chan cliResult, 1)
	go func() { done <- cli(t, nil, "upgrade", "--pid", pidfile) }()
	// The new master's workers are in no status while they boot (it takes
	// the control socket over at the hand-over, once they are ready), but
	// it logs through the old master's stderr.
	started := b.waitLog(t, "worker started", func(r record) bool { return !known[r.int("pid")] }, reloadTimeout)
	pid := started.int("pid")
	assertBootsNiced(t, pid, started.int("generation"), func() {
		b.waitLog(t, "worker ready", func(r record) bool { return r.int("pid") == pid }, reloadTimeout)
	})
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
		t.Fatal("boot_nice needs root (or RLIMIT_NICE) to restore a worker's priority: run the suite as root, as ./scripts/test does")
	}
	d := newDeployment(t, workerConfig(1, "", "-ignore-term"))
	b := startBaton(t, "run", "-c", d.path)
	old := b.waitReady(t, 1).WorkerList[0].Pid
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

// preloadSlowImport is an app whose import takes 1.5 s, long enough to see
// its template import.
const preloadSlowImport = `import time
time.sleep(1.5)

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
`

// TestPreloadTemplateImportsNicedWhileOthersServe: a preload template's
// import is its generation's start-up, so a reload's template imports at
// nice 10 while the old workers serve, and forks at nice 0 once it has
// imported; the first template, with nobody serving yet, imports at 0.
func TestPreloadTemplateImportsNicedWhileOthersServe(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("boot_nice needs root (or RLIMIT_NICE) to restore a priority: run the suite as root, as ./scripts/test does")
	}
	requireTool(t, "/usr/bin/uvicorn")
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	writeFile(t, dir, "app.py", preloadSlowImport, 0o644)
	b := startBaton(t, "run", "-w", "1", "--chdir", dir, "--preload", "app", "--", "/usr/bin/uvicorn", "--fd", "3", "app:app")
	first := b.waitLog(t, "preload template started", nil, waitTimeout)
	if n, ok := niceOf(first.int("pid")); first.str("niced") != "false" || ok && n != 0 {
		t.Errorf("the first template imports at nice %d (logged niced %q), want 0: nobody serves yet", n, first.str("niced"))
	}
	b.waitReady(t, 1)

	b.signal(t, syscall.SIGHUP)
	started := b.waitLog(t, "preload template started", func(r record) bool { return r.int("generation") == 2 }, reloadTimeout)
	pid := started.int("pid")
	if n, ok := niceOf(pid); !ok || n != 10 || started.str("niced") != "true" {
		t.Errorf("generation 2's template imports at nice %d (alive %v, logged niced %q), want 10 while generation 1 serves", n, ok, started.str("niced"))
	}
	b.waitLog(t, "preload template ready", func(r record) bool { return r.int("generation") == 2 }, reloadTimeout)
	if n, ok := niceOf(pid); !ok || n != 0 {
		t.Errorf("generation 2's template runs at nice %d once it has imported (alive %v), want 0", n, ok)
	}
	if r := b.waitReloadEnd(t, 2); !r.OK {
		t.Fatalf("reload: %s", describeReload(&r))
	}
}
