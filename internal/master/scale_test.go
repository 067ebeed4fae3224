package master

import (
	"context"
	"strings"
	"syscall"
	"testing"

	"github.com/baton-pm/baton/internal/control"
)

// TestScaleAboveTheCeilingIsRefused: the control server refuses a scale
// request above control.MaxWorkers before it reaches the master; the
// master refuses it too, in case anything else ever calls it, and starts
// nothing.
func TestScaleAboveTheCeilingIsRefused(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		before := len(tb.started("worker"))
		for _, n := range []int{control.MaxWorkers + 1, 100000, int(^uint(0) >> 1)} {
			err := tb.m.ControlHandler().Scale(context.Background(), n)
			if err == nil || !strings.Contains(err.Error(), "1024 is baton's ceiling") {
				t.Errorf("scale %d: %v, want a refusal naming the ceiling", n, err)
			}
		}
		tb.settle()
		if st := tb.status(); st.Workers != 2 || len(tb.started("worker")) != before {
			t.Errorf("a refused scale changed the workers: target %d, %d started (had %d)",
				st.Workers, len(tb.started("worker")), before)
		}
	})
}

// TestTTINStopsAtTheCeiling: at control.MaxWorkers workers, TTIN starts
// no more; scale to exactly the ceiling is allowed.
func TestTTINStopsAtTheCeiling(t *testing.T) {
	serving(t, options(gen(control.MaxWorkers-1)), func(t *testing.T, tb *testbed) {
		if err := tb.m.ControlHandler().Scale(context.Background(), control.MaxWorkers); err != nil {
			t.Fatalf("scale to the ceiling: %v", err)
		}
		tb.ready(tb.workers(1, "starting")...)
		started := len(tb.started("worker"))
		tb.signal(syscall.SIGTTIN)
		if st := tb.status(); st.Workers != control.MaxWorkers || len(tb.started("worker")) != started {
			t.Errorf("TTIN at the ceiling: target %d, %d started (had %d); want %d and none",
				st.Workers, len(tb.started("worker")), started, control.MaxWorkers)
		}
	})
}
