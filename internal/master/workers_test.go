package master

import (
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/readiness"
)

func TestCrashedWorkerIsReplacedAfterABackoffThatGrowsAndResets(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		// Each replacement gets ready before it crashes: readiness is no
		// reason to start the backoff afresh, a life of backoffReset is.
		crash := func() int {
			tb.ready(tb.workers(1, "starting")...)
			pid := tb.workers(1, "")[0]
			tb.exit(pid, 1, "boom")
			return pid
		}
		startedAfter := func(d time.Duration) bool {
			before := len(tb.started("worker"))
			tb.wait(d)
			return len(tb.started("worker")) > before
		}
		// 100 ms, then 200 ms, then 400 ms for crashes in a row.
		for i, delay := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
			crash()
			if startedAfter(delay - time.Millisecond) {
				t.Fatalf("crash %d: replaced before its %v backoff", i+1, delay)
			}
			if !startedAfter(time.Millisecond) {
				t.Fatalf("crash %d: not replaced after its %v backoff", i+1, delay)
			}
		}
		st := tb.status()
		if len(st.Degraded) != 1 || !strings.Contains(st.Degraded[0], "slot 1: 3 crashes in a row") {
			t.Errorf("degraded = %q, want slot 1 crash-looping", st.Degraded)
		}
		if st.WorkerList[0].Restarts != 3 {
			t.Errorf("slot 1 restarts = %d, want 3", st.WorkerList[0].Restarts)
		}
		// A worker that lived backoffReset starts the backoff afresh.
		tb.ready(tb.workers(1, "starting")...)
		tb.wait(backoffReset)
		crash()
		if !startedAfter(100 * time.Millisecond) {
			t.Fatal("a crash after 10 s of life did not restart from the 100 ms backoff")
		}
		tb.ready(tb.workers(1, "starting")...)
		if st := tb.status(); len(st.Degraded) != 0 {
			t.Errorf("degraded = %q after a healthy worker", st.Degraded)
		}
	})
}

// Ruby prints the error first and 39 lines of backtrace after it: the
// report keeps the first 10 lines and the last 20.
func TestCrashReportKeepsTheWorkersFirstAndLastStderrLines(t *testing.T) {
	serving(t, options(gen(1)), func(t *testing.T, tb *testbed) {
		res := tb.reloadAsync()
		next := tb.workers(2, "starting")
		lines := make([]string, 40)
		for i := range lines {
			lines[i] = fmt.Sprintf("line %d", i+1)
		}
		tb.exit(next[0], 2, lines...)
		r := tb.result(res)
		want := slices.Concat(lines[:10], []string{"... 10 lines omitted ..."}, lines[20:])
		if !slices.Equal(r.Stderr, want) {
			t.Errorf("stderr in the result = %q, want %q", r.Stderr, want)
		}
	})
}

func TestAutoReadinessWaitsUntilTheWorkerWaitsOnAListener(t *testing.T) {
	g := gen(1)
	g.Ready = ReadyMode{Kind: ReadyAuto}
	inBubble(t, options(g), func(t *testing.T, tb *testbed) {
		pid := tb.workers(1, "starting")[0]
		tb.send(pid, "READY=1") // gunicorn's arbiter does this too early
		tb.wait(time.Second)
		if n := tb.count(1, "ready"); n != 0 {
			t.Fatal("auto mode took READY=1, or became ready without the probe")
		}
		tb.w.mu.Lock()
		tb.w.waiting[pid] = true
		tb.w.mu.Unlock()
		tb.wait(autoProbeInterval)
		if n := tb.count(1, "ready"); n != 1 {
			t.Fatal("not ready one probe interval after it waits on a listener")
		}
	})
}

func TestDelayReadiness(t *testing.T) {
	g := gen(1)
	g.Ready = ReadyMode{Kind: ReadyDelay, Delay: 3 * time.Second}
	inBubble(t, options(g), func(t *testing.T, tb *testbed) {
		tb.wait(3*time.Second - time.Millisecond)
		if tb.count(1, "ready") != 0 {
			t.Fatal("ready before the delay")
		}
		tb.wait(time.Millisecond)
		if tb.count(1, "ready") != 1 {
			t.Fatal("not ready after the delay")
		}
	})
}

func TestWatchdogKillsAndReplacesAWorkerThatFellSilent(t *testing.T) {
	g := gen(2)
	g.WorkerTimeout = 5 * time.Second
	serving(t, options(g), func(t *testing.T, tb *testbed) {
		pids := tb.workers(1, "ready")
		pinger, silent := pids[0], pids[1]
		tb.stubborn(pinger)
		tb.send(pinger, "WATCHDOG=1")
		tb.wait(4 * time.Second)
		tb.send(pinger, "WATCHDOG=1")
		tb.wait(4 * time.Second)
		if got := tb.signals(pinger); len(got) != 0 {
			t.Fatalf("a worker that pinged in time got %v", got)
		}
		tb.wait(time.Second + time.Millisecond)
		if got := tb.signals(pinger); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
			t.Fatalf("a worker silent for its timeout got %v, want TERM", got)
		}
		tb.wait(g.GracefulTimeout)
		if tb.alive(pinger) {
			t.Fatal("the hung worker was not killed after graceful_timeout")
		}
		tb.wait(backoffFirst)
		if n := tb.count(1, "starting"); n != 1 {
			t.Fatalf("%d replacements starting, want 1", n)
		}
		if got := tb.signals(silent); len(got) != 0 {
			t.Errorf("a worker that never pinged got %v; it is never watched", got)
		}
		if env := tb.proc(silent).env("WATCHDOG_USEC"); env != "5000000" {
			t.Errorf("WATCHDOG_USEC=%q, want 5000000", env)
		}
	})
}

func TestMemoryLimitReplacesAWorkerSuccessorFirst(t *testing.T) {
	g := gen(2)
	g.MaxWorkerMemory = 100 << 20
	serving(t, options(g), func(t *testing.T, tb *testbed) {
		pids := tb.workers(1, "ready")
		tb.w.mu.Lock()
		tb.w.rss[pids[0]], tb.w.rss[pids[1]] = 200<<20, 50<<20
		tb.w.mu.Unlock()
		tb.wait(memoryCheckEvery)
		succ := tb.workers(1, "starting")
		if len(succ) != 1 || tb.proc(succ[0]).env("BATON_WORKER_ID") != "1" {
			t.Fatalf("successors %v, want one in slot 1", succ)
		}
		if n := tb.count(1, "ready"); n != 2 {
			t.Fatalf("%d ready workers while the successor boots, want 2: capacity must not dip", n)
		}
		tb.wait(10 * memoryCheckEvery) // no second successor while one boots
		if n := len(tb.started("worker")); n != 3 {
			t.Fatalf("%d workers started, want 3", n)
		}
		tb.ready(succ...)
		if got := tb.signals(pids[0]); len(got) == 0 || got[0] != syscall.SIGTERM {
			t.Errorf("the big worker got %v once its successor was ready, want TERM", got)
		}
		if got := tb.signals(pids[1]); len(got) != 0 {
			t.Errorf("the small worker got %v", got)
		}
	})
}

// Turning max_worker_memory off by a reload once made the limit loop
// replace every worker every second: it compared with the new limit, 0.
func TestMemoryLimitTurnedOffByAReloadStopsReplacements(t *testing.T) {
	g := gen(2)
	g.MaxWorkerMemory = 1 << 30
	serving(t, options(g), func(t *testing.T, tb *testbed) {
		off := options(gen(2))
		tb.setConfig(off, nil)
		res := tb.reloadAsync()
		next := tb.workers(2, "starting")
		tb.w.mu.Lock()
		for _, pid := range next {
			tb.w.rss[pid] = 10 << 20
		}
		tb.w.mu.Unlock()
		tb.ready(next...)
		tb.result(res)
		tb.wait(10 * memoryCheckEvery)
		if n := len(tb.started("worker")); n != 4 {
			t.Fatalf("%d workers started, want 4: nothing is replaced with no limit", n)
		}
		tb.w.mu.Lock()
		reads := tb.w.rssRead
		tb.w.mu.Unlock()
		tb.wait(10 * memoryCheckEvery)
		tb.w.mu.Lock()
		defer tb.w.mu.Unlock()
		if tb.w.rssRead != reads {
			t.Errorf("memory still read every second with no limit: %d more reads", tb.w.rssRead-reads)
		}
	})
}

func TestMemoryLimitSetByAReloadStartsTheChecks(t *testing.T) {
	serving(t, options(gen(1)), func(t *testing.T, tb *testbed) {
		on := gen(1)
		on.MaxWorkerMemory = 100 << 20
		tb.setConfig(options(on), nil)
		res := tb.reloadAsync()
		next := tb.workers(2, "starting")
		tb.ready(next...)
		tb.result(res)
		tb.w.mu.Lock()
		tb.w.rss[next[0]] = 200 << 20
		tb.w.mu.Unlock()
		tb.wait(memoryCheckEvery)
		if n := tb.count(2, "starting"); n != 1 {
			t.Fatalf("%d successors after the limit was set by a reload, want 1", n)
		}
	})
}

func TestAgeLimitReplacesAWorkerSuccessorFirst(t *testing.T) {
	g := gen(1)
	g.MaxWorkerAge = time.Hour
	serving(t, options(g), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")[0]
		tb.wait(time.Hour - time.Second)
		if tb.count(1, "starting") != 0 {
			t.Fatal("replaced before max_worker_age")
		}
		tb.wait(time.Second)
		succ := tb.workers(1, "starting")
		if len(succ) != 1 || len(tb.signals(old)) != 0 {
			t.Fatalf("at max_worker_age: successors %v, old got %v; want one successor and the old serving", succ, tb.signals(old))
		}
		tb.ready(succ...)
		if tb.alive(old) {
			t.Error("the old worker was not retired once its successor was ready")
		}
	})
}

// The registrations are removed from a thread of the master's own, or,
// where a sandbox refuses that thread its private file table, by helper
// processes, and the master then says so and keeps to them.
func TestReplacedWorkerStopsAcceptingBeforeItsStopSignal(t *testing.T) {
	for _, noPrivateTable := range []bool{false, true} {
		t.Run(fmt.Sprintf("noPrivateTable=%v", noPrivateTable), func(t *testing.T) {
			replacedWorkerStopsAccepting(t, noPrivateTable)
		})
	}
}

func replacedWorkerStopsAccepting(t *testing.T, noPrivateTable bool) {
	g := gen(1)
	g.DrainUnlisten = true
	serving(t, options(g), func(t *testing.T, tb *testbed) {
		tb.w.mu.Lock()
		tb.w.noPrivateTable = noPrivateTable
		tb.w.mu.Unlock()
		old := tb.workers(1, "ready")[0]
		// Its tree has three epoll registrations of listeners (a
		// gunicorn-like arbiter with two workers).
		tb.w.mu.Lock()
		tb.w.regs[old] = []readiness.Registration{
			{Pid: old + 100, EpollFD: 5, FD: 3, Inode: 42}, {Pid: old + 101, EpollFD: 5, FD: 3, Inode: 42},
			{Pid: old + 102, EpollFD: 7, FD: 3, Inode: 42}, {Pid: old + 102, EpollFD: 7, FD: 4, Inode: 99},
		}
		tb.w.mu.Unlock()
		ls := tb.listen(42)
		res := tb.reloadAsync()
		tb.ready(tb.workers(2, "starting")...)
		tb.result(res)
		if got := tb.signals(old); len(got) != 0 {
			t.Fatalf("old worker got %v before readPause", got)
		}
		tb.wait(readPause)
		if got := tb.signals(old); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
			t.Fatalf("old worker got %v after readPause, want TERM", got)
		}
		// One group for every registration of a listener the master
		// holds; the registration of an unknown socket is left alone.
		groups := tb.unlistened()
		if len(groups) != 1 {
			t.Fatalf("%d groups of registrations removed, want 1 for the worker's whole tree", len(groups))
		}
		group := groups[0]
		if len(group) != 3 {
			t.Fatalf("removed %+v, want the 3 registrations of the listener", group)
		}
		for _, tg := range group {
			if tg.ListenerFD != ls[0].FD() || tg.FD != 3 {
				t.Errorf("target %+v, want fd 3 as the master's listener %d", tg, ls[0].FD())
			}
		}
		if tb.m.unlistenByHelper != noPrivateTable {
			t.Errorf("unlistenByHelper = %v with noPrivateTable %v", tb.m.unlistenByHelper, noPrivateTable)
		}
	})
}

// Whatever a worker leaves behind when it exits, crashed or retired, is
// killed (its cgroup, or its orphans), and its pidfd and cgroup released.
func TestAnExitedWorkersTreeIsKilledAndReleased(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		pids := tb.workers(1, "ready")
		tb.exit(pids[0], 1)
		res := tb.reloadAsync()
		tb.ready(tb.workers(2, "starting")...)
		tb.result(res)
		for _, pid := range pids {
			p := tb.proc(pid)
			tb.w.mu.Lock()
			kills, released := p.treeKills, p.released
			tb.w.mu.Unlock()
			if kills != 1 || !released {
				t.Errorf("worker %d: tree killed %d times, released %v; want once, and released", pid, kills, released)
			}
		}
	})
}

// A worker that outlives graceful_timeout has its whole tree killed, not
// only its process group signalled.
func TestGracefulTimeoutKillsTheWholeTree(t *testing.T) {
	serving(t, options(gen(1)), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")[0]
		tb.stubborn(old)
		res := tb.reloadAsync()
		tb.ready(tb.workers(2, "starting")...)
		tb.wait(deafWaitLimit) // the stubborn old worker may still accept: the answer waits
		tb.result(res)
		tb.wait(30*time.Second - deafWaitLimit - time.Millisecond)
		if !tb.alive(old) {
			t.Fatal("killed before graceful_timeout")
		}
		tb.wait(time.Millisecond)
		p := tb.proc(old)
		tb.w.mu.Lock()
		kills := p.treeKills
		tb.w.mu.Unlock()
		if tb.alive(old) || kills < 1 {
			t.Fatalf("after graceful_timeout: alive %v, tree kills %d", tb.alive(old), kills)
		}
	})
}

// One file table holds one listener per fd number: processes of one tree
// that hold different listeners at the same number get a group each.
func TestReplacedWorkerWithTwoListenersAtOneFdNumberGetsTwoGroups(t *testing.T) {
	for _, noPrivateTable := range []bool{false, true} {
		t.Run(fmt.Sprintf("noPrivateTable=%v", noPrivateTable), func(t *testing.T) {
			twoListenersAtOneNumber(t, noPrivateTable)
		})
	}
}

func twoListenersAtOneNumber(t *testing.T, noPrivateTable bool) {
	g := gen(1)
	g.DrainUnlisten = true
	serving(t, options(g), func(t *testing.T, tb *testbed) {
		tb.w.mu.Lock()
		tb.w.noPrivateTable = noPrivateTable
		tb.w.mu.Unlock()
		old := tb.workers(1, "ready")[0]
		tb.w.mu.Lock()
		tb.w.regs[old] = []readiness.Registration{
			{Pid: old, EpollFD: 5, FD: 3, Inode: 42}, {Pid: old, EpollFD: 5, FD: 4, Inode: 43},
			{Pid: old + 1, EpollFD: 5, FD: 3, Inode: 43}, {Pid: old + 2, EpollFD: 6, FD: 3, Inode: 42},
		}
		tb.w.mu.Unlock()
		tb.listen(42, 43)
		res := tb.reloadAsync()
		tb.ready(tb.workers(2, "starting")...)
		tb.result(res)
		tb.wait(readPause)
		if got := tb.signals(old); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
			t.Fatalf("old worker got %v after readPause, want TERM", got)
		}
		groups := tb.unlistened()
		if len(groups) != 2 {
			t.Fatalf("%d groups of registrations removed, want 2", len(groups))
		}
		total := 0
		for _, group := range groups {
			total += len(group)
			at := map[int]int{}
			for _, tg := range group {
				if l, ok := at[tg.FD]; ok && l != tg.ListenerFD {
					t.Errorf("one group holds two listeners at fd %d: %+v", tg.FD, group)
				}
				at[tg.FD] = tg.ListenerFD
			}
		}
		if total != 4 {
			t.Errorf("the helpers remove %d registrations, want 4", total)
		}
	})
}
