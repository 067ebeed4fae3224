package e2e

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
	"github.com/baton-pm/baton/internal/metrics"
)

// limitedBaton writes a script that runs baton with RLIMIT_NOFILE set to
// ulimit's arguments (say "-n 512": soft and hard), for batonSpec.bin. The
// script execs baton, so baton keeps its pid.
func limitedBaton(t *testing.T, ulimit string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "baton-limited")
	script := fmt.Sprintf("#!/bin/sh\nulimit %s || exit 97\nexec %q \"$@\"\n", ulimit, batonBin)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// fileLimits reads a process's soft and hard RLIMIT_NOFILE.
func fileLimits(t *testing.T, pid int) (soft, hard int) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			soft, _ = strconv.Atoi(f[0])
			hard, _ = strconv.Atoi(f[1])
			return soft, hard
		}
	}
	t.Fatalf("no open files line in /proc/%d/limits", pid)
	return 0, 0
}

func fdCount(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// flood opens n connections to addr and keeps them open until the test
// ends. With request, each sends one request and then sits idle as a
// keep-alive connection (held up to the server's idle timeout); without, it
// sends nothing (held up to its read-header timeout). The request is for a
// path the endpoint answers 404 without asking the master: the flood is
// about connections, not the master's loop. Connections the server closes
// or resets are not an error: shedding them is the point.
func flood(t *testing.T, addr string, n int, request bool) {
	t.Helper()
	for i := range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if errors.Is(err, syscall.ECONNRESET) {
			continue // refused before connect(2) returned
		}
		if err != nil {
			t.Fatalf("connection %d of the flood: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		if request {
			_, _ = fmt.Fprintf(c, "GET /flood HTTP/1.1\r\nHost: flood\r\n\r\n")
		}
	}
}

// TestMetricsFloodCannotStarveWorkers: under a low RLIMIT_NOFILE (512, soft
// and hard, so baton cannot raise it), 500 idle connections to the metrics
// endpoint and then 500 idle keep-alive ones hold at most the endpoint's cap
// of the master's descriptors; meanwhile a crashed worker is replaced and
// serves, and /readyz answers. Before the cap, 500 connections took the
// master to its limit and the replacement failed with "too many open files".
func TestMetricsFloodCannotStarveWorkers(t *testing.T) {
	t.Parallel()
	const limit, n = 512, 500
	b := launch(t, batonSpec{
		bin:  limitedBaton(t, "-n "+strconv.Itoa(limit)),
		args: []string{"run", "-w", "2", "--metrics-bind", "127.0.0.1:0", "--", testworkerBin},
	})
	b.waitStarted(t)
	maddr := b.waitLog(t, "metrics endpoint listening", nil, waitTimeout).str("addr")
	b.waitReady(t, 2)
	collectWorkers(t, b.Addr(), 2, waitTimeout)
	soft, hard := fileLimits(t, b.Pid)
	t.Logf("the master's RLIMIT_NOFILE: soft %d, hard %d", soft, hard)
	if hard != limit || soft < limit-1 {
		t.Fatalf("the master runs with soft %d, hard %d; want hard %d and soft raised to it (less one)", soft, hard, limit)
	}
	base := fdCount(t, b.Pid)
	// The harness's status call and a probe may hold one each meanwhile.
	ceiling := base + metrics.MaxConns + 4

	check := func(what string) {
		t.Helper()
		// Every connection is taken off the accept queue at once, to be
		// served or closed: none waits there for a slot.
		if !waitUntil(waitTimeout, func() bool { q, ok := acceptQueue(maddr); return ok && q == 0 }) {
			q, _ := acceptQueue(maddr)
			t.Errorf("%s: %d connections still wait in the metrics endpoint's accept queue", what, q)
		}
		got := fdCount(t, b.Pid)
		t.Logf("%s: the master holds %d descriptors (%d before the flood, at most %d allowed)", what, got, base, ceiling)
		if got > ceiling {
			t.Errorf("%s: the master holds %d descriptors, over %d before the flood + the cap %d", what, got, base, metrics.MaxConns)
		}
	}

	// Silent connections: the master closes them after its read-header
	// timeout (5s), so the worker is killed well within it.
	flood(t, maddr, n, false)
	check("after 500 silent connections")
	victim := b.workerPid(t, 1)
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Keep-alive connections idle after one request: held for the idle
	// timeout (60s), longer than this test.
	flood(t, maddr, n, true)
	check("after 500 more, idle after a request each")

	replacement := b.waitSlot(t, 1, "a restarted worker", func(w control.Worker) bool {
		return w.Pid != victim && w.Restarts == 1 && w.State == "ready"
	}).Pid
	if seen := collectWorkers(t, b.Addr(), 2, waitTimeout); len(seen) != 2 || seen[replacement].Pid != replacement {
		t.Errorf("the replacement %d does not serve: answers from %v", replacement, seen)
	}
	// A probe during the flood is answered: it takes the slot of the
	// longest-idle connection.
	r, err := get(maddr, "/readyz", 5*time.Second)
	if err != nil || r.status != http.StatusOK {
		t.Errorf("/readyz during the flood: %d %q, %v; want 200", r.status, r.body, err)
	}
	check("after the replacement")

	log := b.Stderr()
	for _, bad := range []string{"too many open files", "cannot start worker", "cannot open a notify socket"} {
		if strings.Contains(log, bad) {
			t.Errorf("the log says %q:\n%s", bad, lastLines(log, 20))
		}
	}
	if len(b.logs("metrics endpoint: connection limit reached; closing the longest-idle connections (or new ones while all are in a request)", nil)) == 0 {
		t.Error("no warning that the metrics endpoint shed connections")
	}
}

// TestFileLimitTooLowForWorkers: a configuration whose master could run out
// of descriptors is refused at start, exit 2, with the numbers and the fix.
func TestFileLimitTooLowForWorkers(t *testing.T) {
	t.Parallel()
	res := runToExit(t, batonSpec{
		bin:  limitedBaton(t, "-n 256"),
		args: []string{"run", "-w", "4", "--metrics-bind", "127.0.0.1:0", "--", testworkerBin},
	})
	if res.code != 2 {
		t.Fatalf("exit %d, want 2; stderr:\n%s", res.code, res.stderr)
	}
	for _, want := range []string{"open-file limit", "soft 256, hard 256", "4 workers", "521 file descriptors", "no number of workers fits"} {
		if !strings.Contains(res.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, res.stderr)
		}
	}
}

// TestWorkersKeepTheirSoftFileLimit: baton runs with its soft RLIMIT_NOFILE
// raised to the hard limit (less one; the Go runtime does it), and its
// workers get the soft limit baton was started with, as they would without
// baton (programs that use select(2) rely on 1024).
func TestWorkersKeepTheirSoftFileLimit(t *testing.T) {
	t.Parallel()
	b := launch(t, batonSpec{
		bin: limitedBaton(t, "-Sn 1000"),
		args: []string{"run", "-w", "1", "--ready", "delay:100ms", "--",
			"/bin/sh", "-c", `echo "$(ulimit -Sn) $(ulimit -Hn)" > limits.$$ && exec sleep 3600`},
	})
	b.waitStarted(t)
	pid := b.workerPid(t, 1)
	var data []byte
	waitFor(t, waitTimeout, "the worker to write its limits", func() bool {
		var err error
		data, err = os.ReadFile(filepath.Join(b.Dir, "limits."+strconv.Itoa(pid)))
		return err == nil && strings.HasSuffix(string(data), "\n")
	})
	soft, hard := fileLimits(t, b.Pid)
	if soft < hard-1 {
		t.Errorf("the master's soft limit is %d, want it raised to the hard limit %d", soft, hard)
	}
	if got, want := strings.TrimSpace(string(data)), fmt.Sprintf("1000 %d", hard); got != want {
		t.Errorf("the worker's soft and hard limits: %q, want %q", got, want)
	}
}
