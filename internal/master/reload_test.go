package master

import (
	"context"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/readiness"
)

func TestStartFillsEverySlotAndTellsSystemdOnceAllAreReady(t *testing.T) {
	inBubble(t, options(gen(3)), func(t *testing.T, tb *testbed) {
		pids := tb.workers(1, "starting")
		if len(pids) != 3 {
			t.Fatalf("%d workers starting, want 3", len(pids))
		}
		for i, pid := range pids {
			if got := tb.proc(pid).env("BATON_WORKER_ID"); got != string(rune('1'+i)) {
				t.Errorf("worker %d: BATON_WORKER_ID=%q, want %d", pid, got, i+1)
			}
		}
		tb.ready(pids[:2]...)
		if slices.Contains(tb.w.systemd, "READY=1") {
			t.Fatal("READY=1 sent to systemd before every worker was ready")
		}
		tb.ready(pids[2])
		if !slices.Contains(tb.w.systemd, "READY=1") {
			t.Fatalf("no READY=1 to systemd once all were ready: %q", tb.w.systemd)
		}
	})
}

func TestReloadRetiresEachOldWorkerOnceItsSuccessorIsReady(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")
		res := tb.reloadAsync()
		next := tb.workers(2, "starting")
		if len(next) != 2 {
			t.Fatalf("surge: %d new workers starting, want 2 at once", len(next))
		}
		if !tb.status().Reloading {
			t.Error("status does not say reloading")
		}
		tb.ready(next[0])
		if got := tb.signals(old[0]); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
			t.Errorf("old worker of slot 1 got %v once its successor was ready, want TERM", got)
		}
		if got := tb.signals(old[1]); len(got) != 0 {
			t.Errorf("old worker of slot 2 got %v before its successor was ready", got)
		}
		tb.noResult(res)
		tb.ready(next[1])
		r := tb.result(res)
		if !r.OK || r.Generation != 2 {
			t.Fatalf("reload result %+v, want generation 2 OK", r)
		}
		st := tb.status()
		if st.Generation != 2 || st.Reloading || len(st.WorkerList) != 2 {
			t.Errorf("status after the reload: generation %d, reloading %v, %d workers", st.Generation, st.Reloading, len(st.WorkerList))
		}
		if st.LastReload == nil || !st.LastReload.OK {
			t.Errorf("last reload %+v, want OK", st.LastReload)
		}
		// systemd saw the reload begin and end (Type=notify-reload).
		i := slices.Index(tb.w.systemd, "RELOADING=1")
		if i < 0 || !slices.Contains(tb.w.systemd[i:], "READY=1") {
			t.Errorf("systemd got %q, want RELOADING=1 then READY=1", tb.w.systemd)
		}
	})
}

func TestReloadFailsWhenANewWorkerExitsAndRefillsHandedOverSlots(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")
		res := tb.reloadAsync()
		next := tb.workers(2, "starting")
		tb.ready(next[0]) // slot 1 is handed over: its old worker goes
		tb.exit(next[1], 1, "Traceback (most recent call last):", "ImportError: No module named 'app'")
		r := tb.result(res)
		if r.OK || !strings.Contains(r.Reason, "slot 2") || !strings.Contains(r.Reason, "exited during boot: exit status 1") {
			t.Fatalf("reload result %+v, want a failure naming slot 2's exit", r)
		}
		if len(r.Stderr) != 2 || r.Stderr[1] != "ImportError: No module named 'app'" {
			t.Errorf("reload result's stderr %q, want the worker's last lines", r.Stderr)
		}
		if tb.alive(next[0]) {
			t.Error("the ready worker of the failed generation was not stopped")
		}
		if got := tb.signals(old[1]); len(got) != 0 {
			t.Errorf("old worker of slot 2 got %v; it should keep serving", got)
		}
		// Slot 1's old worker was retired; the slot is refilled with the
		// old configuration.
		refill := tb.workers(1, "starting")
		if len(refill) != 1 || refill[0] == old[0] {
			t.Fatalf("generation 1 starting workers %v, want one refill of slot 1", refill)
		}
		if got := tb.proc(refill[0]).env("BATON_GENERATION"); got != "1" {
			t.Errorf("refill has BATON_GENERATION=%s, want 1", got)
		}
		st := tb.status()
		if st.Generation != 1 || st.Reloading || st.LastReload == nil || st.LastReload.OK {
			t.Errorf("status after the failure: %+v", st)
		}
		tb.ready(refill...)
		if n := tb.count(1, "ready"); n != 2 {
			t.Errorf("%d old workers ready after the refill, want 2", n)
		}
	})
}

func TestReloadFailsAtTheBootTimeoutWithoutTouchingTheOldWorkers(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")
		res := tb.reloadAsync()
		tb.wait(59 * time.Second)
		tb.noResult(res)
		tb.wait(time.Second)
		r := tb.result(res)
		if r.OK || !strings.Contains(r.Reason, "not ready within boot_timeout (1m0s)") {
			t.Fatalf("reload result %+v, want a boot timeout failure", r)
		}
		for _, pid := range old {
			if got := tb.signals(pid); len(got) != 0 {
				t.Errorf("old worker %d got %v", pid, got)
			}
		}
		if n := tb.count(2, ""); n != 0 {
			t.Errorf("%d workers of the failed generation still alive", n)
		}
	})
}

func TestInvalidConfigFailsTheReloadAndKeepsTheGenerationNumberFree(t *testing.T) {
	opts := options(gen(1))
	serving(t, opts, func(t *testing.T, tb *testbed) {
		tb.setConfig(Options{}, errors.New("baton.toml:3: workers: expected a number"))
		r := tb.result(tb.reloadAsync())
		if r.OK || !strings.Contains(r.Reason, "workers: expected a number") {
			t.Fatalf("reload result %+v, want the config error", r)
		}
		if n := len(tb.started("worker")); n != 1 {
			t.Errorf("%d workers started in all, want the first one only", n)
		}
		tb.setConfig(opts, nil)
		res := tb.reloadAsync()
		tb.ready(tb.workers(2, "starting")...)
		r = tb.result(res)
		if r.Generation != 2 {
			t.Errorf("the next reload made generation %d, want 2", r.Generation)
		}
	})
}

func TestReloadRefusesAChangedStartOnlySettingByName(t *testing.T) {
	opts := options(gen(1))
	opts.Master.StartOnly = map[string]string{"bind": `["127.0.0.1:8000"]`, "backlog": "2048", "pid": `""`}
	serving(t, opts, func(t *testing.T, tb *testbed) {
		next := opts
		next.Master.StartOnly = map[string]string{"bind": `["127.0.0.1:8000"]`, "backlog": "4096", "pid": `""`}
		tb.setConfig(next, nil)
		r := tb.result(tb.reloadAsync())
		if r.OK || !strings.Contains(r.Reason, "backlog: 2048 -> 4096") || strings.Contains(r.Reason, "bind") {
			t.Fatalf("reload result %+v, want a refusal naming backlog only", r)
		}
		if n := len(tb.started("worker")); n != 1 {
			t.Errorf("%d workers started in all, want none for the refused reload", n)
		}
	})
}

func TestQueuedReloadsCoalesceAndEachClientGetsTheReloadThatReadItsConfig(t *testing.T) {
	serving(t, options(gen(1)), func(t *testing.T, tb *testbed) {
		first := tb.reloadAsync()
		tb.signal(syscall.SIGHUP)
		second := tb.reloadAsync()
		third := tb.reloadAsync()
		tb.signal(syscall.SIGHUP)
		if n := len(tb.started("worker")); n != 2 {
			t.Fatalf("%d workers started, want 2: requests during a reload are queued", n)
		}
		tb.ready(tb.workers(2, "starting")...)
		if r := tb.result(first); !r.OK || r.Generation != 2 {
			t.Fatalf("first client got %+v, want generation 2", r)
		}
		tb.noResult(second)
		// The queued requests became one reload.
		next := tb.workers(3, "starting")
		if len(next) != 1 {
			t.Fatalf("generation 3 has %d starting workers, want 1", len(next))
		}
		tb.ready(next...)
		r2, r3 := tb.result(second), tb.result(third)
		if !r2.OK || r2.Generation != 3 || !r3.OK || r3.Generation != 3 {
			t.Fatalf("queued clients got %+v and %+v, want generation 3 for both", r2, r3)
		}
		if n := len(tb.started("worker")); n != 3 {
			t.Errorf("%d workers started in all, want 3 (three HUPs and three clients made two reloads)", n)
		}
	})
}

func TestRollingReloadKeepsWithinMaxSurge(t *testing.T) {
	g := gen(3)
	g.Strategy, g.MaxSurge = Rolling, 1
	serving(t, options(g), func(t *testing.T, tb *testbed) {
		res := tb.reloadAsync()
		peak := 0
		for step := 0; step < 20; step++ {
			alive := len(tb.status().WorkerList)
			peak = max(peak, alive)
			starting := tb.workers(2, "starting")
			if len(starting) == 0 {
				break
			}
			if len(starting) > 1 {
				t.Fatalf("rolling with max_surge 1: %d new workers boot at once", len(starting))
			}
			tb.ready(starting...)
		}
		if r := tb.result(res); !r.OK {
			t.Fatalf("reload result %+v", r)
		}
		if peak > 4 {
			t.Errorf("up to %d worker processes alive, want at most workers + max_surge = 4", peak)
		}
	})
}

func TestRollingReloadWaitsForDrainingWorkersToExit(t *testing.T) {
	g := gen(2)
	g.Strategy, g.MaxSurge = Rolling, 1
	serving(t, options(g), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")
		tb.stubborn(old[0])
		res := tb.reloadAsync()
		first := tb.workers(2, "starting")
		if len(first) != 1 {
			t.Fatalf("%d new workers boot at once, want 1", len(first))
		}
		tb.ready(first...)
		// Slot 1's old worker drains and does not exit: it still counts.
		if n := tb.count(2, "starting"); n != 0 {
			t.Fatalf("a second new worker started while 3 processes are alive (limit 3)")
		}
		tb.wait(30 * time.Second) // graceful_timeout: SIGKILL
		if tb.alive(old[0]) {
			t.Fatal("the draining worker was not killed after graceful_timeout")
		}
		tb.ready(tb.workers(2, "starting")...)
		if r := tb.result(res); !r.OK {
			t.Fatalf("reload result %+v", r)
		}
	})
}

func TestScalingIsRefusedDuringAReload(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		res := tb.reloadAsync()
		tb.signal(syscall.SIGTTIN)
		if st := tb.status(); st.Workers != 2 || tb.count(2, "") != 2 {
			t.Errorf("TTIN during a reload changed the worker count: %d", st.Workers)
		}
		if err := tb.m.ControlHandler().Scale(context.Background(), 5); err == nil || !strings.Contains(err.Error(), "reload is in progress") {
			t.Errorf("baton scale during a reload: %v, want a refusal", err)
		}
		tb.ready(tb.workers(2, "starting")...)
		tb.result(res)
		tb.signal(syscall.SIGTTIN)
		added := tb.workers(2, "starting")
		if st := tb.status(); st.Workers != 3 || len(added) != 1 {
			t.Fatalf("TTIN after the reload: %d workers, %d starting; want 3 and 1", st.Workers, len(added))
		}
		if got := tb.proc(added[0]).env("BATON_WORKER_ID"); got != "3" {
			t.Errorf("new worker has BATON_WORKER_ID=%s, want 3", got)
		}
		tb.signal(syscall.SIGTTOU)
		tb.signal(syscall.SIGTTOU)
		tb.signal(syscall.SIGTTOU)
		if st := tb.status(); st.Workers != 1 {
			t.Errorf("after three TTOU from 3: %d workers, want the minimum of 1", st.Workers)
		}
	})
}

func TestShutdownDuringAReloadAbandonsItAndStopsBothGenerations(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")
		tb.stubborn(old[1])
		res := tb.reloadAsync()
		next := tb.workers(2, "starting")
		tb.signal(syscall.SIGTERM)
		r := tb.result(res)
		if r.OK || !strings.Contains(r.Reason, "abandoned") {
			t.Fatalf("reload result %+v, want abandoned", r)
		}
		for _, pid := range append(old, next...) {
			if got := tb.signals(pid); len(got) == 0 || got[0] != syscall.SIGTERM {
				t.Errorf("worker %d got %v, want TERM", pid, got)
			}
		}
		if !tb.alive(old[1]) {
			t.Fatal("the stubborn worker is gone before graceful_timeout")
		}
		tb.wait(30 * time.Second)
		if tb.alive(old[1]) {
			t.Fatal("the stubborn worker was not killed after graceful_timeout")
		}
		select {
		case <-tb.done:
		default:
			t.Fatal("the master did not exit once every worker was gone")
		}
	})
}

// A configuration that cannot be read (a FIFO nobody writes, a hung
// mount) fails the reload after a deadline, and meanwhile the master
// answers, reaps and replaces workers as ever.
func TestAConfigThatBlocksFailsTheReloadAndNeverStopsTheMaster(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		block := make(chan struct{})
		defer close(block)
		tb.mu.Lock()
		tb.block = block
		tb.mu.Unlock()
		res := tb.reloadAsync()
		if !tb.status().Reloading {
			t.Error("status does not say reloading while the config is read")
		}
		tb.signal(syscall.SIGHUP) // queued, not a second reader
		tb.exit(tb.workers(1, "ready")[0], 1)
		tb.wait(backoffFirst)
		if n := tb.count(1, "starting"); n != 1 {
			t.Fatalf("a crashed worker was not replaced while the config was read: %d starting", n)
		}
		tb.wait(configLoadTimeout)
		r := tb.result(res)
		if r.OK || !strings.Contains(r.Reason, "reading it took longer than 10s") {
			t.Fatalf("reload result %+v, want a failure after the deadline", r)
		}
		if n := tb.count(2, ""); n != 0 {
			t.Errorf("%d workers of a generation whose config was never read", n)
		}
	})
}

// `baton reload` answers once no old worker can accept a connection: it
// was made deaf (its unlisten removed every registration) or exited. Then
// a new connection reaches only the new code. One that can be neither
// (a select-based server ignoring its stop signal) holds the answer back
// for deafWait at the most.
func TestReloadAnswersOnceTheOldWorkersStopAccepting(t *testing.T) {
	g := gen(2)
	g.DrainUnlisten = true
	serving(t, options(g), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")
		tb.listen(42)
		tb.w.mu.Lock()
		// old[0] waits in epoll (it can be made deaf), old[1] in select
		// (no registration: only its exit tells); neither exits.
		tb.w.regs[old[0]] = []readiness.Registration{{Pid: old[0], EpollFD: 5, FD: 3, Inode: 42}}
		for _, pid := range old {
			tb.w.procs[pid].stubborn = true
		}
		tb.w.mu.Unlock()
		res := tb.reloadAsync()
		tb.ready(tb.workers(2, "starting")...)
		tb.wait(deafWaitLimit - 200*time.Millisecond)
		tb.noResult(res) // old[1] may still accept
		tb.wait(300 * time.Millisecond)
		if r := tb.result(res); !r.OK {
			t.Fatalf("reload: %+v", r)
		}

		// Made deaf, or exited: the answer comes at once.
		tb.wait(31 * time.Second) // graceful_timeout: generation 1's stubborn workers are killed
		if tb.alive(old[0]) || tb.alive(old[1]) {
			t.Fatal("generation 1's workers outlived graceful_timeout")
		}
		serving := tb.workers(2, "ready")
		tb.w.mu.Lock()
		tb.w.regs[serving[0]] = []readiness.Registration{{Pid: serving[0], EpollFD: 5, FD: 3, Inode: 42}}
		tb.w.procs[serving[0]].stubborn = true
		tb.w.mu.Unlock()
		res = tb.reloadAsync()
		tb.ready(tb.workers(3, "starting")...)
		tb.wait(50 * time.Millisecond)
		if r := tb.result(res); !r.OK {
			t.Fatalf("reload: %+v", r)
		}
		if !tb.alive(serving[0]) {
			t.Fatal("the deaf old worker exited; the test wants it running")
		}
	})
}

// A reload queued during another starts the moment that one succeeds,
// while the old workers may still accept: the first reload's answer waits
// for the old workers only, not for the queued reload's new ones, which
// serve newer code (it waited deafWaitLimit for them, and the test of
// queued reloads above failed when the old worker's exit came after the
// queued reload's first worker).
func TestReloadAnswerWaitsForOlderWorkersOnlyNotAQueuedReloads(t *testing.T) {
	serving(t, options(gen(1)), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")[0]
		tb.stubborn(old) // no registration to remove: only its exit tells
		first := tb.reloadAsync()
		queued := tb.reloadAsync()
		tb.ready(tb.workers(2, "starting")...)
		if n := tb.count(3, "starting"); n != 1 {
			t.Fatalf("%d workers of the queued reload starting, want 1", n)
		}
		tb.noResult(first) // the old worker may still accept
		tb.exit(old, 0)
		if r := tb.result(first); !r.OK || r.Generation != 2 {
			t.Fatalf("first reload: %+v, want generation 2 answered once the old worker exited", r)
		}
		tb.ready(tb.workers(3, "starting")...)
		if r := tb.result(queued); !r.OK || r.Generation != 3 {
			t.Fatalf("queued reload: %+v", r)
		}
	})
}
