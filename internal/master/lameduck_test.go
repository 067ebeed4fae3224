package master

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/metrics"
)

// lameDuckOptions is n workers with a shutdown_delay of delay.
func lameDuckOptions(n int, delay time.Duration) Options {
	opts := options(gen(n))
	opts.Master.ShutdownDelay = delay
	return opts
}

// readyz is the master's /readyz answer, as a load balancer would get it.
func (tb *testbed) readyz() (int, string) {
	rec := httptest.NewRecorder()
	metrics.New().Handler(metricsSource{tb.m}).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	body, _ := io.ReadAll(rec.Body)
	return rec.Code, strings.TrimSpace(string(body))
}

// unsignalled fails the test if any of pids got a signal.
func (tb *testbed) unsignalled(when string, pids ...int) {
	tb.t.Helper()
	for _, pid := range pids {
		if got := tb.signals(pid); len(got) > 0 {
			tb.t.Fatalf("%s: worker %d got %v, want no signal yet", when, pid, got)
		}
	}
}

// stoppedWith fails the test unless every one of pids got sig first.
func (tb *testbed) stoppedWith(when string, sig syscall.Signal, pids ...int) {
	tb.t.Helper()
	for _, pid := range pids {
		if got := tb.signals(pid); len(got) == 0 || got[0] != sig {
			tb.t.Fatalf("%s: worker %d got %v, want %v", when, pid, got, sig)
		}
	}
}

// ended reports whether the master's loop has ended.
func (tb *testbed) ended() bool {
	select {
	case <-tb.done:
		return true
	default:
		return false
	}
}

func TestTERMWithShutdownDelayKeepsWorkersServingUntilTheDelayEnds(t *testing.T) {
	serving(t, lameDuckOptions(2, 5*time.Second), func(t *testing.T, tb *testbed) {
		pids := tb.workers(1, "ready")
		if code, body := tb.readyz(); code != http.StatusOK {
			t.Fatalf("/readyz before TERM: %d %q, want 200", code, body)
		}
		tb.signal(syscall.SIGTERM)

		code, body := tb.readyz()
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "lame duck") {
			t.Errorf("/readyz right after TERM: %d %q, want 503 saying lame duck", code, body)
		}
		st := tb.status()
		if !st.ShuttingDown || st.LameDuck == nil || st.LameDuck.Delay != 5 || st.LameDuck.Left != 5 {
			t.Errorf("status right after TERM: shutting_down %v, lame_duck %+v; want true, 5 s of 5 s left", st.ShuttingDown, st.LameDuck)
		}
		tb.w.mu.Lock()
		systemd := slices.Clone(tb.w.systemd)
		tb.w.mu.Unlock()
		if !slices.Contains(systemd, "STOPPING=1") || !slices.Contains(systemd, "STATUS=lame duck: stopping in 5s") {
			t.Errorf("systemd was told %q, want STOPPING=1 and the lame-duck STATUS=", systemd)
		}
		tb.unsignalled("right after TERM", pids...)

		tb.wait(5*time.Second - time.Millisecond)
		tb.unsignalled("1 ms before the delay ends", pids...)
		if n := tb.count(1, "ready"); n != 2 {
			t.Fatalf("%d ready workers during the delay, want 2", n)
		}
		if ld := tb.status().LameDuck; ld == nil || ld.Left != 0.001 {
			t.Errorf("lame_duck %+v 1 ms before the end, want 0.001 s left", ld)
		}

		tb.wait(time.Millisecond)
		tb.stoppedWith("once the delay ended", syscall.SIGTERM, pids...)
		if !tb.ended() {
			t.Fatal("the master did not exit once its workers had stopped")
		}
	})
}

func TestASecondTERMSkipsTheRestOfTheDelay(t *testing.T) {
	serving(t, lameDuckOptions(2, 30*time.Second), func(t *testing.T, tb *testbed) {
		pids := tb.workers(1, "ready")
		tb.stubborn(pids[0]) // so that the graceful drain is seen running
		tb.signal(syscall.SIGTERM)
		tb.wait(time.Second)
		tb.unsignalled("1 s into the delay", pids...)
		tb.signal(syscall.SIGTERM)
		tb.stoppedWith("after the second TERM", syscall.SIGTERM, pids...)
		st := tb.status()
		if st.LameDuck != nil || !st.ShuttingDown {
			t.Errorf("status after the second TERM: lame_duck %+v, shutting_down %v; want no lame duck, shutting down", st.LameDuck, st.ShuttingDown)
		}
		// The drain is the ordinary graceful one: graceful_timeout, then SIGKILL.
		tb.wait(30*time.Second - time.Millisecond)
		if !tb.alive(pids[0]) {
			t.Fatal("the stubborn worker was killed before graceful_timeout")
		}
		tb.wait(time.Millisecond)
		if tb.alive(pids[0]) || !tb.ended() {
			t.Fatal("the stubborn worker was not killed at graceful_timeout, or the master did not end")
		}
	})
}

func TestINTOrQUITDuringTheDelayShutsDownQuickly(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGQUIT} {
		t.Run(sig.String(), func(t *testing.T) {
			serving(t, lameDuckOptions(2, 30*time.Second), func(t *testing.T, tb *testbed) {
				pids := tb.workers(1, "ready")
				tb.signal(syscall.SIGTERM)
				tb.unsignalled("after TERM", pids...)
				tb.signal(sig)
				tb.stoppedWith("after "+sig.String(), syscall.SIGINT, pids...)
				if !tb.ended() {
					t.Fatal("the master did not end after a quick shutdown")
				}
			})
		})
	}
}

func TestINTWithoutTERMIsQuickEvenWithAShutdownDelay(t *testing.T) {
	serving(t, lameDuckOptions(1, 30*time.Second), func(t *testing.T, tb *testbed) {
		pid := tb.workers(1, "ready")[0]
		tb.signal(syscall.SIGINT)
		tb.stoppedWith("after INT", syscall.SIGINT, pid)
	})
}

func TestBatonStopIsALameDuckToo(t *testing.T) {
	serving(t, lameDuckOptions(1, 10*time.Second), func(t *testing.T, tb *testbed) {
		pid := tb.workers(1, "ready")[0]
		stop := func() {
			if err := tb.m.ControlHandler().Stop(context.Background(), false); err != nil {
				t.Fatalf("stop: %v", err)
			}
			tb.settle()
		}
		stop()
		if st := tb.status(); st.LameDuck == nil {
			t.Fatal("baton stop did not start the lame-duck delay")
		}
		tb.wait(3 * time.Second)
		tb.unsignalled("3 s after baton stop", pid)
		stop() // a second stop, like a second TERM, skips the rest
		tb.stoppedWith("after a second baton stop", syscall.SIGTERM, pid)
	})
}

func TestDuringTheDelayReloadsUpgradesAndScalingAreRefused(t *testing.T) {
	serving(t, lameDuckOptions(2, 10*time.Second), func(t *testing.T, tb *testbed) {
		pids := tb.workers(1, "ready")
		tb.signal(syscall.SIGTERM)

		r := tb.result(tb.reloadAsync())
		if r.OK || !strings.Contains(r.Reason, "shutting down") {
			t.Errorf("baton reload during the delay: %+v, want refused: shutting down", r)
		}
		res, err := tb.m.ControlHandler().Upgrade(context.Background(), nil)
		if err != nil || res.OK || !strings.Contains(res.Reason, "shutting down") {
			t.Errorf("baton upgrade during the delay: %+v, %v; want refused: shutting down", res, err)
		}
		if err := tb.m.ControlHandler().Scale(context.Background(), 4); err == nil || !strings.Contains(err.Error(), "shutting down") {
			t.Errorf("baton scale during the delay: %v, want refused: shutting down", err)
		}
		for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGUSR2, syscall.SIGWINCH} {
			tb.signal(sig)
		}
		if n := len(tb.started("worker")); n != 2 {
			t.Errorf("%d workers were started, want the first 2 only", n)
		}
		if st := tb.status(); st.Generation != 1 || st.Workers != 2 || tb.count(1, "ready") != 2 {
			t.Errorf("after HUP, TTIN, TTOU, USR2, WINCH during the delay: generation %d, %d workers, %d ready; want 1, 2, 2",
				st.Generation, st.Workers, tb.count(1, "ready"))
		}
		tb.unsignalled("after the refused requests", pids...)
		tb.wait(10 * time.Second)
		tb.stoppedWith("once the delay ended", syscall.SIGTERM, pids...)
	})
}

func TestAWorkerThatCrashesDuringTheDelayIsReplaced(t *testing.T) {
	serving(t, lameDuckOptions(2, 10*time.Second), func(t *testing.T, tb *testbed) {
		pids := tb.workers(1, "ready")
		tb.signal(syscall.SIGTERM)
		tb.exit(pids[0], 1, "boom")
		tb.wait(backoffFirst)
		next := tb.workers(1, "starting")
		if len(next) != 1 {
			t.Fatalf("%d workers starting after a crash during the delay, want its replacement", len(next))
		}
		tb.ready(next...)
		if code, _ := tb.readyz(); code != http.StatusServiceUnavailable {
			t.Errorf("/readyz after the replacement got ready: %d, want 503 still", code)
		}
		tb.wait(10*time.Second - backoffFirst)
		tb.stoppedWith("once the delay ended", syscall.SIGTERM, pids[1], next[0])
	})
}

func TestAReloadInProgressIsAbandonedWhenTheDelayBegins(t *testing.T) {
	serving(t, lameDuckOptions(1, 10*time.Second), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")
		res := tb.reloadAsync()
		tb.signal(syscall.SIGTERM)
		if r := tb.result(res); r.OK || !strings.Contains(r.Reason, "abandoned") {
			t.Fatalf("reload result %+v, want abandoned", r)
		}
		next := tb.workers(2, "")
		if len(next) != 1 {
			t.Fatalf("%d workers of the abandoned generation, want the 1 it had started", len(next))
		}
		// Both serve until the delay ends; then both are stopped.
		tb.unsignalled("during the delay", append(old, next...)...)
		tb.wait(10 * time.Second)
		tb.stoppedWith("once the delay ended", syscall.SIGTERM, append(old, next...)...)
	})
}

func TestShutdownDelayIsReappliedByAReload(t *testing.T) {
	serving(t, lameDuckOptions(1, 0), func(t *testing.T, tb *testbed) {
		tb.setConfig(lameDuckOptions(1, 4*time.Second), nil)
		res := tb.reloadAsync()
		tb.ready(tb.workers(2, "starting")...)
		if r := tb.result(res); !r.OK {
			t.Fatalf("reload: %+v", r)
		}
		pid := tb.workers(2, "ready")[0]
		tb.signal(syscall.SIGTERM)
		tb.unsignalled("after TERM with the reloaded shutdown_delay", pid)
		tb.wait(4 * time.Second)
		tb.stoppedWith("once the reloaded delay ended", syscall.SIGTERM, pid)
	})
}

func TestNoShutdownDelayStopsAtOnce(t *testing.T) {
	serving(t, lameDuckOptions(1, 0), func(t *testing.T, tb *testbed) {
		pid := tb.workers(1, "ready")[0]
		tb.stubborn(pid) // keeps the master running, to be asked
		tb.signal(syscall.SIGTERM)
		tb.stoppedWith("after TERM without shutdown_delay", syscall.SIGTERM, pid)
		if st := tb.status(); st.LameDuck != nil {
			t.Errorf("lame_duck %+v without shutdown_delay", st.LameDuck)
		}
	})
}
