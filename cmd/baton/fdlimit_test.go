package main

import (
	"strconv"
	"strings"
	"testing"

	"github.com/baton-pm/baton/internal/config"
	"github.com/baton-pm/baton/internal/control"
	"github.com/baton-pm/baton/internal/metrics"
)

func fdConfig(workers, binds int, metricsBind string) *config.Config {
	return &config.Config{Workers: workers, Binds: make([]config.Bind, binds), MetricsBind: metricsBind}
}

// The budget is made of the endpoints' caps and the workers' own needs:
// with the endpoints full, every worker of three generations still fits.
func TestMasterFDs(t *testing.T) {
	n := masterFDs(4, 1, true)
	if want := 4 * (3*fdsPerWorker + fdsPerBooting); n.workers != want {
		t.Errorf("workers' share %d, want %d", n.workers, want)
	}
	if want := 2 * (control.MaxConns + 2*metrics.MaxConns); n.endpoints != want {
		t.Errorf("endpoints' share %d, want %d (both caps, twice while one moves)", n.endpoints, want)
	}
	if want := fdsFixed + 1 + fdsMargin; n.fixed != want {
		t.Errorf("fixed share %d, want %d", n.fixed, want)
	}
	if got := n.total(); got != 521 {
		t.Errorf("4 workers, 1 listener, metrics on: %d descriptors, want 521", got)
	}
	if off := masterFDs(4, 1, false); off.endpoints != 2*control.MaxConns {
		t.Errorf("without metrics_bind the endpoints' share is %d, want the control socket's %d", off.endpoints, 2*control.MaxConns)
	}
	if a, b := masterFDs(10, 1, true).total(), masterFDs(11, 1, true).total(); b <= a {
		t.Errorf("one worker more needs %d -> %d descriptors", a, b)
	}
	if a, b := masterFDs(4, 1, true).total(), masterFDs(4, 3, true).total(); b != a+2 {
		t.Errorf("two listeners more: %d -> %d descriptors, want +2", a, b)
	}
}

func TestCheckFileLimit(t *testing.T) {
	cfg := fdConfig(4, 1, "127.0.0.1:9100")
	need := uint64(masterFDs(4, 1, true).total())
	if err := checkFileLimit(cfg, need, need+1); err != nil {
		t.Errorf("soft limit %d, exactly the need: %v", need, err)
	}
	if err := checkFileLimit(cfg, 1<<20, 1<<20); err != nil {
		t.Errorf("a large limit: %v", err)
	}
	err := checkFileLimit(cfg, need-1, need)
	if err == nil {
		t.Fatalf("soft limit %d, one under the need: accepted", need-1)
	}
	msg := err.Error()
	for _, want := range []string{
		"RLIMIT_NOFILE", "soft " + strconv.FormatUint(need-1, 10), "hard " + strconv.FormatUint(need, 10),
		"4 workers", strconv.FormatUint(need, 10) + " file descriptors", "ulimit -Hn", "LimitNOFILE=", "or run at most 3 workers",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error lacks %q: %s", want, msg)
		}
	}
	// When the endpoints and the master alone exceed the limit, no number
	// of workers is suggested.
	if err := checkFileLimit(cfg, 128, 128); err == nil || !strings.Contains(err.Error(), "no number of workers fits") {
		t.Errorf("soft limit 128: %v", err)
	}
	if err := checkFileLimit(fdConfig(1, 1, "127.0.0.1:9100"), 128, 128); err == nil {
		t.Error("soft limit 128 accepted for one worker with the metrics endpoint")
	}
	// Without the metrics endpoint less is needed: the same limit fits.
	if err := checkFileLimit(fdConfig(4, 1, ""), need-1, need); err != nil {
		t.Errorf("without metrics_bind: %v", err)
	}
}

// The test process's own limit, like any usual one, fits a small
// configuration; reading it changes nothing.
func TestCheckFileLimitNow(t *testing.T) {
	before, hard, ok := fileLimit()
	if !ok {
		t.Fatal("RLIMIT_NOFILE cannot be read")
	}
	t.Logf("RLIMIT_NOFILE: soft %d, hard %d", before, hard)
	if before < 1024 {
		t.Fatalf("the tests need a soft RLIMIT_NOFILE of at least 1024 (ulimit -n); this one is %d", before)
	}
	if err := checkFileLimitNow(fdConfig(2, 1, "127.0.0.1:0")); err != nil {
		t.Error(err)
	}
	if after, _, _ := fileLimit(); after != before {
		t.Errorf("the soft limit changed from %d to %d", before, after)
	}
}
