package master

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/listener"
)

// withListener gives the master a real listener, as Run's open would;
// closed when the test ends.
func withListener(t *testing.T, tb *testbed) *listener.Listener {
	t.Helper()
	ls, err := listener.Open([]listener.Spec{{Name: "web", Network: "tcp", Address: "127.0.0.1:0", Backlog: 8}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.CloseAll(ls) })
	if err := tb.m.call(context.Background(), func() { tb.m.listeners, tb.m.listenerInodes = ls, []uint64{42} }); err != nil {
		t.Fatal(err)
	}
	return ls[0]
}

// listensItself makes pid's tree listen on addrs of its own.
func listensItself(tb *testbed, pid int, addrs ...string) {
	tb.w.mu.Lock()
	tb.w.foreign[pid] = addrs
	tb.w.mu.Unlock()
}

func workerByPid(tb *testbed, pid int) (foreign []string) {
	for _, w := range tb.status().WorkerList {
		if w.Pid == pid {
			return w.ForeignListeners
		}
	}
	tb.t.Fatalf("no worker %d in status", pid)
	return nil
}

// puma with a -b that is not baton's bind: the worker that got the port
// serves there, and status shows it; the other crash-loops with
// EADDRINUSE, and its crash report and status say who holds the address
// and what to do.
func TestForeignListenerIsShownAndExplainsTheSiblingsEADDRINUSE(t *testing.T) {
	inBubble(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		l := withListener(t, tb)
		pids := tb.workers(1, "starting")
		holder := pids[0]
		listensItself(tb, holder, "0.0.0.0:9292")
		tb.ready(holder)
		tb.wait(foreignScanEvery)
		if got := workerByPid(tb, holder); !slices.Equal(got, []string{"0.0.0.0:9292"}) {
			t.Fatalf("status shows foreign listeners %q for the worker that bound 9292", got)
		}
		crashRepeatedly(t, tb, 2, crashLoopAfter)
		st := tb.status()
		if len(st.Degraded) != 1 {
			t.Fatalf("degraded = %q, want slot 2", st.Degraded)
		}
		for _, want := range []string{
			"slot 2: 3 crashes in a row: the worker in slot 1 (pid " + strconv.Itoa(holder) + ") listens on 0.0.0.0:9292 itself",
			"baton's listener is fd 3 (web, " + l.Addr + "): make the server use it (puma: -b must match the bind",
		} {
			if !strings.Contains(st.Degraded[0], want) {
				t.Errorf("degraded entry %q lacks %q", st.Degraded[0], want)
			}
		}
		if got := workerByPid(tb, booting(tb, 2)); len(got) != 0 {
			t.Errorf("the crash-looping worker shows foreign listeners %q", got)
		}
	})
}

// A reload whose new worker cannot bind an address an old worker holds:
// the failure's reason says so.
func TestReloadFailureWithEADDRINUSENamesTheHolder(t *testing.T) {
	serving(t, options(gen(1)), func(t *testing.T, tb *testbed) {
		withListener(t, tb)
		old := tb.workers(1, "ready")[0]
		listensItself(tb, old, "0.0.0.0:9292")
		tb.wait(foreignRescanServing + foreignScanEvery)
		res := tb.reloadAsync()
		tb.exit(tb.workers(2, "starting")[0], 1,
			"binder.rb:341:in `initialize': Address already in use - bind(2) for \"0.0.0.0\" port 9292 (Errno::EADDRINUSE)")
		r := tb.result(res)
		if r.OK || !strings.Contains(r.Reason, "exited during boot") ||
			!strings.Contains(r.Reason, "the worker in slot 1 (pid "+strconv.Itoa(old)+") listens on 0.0.0.0:9292 itself") {
			t.Errorf("reload result %+v, want its reason to name the old worker listening on 9292", r)
		}
		if lr := tb.status().LastReload; lr == nil || lr.Reason != r.Reason {
			t.Errorf("status' last reload %+v, want the same reason", lr)
		}
	})
}

// No hint without both: a crash with EADDRINUSE while no worker listens
// on a socket of its own, or a worker of its own socket and a crash for
// another reason.
func TestNoBindHintWithoutBothAForeignListenerAndEADDRINUSE(t *testing.T) {
	inBubble(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		pids := tb.workers(1, "starting")
		tb.ready(pids[0])
		crashRepeatedly(t, tb, 2, crashLoopAfter) // "Address already in use", nobody holds it
		if st := tb.status(); len(st.Degraded) != 1 || strings.Contains(st.Degraded[0], "itself") {
			t.Errorf("degraded = %q, want slot 2 without a hint", st.Degraded)
		}
		listensItself(tb, pids[0], "127.0.0.1:9000")
		tb.wait(foreignRescanServing + foreignScanEvery)
		for range 3 {
			tb.exit(booting(tb, 2), 1, "ImportError: no module named app")
			tb.wait(4 * time.Second) // the backoff, short of backoffReset
		}
		if st := tb.status(); len(st.Degraded) != 1 || strings.Contains(st.Degraded[0], "itself") {
			t.Errorf("degraded = %q after crashes of another kind, want no hint", st.Degraded)
		}
	})
}

// Draining workers are not scanned; a serving worker only every
// foreignRescanServing.
func TestForeignScansAreRareForServingWorkers(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		tb.wait(2 * foreignScanEvery) // the scan after ready
		tb.w.mu.Lock()
		before := tb.w.foreignScans
		tb.w.mu.Unlock()
		tb.wait(foreignRescanServing - 3*foreignScanEvery)
		tb.w.mu.Lock()
		after := tb.w.foreignScans
		tb.w.mu.Unlock()
		t.Logf("scans %d -> %d", before, after)
		if after != before {
			t.Errorf("%d scans of serving workers within %v", after-before, foreignRescanServing)
		}
	})
}
