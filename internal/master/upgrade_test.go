package master

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// upgradeAsync asks for an upgrade the way `baton upgrade` does.
func (tb *testbed) upgradeAsync() <-chan control.ReloadResult {
	out := make(chan control.ReloadResult, 1)
	go func() {
		res, err := tb.m.ControlHandler().Upgrade(context.Background(), nil)
		if err != nil {
			res = control.ReloadResult{Reason: "control error: " + err.Error()}
		}
		out <- res
	}()
	tb.settle()
	return out
}

// newMaster is the upgrade's new master process.
func (tb *testbed) newMaster() *fakeProc {
	tb.t.Helper()
	pids := tb.started("master")
	if len(pids) != 1 {
		tb.t.Fatalf("%d new masters started, want 1", len(pids))
	}
	return tb.proc(pids[0])
}

// newMasterMode is Gunicorn's upgrade: a second master, then the first
// steps down.
func newMasterMode(opts Options) Options {
	opts.Master.UpgradeMode = "new-master"
	return opts
}

// withPidfile gives the master a pidfile in a temp dir.
func withPidfile(t *testing.T, opts Options) (Options, string) {
	path := filepath.Join(t.TempDir(), "baton.pid")
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	opts.Master.PidFile = path
	return opts, path
}

func TestUpgradeHandsOverOnceTheNewMasterIsReady(t *testing.T) {
	opts, pidfile := withPidfile(t, newMasterMode(options(gen(2))))
	serving(t, opts, func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")
		res := tb.upgradeAsync()
		nm := tb.newMaster()
		if _, err := os.Stat(pidfile + ".oldbin"); err != nil {
			t.Errorf("the pidfile was not moved to .oldbin: %v", err)
		}
		tb.wait(10 * time.Second)
		for _, pid := range old {
			if got := tb.signals(pid); len(got) != 0 {
				t.Fatalf("worker %d got %v before the new master was ready", pid, got)
			}
		}
		nm.ready <- "ready 4242 v2\n"
		tb.settle()
		r := tb.result(res)
		if !r.OK || r.MasterPid != nm.pid || r.Version != "v2" {
			t.Fatalf("upgrade result %+v, want OK from the new master, v2", r)
		}
		for _, pid := range old {
			if got := tb.signals(pid); len(got) == 0 || got[0] != syscall.SIGTERM {
				t.Errorf("worker %d got %v after the hand-over, want TERM", pid, got)
			}
		}
		select {
		case <-tb.done:
		default:
			t.Fatal("the old master did not exit once its workers were gone")
		}
		if slices.Contains(tb.w.systemd, "STOPPING=1") {
			t.Error("the old master told systemd STOPPING=1: the service goes on in the new master")
		}
	})
}

func TestUpgradeFailsWhenTheNewMasterExitsAndNeverSignalsItsPidAgain(t *testing.T) {
	opts, pidfile := withPidfile(t, newMasterMode(options(gen(1))))
	serving(t, opts, func(t *testing.T, tb *testbed) {
		res := tb.upgradeAsync()
		nm := tb.newMaster()
		tb.exit(nm.pid, 3)
		r := tb.result(res)
		if r.OK || r.Reason != "the new master exited: exit status 3" {
			t.Fatalf("upgrade result %+v, want the new master's exit", r)
		}
		if _, err := os.Stat(pidfile); err != nil {
			t.Errorf("the pidfile was not restored: %v", err)
		}
		// Its pid may be reused by anything now.
		tb.wait(time.Hour)
		if len(tb.w.kills) != 0 {
			t.Errorf("signals sent to the reaped new master's pid: %v", tb.w.kills)
		}
		if n := tb.count(1, "ready"); n != 1 {
			t.Errorf("%d workers serving after the failed upgrade, want 1", n)
		}
	})
}

func TestUpgradeNotReadyInTimeStopsTheNewMasterAndForgetsItOnceReaped(t *testing.T) {
	serving(t, newMasterMode(options(gen(1))), func(t *testing.T, tb *testbed) {
		res := tb.upgradeAsync()
		nm := tb.newMaster()
		tb.stubborn(nm.pid)
		tb.wait(time.Minute) // boot_timeout
		r := tb.result(res)
		if r.OK || !strings.Contains(r.Reason, "not ready within boot_timeout") {
			t.Fatalf("upgrade result %+v, want a boot timeout", r)
		}
		if got := tb.signals(nm.pid); !slices.Equal(got, []syscall.Signal{syscall.SIGTERM}) {
			t.Fatalf("new master got %v, want TERM", got)
		}
		tb.wait(30 * time.Second) // graceful_timeout
		if tb.alive(nm.pid) {
			t.Fatal("the new master was not killed after graceful_timeout")
		}

		// A second upgrade whose new master obeys TERM: once reaped,
		// its kill timer must not fire on its pid.
		res = tb.upgradeAsync()
		pids := tb.started("master")
		second := tb.proc(pids[len(pids)-1])
		tb.wait(time.Minute)
		tb.result(res)
		if tb.alive(second.pid) {
			t.Fatal("the second new master did not exit on TERM")
		}
		tb.wait(time.Hour)
		for _, k := range tb.w.kills {
			if k.pid == second.pid && k.sig == syscall.SIGKILL {
				t.Errorf("SIGKILL sent to pid %d after it was reaped", k.pid)
			}
		}
	})
}

func TestManualHandOverKeepsTheWorkersUntilWinchThenTerm(t *testing.T) {
	opts := newMasterMode(options(gen(2)))
	opts.Master.Handover = "manual"
	serving(t, opts, func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")
		res := tb.upgradeAsync()
		tb.newMaster().ready <- "ready 4242 v2\n"
		tb.settle()
		if r := tb.result(res); !r.OK {
			t.Fatalf("upgrade result %+v", r)
		}
		for _, pid := range old {
			if got := tb.signals(pid); len(got) != 0 {
				t.Fatalf("worker %d got %v with a manual hand-over before WINCH", pid, got)
			}
		}
		tb.signal(syscall.SIGWINCH)
		for _, pid := range old {
			if tb.alive(pid) {
				t.Errorf("worker %d still runs after WINCH", pid)
			}
		}
		tb.wait(time.Minute)
		if n := len(tb.started("worker")); n != 2 {
			t.Errorf("%d workers started in all, want none after WINCH", n)
		}
		select {
		case <-tb.done:
			t.Fatal("the master exited before TERM")
		default:
		}
		tb.signal(syscall.SIGTERM)
		select {
		case <-tb.done:
		default:
			t.Fatal("the master did not exit on TERM")
		}
	})
}

func TestReloadIsRefusedDuringAnUpgrade(t *testing.T) {
	serving(t, options(gen(1)), func(t *testing.T, tb *testbed) {
		tb.upgradeAsync()
		r := tb.result(tb.reloadAsync())
		if r.OK || !strings.Contains(r.Reason, "upgrade is in progress") {
			t.Fatalf("reload during an upgrade: %+v, want a refusal", r)
		}
	})
}

// answerPreflight ends the check of the new binary of an in-place upgrade.
func (tb *testbed) answerPreflight(code int, answer string) {
	tb.t.Helper()
	pids := tb.started("preflight")
	if len(pids) == 0 {
		tb.t.Fatal("the new binary was not checked")
	}
	p := tb.proc(pids[len(pids)-1])
	p.ready <- answer
	tb.exit(p.pid, code)
}

// An in-place upgrade executes the new binary only once it said it can
// take over; a refusal leaves the master as it was.
func TestInPlaceUpgradeRefusedByTheNewBinaryChangesNothing(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		old := tb.workers(1, "ready")
		res := tb.upgradeAsync()
		if n := len(tb.w.execs); n != 0 {
			t.Fatalf("executed the new binary before checking it")
		}
		tb.answerPreflight(3, "baton _upgrade_check: state version 1 is not one this baton reads (2)")
		r := tb.result(res)
		if r.OK || !strings.Contains(r.Reason, "refused to take over (exit status 3): baton _upgrade_check: state version 1") {
			t.Fatalf("upgrade result %+v, want the new binary's refusal", r)
		}
		if len(tb.w.execs) != 0 {
			t.Error("executed a binary that refused")
		}
		for _, pid := range old {
			if got := tb.signals(pid); len(got) != 0 || !tb.alive(pid) {
				t.Errorf("worker %d got %v", pid, got)
			}
		}
		// And a reload works again: the upgrade is over.
		rr := tb.reloadAsync()
		tb.ready(tb.workers(2, "starting")...)
		if r := tb.result(rr); !r.OK {
			t.Errorf("a reload after the refused upgrade: %+v", r)
		}
	})
}

// An exec that fails (the binary vanished after its check) gives the
// fds back their close-on-exec flag and reports the failure.
func TestInPlaceUpgradeWhoseExecFailsServesOn(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		tb.w.mu.Lock()
		tb.w.execErr = syscall.ENOENT
		tb.w.mu.Unlock()
		res := tb.upgradeAsync()
		tb.answerPreflight(0, "ok v2")
		r := tb.result(res)
		if r.OK || !strings.Contains(r.Reason, "cannot execute") || !strings.Contains(r.Reason, "no such file or directory") {
			t.Fatalf("upgrade result %+v, want the exec's failure", r)
		}
		if len(tb.w.execs) != 1 {
			t.Fatalf("%d exec attempts, want 1", len(tb.w.execs))
		}
		state := ""
		for _, kv := range tb.w.execs[0] {
			if strings.HasPrefix(kv, reexecStateEnv+"=") {
				state = kv
			}
		}
		if state == "" {
			t.Error("the exec's environment has no state for the new image")
		}
		for _, pid := range tb.workers(1, "ready") {
			p := tb.proc(pid)
			tb.w.mu.Lock()
			kept := p.keptOnExec
			tb.w.mu.Unlock()
			if kept {
				t.Errorf("worker %d's stderr pipe still survives an exec", pid)
			}
		}
	})
}
