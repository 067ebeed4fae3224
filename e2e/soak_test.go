package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// TestReloadsBackToBackRetainNothing reloads many times in a row and checks
// that the master's live heap does not grow with the number of reloads.
// A timer about a retired worker (its kill after graceful_timeout, its
// boot timeout) used to keep the worker, and with it its whole
// generation, alive for up to a minute after it exited: reloads back to
// back piled up generations, about 65 heap objects each. bench/run's soak
// found it; this is its short version.
func TestReloadsBackToBackRetainNothing(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, `metrics_bind = "127.0.0.1:0"`))
	b := controlled(t, d)
	addr := b.waitLog(t, "metrics endpoint listening", nil, waitTimeout).str("addr")
	b.waitReady(t, 2)

	reloads := func(n int) {
		t.Helper()
		for range n {
			c, err := control.Dial(b.Control)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), reloadTimeout)
			_, err = c.Call(ctx, control.Request{Cmd: control.CmdReload, Wait: true}, nil)
			cancel()
			c.Close()
			if err != nil {
				t.Fatalf("reload: %v", err)
			}
		}
	}
	// Heap objects once the retired workers have exited. The master
	// collects its garbage at the end of each reload (releaseMemory), so
	// what is counted is mostly live; read twice and keep the smaller, so
	// that the first scrape's own garbage does not count.
	heapObjects := func() float64 {
		t.Helper()
		deadline := time.Now().Add(waitTimeout)
		for len(workersOf(b.Pid)) > 2 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		least := -1.0
		for range 2 {
			f := scrape(t, "http://"+addr+"/metrics")["go_memstats_heap_objects"]
			if f == nil || len(f.Metric) == 0 {
				t.Fatal("/metrics lacks go_memstats_heap_objects")
			}
			if v := f.Metric[0].GetGauge().GetValue(); least < 0 || v < least {
				least = v
			}
		}
		return least
	}

	reloads(40) // past the first allocations of every code path
	before := heapObjects()
	reloads(120)
	after := heapObjects()
	t.Logf("heap objects: %.0f after 40 reloads, %.0f after 160", before, after)
	// Retaining each generation cost ~65 objects: 120 reloads ~7,800.
	// The heap's ordinary churn stays far below the limit.
	if after-before > 2500 {
		t.Errorf("the master's heap grew by %.0f objects over 120 reloads (from %.0f to %.0f): something keeps old generations alive",
			after-before, before, after)
	}
}
