package e2e

import (
	"testing"
	"time"
)

// A retiring worker with many epoll sets is made deaf in one go, from a
// thread of the master's own (no helper process, let alone one per epoll
// set: issue 11's 150 sets cost 150 forks), and the reload still loses no
// request.
func TestWorkerWithManyEpollSetsIsMadeDeafInOneGo(t *testing.T) {
	t.Parallel()
	const workers, sets = 2, 150
	d := newDeployment(t, workerConfig(workers, "", "-epoll-sets", "150"))
	b := startBaton(t, "run", "-c", d.path, "--log-level", "debug")
	servingGenerations(t, b.Addr(), workers)

	l := startLoad(loadOptions{addr: b.Addr(), concurrency: 2, maxDuration: time.Minute})
	if r := b.reload(t, 2); !r.OK {
		t.Fatalf("reload: %s", describeReload(&r))
	}
	deaf := b.waitLogs(t, "retiring worker no longer accepts", nil, workers, reloadTimeout)
	b.waitWorkers(t, workers)
	assertNoFailures(t, l.stop())

	for _, r := range deaf {
		// fd 3 in each of the sets, and the listener's duplicate in Go's poller.
		if n := r.int("registrations"); n < sets+1 {
			t.Errorf("%d registrations, want at least %d: %s", n, sets+1, r)
		}
		if r.int("removed") != r.int("registrations") {
			t.Errorf("removed %d of %d registrations: %s", r.int("removed"), r.int("registrations"), r)
		}
		if r.str("by_helper") != "false" {
			t.Errorf("removed by helper processes (by_helper %q), want from a thread of the master's own: %s", r.str("by_helper"), r)
		}
		// From its successor's readiness to the removal: the scan of
		// /proc and the removal itself.
		succ := b.logs("worker ready", func(s record) bool { return s.int("generation") == 2 && s.int("slot") == r.int("slot") })
		if len(succ) == 1 {
			t.Logf("slot %d: %d registrations removed %v after its successor was ready",
				r.int("slot"), r.int("removed"), r.time(t).Sub(succ[0].time(t)))
		}
	}
	if warned := b.logs("could not make a retiring worker stop accepting", nil); len(warned) != 0 {
		t.Errorf("a removal failed: %s", warned[0])
	}
	if fallback := b.logs("cannot remove a retiring worker's listener registrations from a thread of the master's own; "+
		"a helper process does it from now on (one fork and exec of baton per retiring worker)", nil); len(fallback) != 0 {
		t.Errorf("fell back to helper processes on this machine: %s", fallback[0])
	}
}
