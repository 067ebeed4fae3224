package e2e

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// timedOutcome is one request of timedLoad: when it started and ended and
// how it ended (an outcome* kind).
type timedOutcome struct {
	start, end time.Time
	kind       string
	detail     string
}

// timedLoad is load that keeps every request's times, so that a test can
// count the failures of a period (the lame-duck delay) exactly.
type timedLoad struct {
	mu       sync.Mutex
	outcomes []timedOutcome
	stopped  chan struct{}
	wg       sync.WaitGroup
}

// startTimedLoad runs concurrency clients against addr, each making GET /
// on a fresh connection, without retries, until stop.
func startTimedLoad(addr string, concurrency int) *timedLoad {
	l := &timedLoad{stopped: make(chan struct{})}
	for range concurrency {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stopped:
					return
				default:
				}
				start := time.Now()
				r, err := get(addr, "/", 10*time.Second)
				o := timedOutcome{start: start, end: time.Now(), kind: classify(r, err)}
				if err != nil {
					o.detail = err.Error()
				} else if o.kind != outcomeOK {
					o.detail = fmt.Sprintf("status %d", r.status)
				}
				l.mu.Lock()
				l.outcomes = append(l.outcomes, o)
				l.mu.Unlock()
			}
		})
	}
	return l
}

func (l *timedLoad) stop() []timedOutcome {
	close(l.stopped)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.outcomes)
}

// between counts the requests that ended in [from, to): successes and
// failures by kind, with a few failure details.
func between(outcomes []timedOutcome, from, to time.Time) (ok int, failed map[string]int, samples []string) {
	failed = map[string]int{}
	for _, o := range outcomes {
		if o.end.Before(from) || !o.end.Before(to) {
			continue
		}
		if o.kind == outcomeOK {
			ok++
			continue
		}
		failed[o.kind]++
		if len(samples) < 5 {
			samples = append(samples, o.detail)
		}
	}
	return ok, failed, samples
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
	t.Cleanup(func() {
		select {
		case <-l.stopped:
		default:
			l.stop()
		}
	})
	waitFor(t, waitTimeout, "the load to get answers", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.outcomes) >= 20
	})

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
	outcomes := l.stop()
	ok, failed, samples := between(outcomes, termAt, overAt)
	if len(failed) > 0 {
		t.Errorf("requests that ended between TERM and the end of the delay: %d ok, failed %v: %q", ok, failed, samples)
	}
	okAfter503, _, _ := between(outcomes, seen503, overAt)
	if okAfter503 == 0 {
		t.Errorf("no request succeeded while /readyz said 503 (%d outcomes in all)", len(outcomes))
	}
	t.Logf("TERM to the end of the delay: %v; %d requests ended in it, %d of them after /readyz was seen 503, 0 failed",
		overAt.Sub(termAt).Round(time.Millisecond), ok, okAfter503)
	b.assertNothingLeft(t)
}

// A second TERM during the delay stops the workers at once.
func TestSecondTERMSkipsTheShutdownDelay(t *testing.T) {
	t.Parallel()
	b := startBaton(t, "run", "-w", "1", "--shutdown-delay", "10m", "--", testworkerBin)
	b.waitReady(t, 1)
	b.signal(t, syscall.SIGTERM)
	b.waitStatus(t, "the lame-duck delay", waitTimeout, func(st control.Status) bool { return st.LameDuck != nil })
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
	b := startBaton(t, "run", "-w", "1", "--shutdown-delay", "10m", "--", testworkerBin)
	b.waitReady(t, 1)
	b.signal(t, syscall.SIGTERM)
	b.waitStatus(t, "the lame-duck delay", waitTimeout, func(st control.Status) bool { return st.LameDuck != nil })
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
