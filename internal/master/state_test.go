package master

import (
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// wantState checks status's state and its count of ready workers.
func wantState(t *testing.T, tb *testbed, state string, ready int) {
	t.Helper()
	st := tb.status()
	if st.State != state || st.ReadyWorkers != ready {
		t.Errorf("state %q with %d ready workers, want %q with %d (workers: %+v)", st.State, st.ReadyWorkers, state, ready, st.WorkerList)
	}
}

// booting is the pid of slot's booting worker, 0 if there is none.
func booting(tb *testbed, slot int) int {
	for _, w := range tb.status().WorkerList {
		if w.Slot == slot && w.State == "starting" {
			return w.Pid
		}
	}
	return 0
}

// crashRepeatedly makes slot's booting worker exit n times in a row,
// each replacement crashing as soon as its backoff has started it.
func crashRepeatedly(t *testing.T, tb *testbed, slot, n int) {
	t.Helper()
	for i := range n {
		pid := booting(tb, slot)
		if pid == 0 {
			t.Fatalf("no booting worker in slot %d to crash", slot)
		}
		tb.exit(pid, 1, "Address already in use")
		tb.wait(backoff(i + 1))
	}
}

func TestStateIsStartingUntilEverySlotWasReadyOnce(t *testing.T) {
	inBubble(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		wantState(t, tb, control.StateStarting, 0)
		pids := tb.workers(1, "starting")
		tb.ready(pids[0])
		wantState(t, tb, control.StateStarting, 1)
		tb.ready(pids[1])
		wantState(t, tb, control.StateServing, 2)
	})
}

// The new user's outage: both slots crash-loop, nothing is ready, and
// the state said "serving".
func TestStateIsDownWhenEverySlotCrashLoops(t *testing.T) {
	inBubble(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		crashRepeatedly(t, tb, 1, crashLoopAfter)
		crashRepeatedly(t, tb, 2, crashLoopAfter)
		wantState(t, tb, control.StateDown, 0)
	})
}

// Serving once, then every worker crashed: down, even before their slots
// count as crash-looping.
func TestStateIsDownWhenNoWorkerIsReadyAfterServing(t *testing.T) {
	serving(t, options(gen(1)), func(t *testing.T, tb *testbed) {
		tb.exit(tb.workers(1, "ready")[0], 1, "boom")
		wantState(t, tb, control.StateDown, 0)
		tb.wait(time.Second)
		tb.ready(tb.workers(1, "starting")...)
		wantState(t, tb, control.StateServing, 1)
	})
}

// puma's mismatched bind: slot 1 serves, slot 2 crash-loops.
func TestStateIsDegradedWhenSomeSlotsCrashLoopWhileOthersServe(t *testing.T) {
	inBubble(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		tb.ready(tb.workers(1, "starting")[0])
		crashRepeatedly(t, tb, 2, crashLoopAfter)
		wantState(t, tb, control.StateDegraded, 1)
		if st := tb.status(); len(st.Degraded) != 1 {
			t.Errorf("degraded = %q, want slot 2", st.Degraded)
		}
	})
}

// After serving, a slot whose worker crashed once and boots again is not
// crash-looping, but it does not serve either.
func TestStateIsDegradedWhileASlotHasNoReadyWorker(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		tb.exit(tb.workers(1, "ready")[1], 1, "boom")
		wantState(t, tb, control.StateDegraded, 1)
		tb.wait(time.Second)
		tb.ready(tb.workers(1, "starting")...)
		wantState(t, tb, control.StateServing, 2)
	})
}

func TestStateKeepsReloadingStoppedAndStopping(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		res := tb.reloadAsync()
		wantState(t, tb, control.StateReloading, 2)
		tb.ready(tb.workers(2, "starting")...)
		if r := tb.result(res); !r.OK {
			t.Fatalf("reload: %+v", r)
		}
		wantState(t, tb, control.StateServing, 2)

		tb.signal(syscall.SIGWINCH)
		wantState(t, tb, control.StateStopped, 0)
	})
	serving(t, options(gen(1)), func(t *testing.T, tb *testbed) {
		tb.stubborn(tb.workers(1, "ready")[0])
		tb.signal(syscall.SIGTERM)
		if st := tb.status(); st.State != control.StateStopping {
			t.Errorf("state %q during a graceful shutdown, want %q", st.State, control.StateStopping)
		}
	})
}
