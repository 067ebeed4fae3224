package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/e2e/internal/tiertest"
	"github.com/baton-pm/baton/internal/control"
)

// startTimedLoad runs concurrency clients against addr, each making GET /
// on a fresh connection, without retries, until stopped. Every request's
// times are kept, so that a test can count the failures of a period (the
// lame-duck delay) exactly; a failure's detail is its error or status.
func startTimedLoad(addr string, concurrency int) *tiertest.Load {
	return tiertest.StartLoad(concurrency, 0, func() (string, string) {
		r, err := get(addr, "/", 10*time.Second)
		switch kind := classify(r, err); {
		case kind == outcomeOK:
			return "", ""
		case err != nil:
			return kind, err.Error()
		default:
			return kind, fmt.Sprintf("status %d", r.status)
		}
	})
}

// readyzStatus is /readyz's status code and body.
func readyzStatus(t *testing.T, metrics string) (int, string) {
	t.Helper()
	r, err := get(metrics, "/readyz", 10*time.Second)
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	return r.status, strings.TrimSpace(string(r.body))
}

// TestShutdownDelayServesWhileReadyzSays503 is the lame-duck drain with the
// real binary under load: on TERM, /readyz turns 503 at once, yet for
// shutdown_delay every request to the app port (a new connection each)
// still succeeds and the workers stay the same ready processes; then the
// ordinary graceful drain runs and baton exits 0 with nothing left.
func TestShutdownDelayServesWhileReadyzSays503(t *testing.T) {
	t.Parallel()
	const delay = 4 * time.Second
	b := startBaton(t, "run", "-w", "2", "--shutdown-delay", delay.String(),
		"--metrics-bind", "127.0.0.1:0", "--", testworkerBin)
	metrics := b.waitLog(t, "metrics endpoint listening", nil, waitTimeout).str("addr")
	before := b.waitReady(t, 2)
	if code, body := readyzStatus(t, metrics); code != http.StatusOK {
		t.Fatalf("/readyz before TERM: %d %q, want 200", code, body)
	}

	l := startTimedLoad(b.Addr(), 4)
	t.Cleanup(func() { l.Stop() })
	waitFor(t, waitTimeout, "the load to get answers", func() bool { return l.Len() >= 20 })

	termAt := time.Now()
	b.signal(t, syscall.SIGTERM)

	// /readyz is 503 at once: the first probe after TERM must say so
	// (the master handles the signal before it answers the probe, or the
	// probe waits in its loop behind it).
	var code int
	var body string
	waitFor(t, waitTimeout, "/readyz to answer 503 after TERM", func() bool {
		code, body = readyzStatus(t, metrics)
		return code == http.StatusServiceUnavailable
	})
	if !strings.Contains(body, "lame duck") {
		t.Errorf("/readyz during the delay says %q, want the lame duck named", body)
	}
	seen503 := time.Now()

	// During the delay: the same workers, ready, and baton status says so.
	st := b.mustStatus(t)
	if st.LameDuck == nil || !st.ShuttingDown {
		t.Fatalf("status during the delay: lame_duck %+v, shutting_down %v", st.LameDuck, st.ShuttingDown)
	}
	if got, want := workerPidsOf(inState(st, "ready")), workerPidsOf(inState(before, "ready")); !slices.Equal(got, want) {
		t.Errorf("ready workers during the delay %v, want the same %v as before TERM", got, want)
	}
	if text := b.cli(t, "status"); text.code != 0 || !strings.Contains(text.stdout, "stopping (lame duck, ") {
		t.Errorf("baton status during the delay (exit %d):\n%s%s", text.code, text.stdout, text.stderr)
	}

	over := b.waitLog(t, "shutdown_delay is over: stopping the workers", nil, delay+waitTimeout)
	overAt := over.time(t)
	if elapsed := overAt.Sub(termAt); elapsed < delay {
		t.Errorf("the workers were told to stop %v after TERM, before shutdown_delay (%v)", elapsed, delay)
	}
	// No worker was signalled before: the graceful shutdown's record
	// comes after the delay's end.
	for _, r := range b.logs("shutting down", nil) {
		if r.str("graceful") == "true" && r.time(t).Before(overAt) {
			t.Errorf("the workers were stopped before the delay ended: %s", r)
		}
	}
	for _, msg := range []string{"worker exited", "worker started"} {
		for _, r := range b.logs(msg, nil) {
			if at := r.time(t); at.After(termAt) && at.Before(overAt) {
				t.Errorf("during the delay: %s", r)
			}
		}
	}

	if code := b.waitExit(t, 2*waitTimeout); code != 0 {
		t.Errorf("baton exited %d after the lame-duck drain, want 0", code)
	}
	outcomes := l.Stop()
	inDelay := tiertest.Count(outcomes, termAt, overAt)
	if len(inDelay.Failed) > 0 {
		t.Errorf("requests that ended between TERM and the end of the delay: %d ok, failed %v: %q", inDelay.OK, inDelay.Failed, inDelay.Samples)
	}
	after503 := tiertest.Count(outcomes, seen503, overAt)
	if after503.OK == 0 {
		t.Errorf("no request succeeded while /readyz said 503 (%d outcomes in all)", len(outcomes))
	}
	t.Logf("TERM to the end of the delay: %v; %d requests ended in it, %d of them after /readyz was seen 503, 0 failed",
		overAt.Sub(termAt).Round(time.Millisecond), inDelay.OK, after503.OK)
	b.assertNothingLeft(t)
}

// startInLameDuck starts baton with one worker and a shutdown_delay far
// longer than any test, sends it TERM and returns once its status shows the
// lame-duck delay: what a test then does happens during the delay.
func startInLameDuck(t *testing.T) *Baton {
	t.Helper()
	b := startBaton(t, "run", "-w", "1", "--shutdown-delay", "10m", "--", testworkerBin)
	b.waitReady(t, 1)
	b.signal(t, syscall.SIGTERM)
	b.waitStatus(t, "the lame-duck delay", waitTimeout, func(st control.Status) bool { return st.LameDuck != nil })
	return b
}

// A second TERM during the delay stops the workers at once.
func TestSecondTERMSkipsTheShutdownDelay(t *testing.T) {
	t.Parallel()
	b := startInLameDuck(t)
	b.signal(t, syscall.SIGTERM)
	if code := b.waitExit(t, 2*waitTimeout); code != 0 {
		t.Errorf("baton exited %d after a second TERM, want 0", code)
	}
	if len(b.logs("shutdown requested again during the lame-duck delay: stopping the workers now", nil)) != 1 {
		t.Errorf("no record of the second TERM skipping the delay; stderr:\n%s", lastLines(b.Stderr(), 20))
	}
	b.assertNothingLeft(t)
}

// A reload during the delay is refused, and says why.
func TestReloadDuringTheShutdownDelayIsRefused(t *testing.T) {
	t.Parallel()
	b := startInLameDuck(t)
	r := b.cli(t, "reload")
	if r.code != 1 || !strings.Contains(r.stdout+r.stderr, "shutting down") {
		t.Errorf("baton reload during the delay: exit %d, %q %q; want 1, shutting down", r.code, r.stdout, r.stderr)
	}
	s := b.cli(t, "scale", "3")
	if s.code == 0 || !strings.Contains(s.stdout+s.stderr, "shutting down") {
		t.Errorf("baton scale during the delay: exit %d, %q %q; want refused, shutting down", s.code, s.stdout, s.stderr)
	}
	b.signal(t, syscall.SIGQUIT)
	if code := b.waitExit(t, 2*waitTimeout); code != 0 {
		t.Errorf("baton exited %d after QUIT, want 0", code)
	}
	b.assertNothingLeft(t)
}

// A negative or non-duration shutdown_delay stops baton run with exit 2,
// naming the file, line and key, or the flag.
func TestBadShutdownDelayIsAConfigError(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := writeFile(t, dir, "baton.toml", "workers = 1\nshutdown_delay = \"-5s\"\n", 0o644)
	res := runToExit(t, batonSpec{args: []string{"run", "-c", cfg, "--", testworkerBin}})
	if want := cfg + ":2: shutdown_delay: expected a duration ≥ 0, got \"-5s\""; res.code != 2 || !strings.Contains(res.stderr, want) {
		t.Errorf("baton run with shutdown_delay = \"-5s\": exit %d, stderr:\n%s\nwant exit 2 and %q", res.code, res.stderr, want)
	}
	res = runToExit(t, batonSpec{args: []string{"run", "--shutdown-delay", "soon", "--", testworkerBin}})
	if want := `--shutdown-delay: expected a duration ("30s", "1m30s") or a number of seconds, got "soon"`; res.code != 2 || !strings.Contains(res.stderr, want) {
		t.Errorf("baton run --shutdown-delay soon: exit %d, stderr:\n%s\nwant exit 2 and %q", res.code, res.stderr, want)
	}
}
