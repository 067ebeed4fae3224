package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// inPlaceUpgradable starts baton from a binary of its own in dir, with a
// pidfile, in the default upgrade mode (reexec).
func inPlaceUpgradable(t *testing.T, d *deployment) (b *Baton, bin, pidfile string) {
	t.Helper()
	dir := t.TempDir()
	bin, pidfile = filepath.Join(dir, "baton"), filepath.Join(dir, "baton.pid")
	install(t, batonBin, bin)
	b = launch(t, batonSpec{bin: bin, args: []string{"run", "-c", d.path, "--pid", pidfile}})
	b.waitStarted(t)
	return b, bin, pidfile
}

// An in-place upgrade under load: the master's pid, and so the pidfile
// and what systemd knows as the main pid, never change; the new binary
// runs, its new generation serves, and not one request fails. The control
// socket and the metrics endpoint stay open across the exec: a probe of
// either never finds them gone.
func TestInPlaceUpgradeUnderLoadKeepsThePid(t *testing.T) {
	t.Parallel()
	v2 := secondBuild(t)
	metricsAddr := freeAddr(t)
	d := newDeployment(t, workerConfig(2, fmt.Sprintf("bind = [\"127.0.0.1:0\"]\nmetrics_bind = %q", metricsAddr), "-boot-delay", "300ms"))
	b, bin, pidfile := inPlaceUpgradable(t, d)
	servingGenerations(t, b.Addr(), 2)
	before := b.mustStatus(t)
	old := workerPidsOf(before.WorkerList)

	l := steadyLoad(b)
	install(t, v2, bin)
	stopProbes := make(chan struct{})
	probeFailures := make(chan string, 1)
	go func() {
		var failed []string
		for {
			select {
			case <-stopProbes:
				probeFailures <- strings.Join(failed, "; ")
				return
			default:
			}
			// A request in flight at the moment of the exec is cut (its
			// connection closes); a new one must never be refused.
			if code, err := httpStatusOf("http://" + metricsAddr + "/readyz"); err != nil && errors.Is(err, syscall.ECONNREFUSED) || err == nil && code != 200 {
				failed = append(failed, fmt.Sprintf("/readyz: %d %v", code, err))
			}
			if _, err := b.status(); err != nil && !errors.Is(err, control.ErrConnClosed) {
				failed = append(failed, "control: "+err.Error())
			}
		}
	}()
	r := cli(t, nil, "upgrade", "--pid", pidfile)
	res := l.stop()
	close(stopProbes)
	if failed := <-probeFailures; failed != "" {
		t.Errorf("probes of the endpoints failed during the upgrade: %s", failed)
	}
	t.Logf("load: %s", res)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("upgrade succeeded: the master (pid %d, unchanged) runs baton %s", b.Pid, upgradeVersion)) {
		t.Fatalf("upgrade: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
	assertNoFailures(t, res)
	st := b.waitStatus(t, "generation 2 alone, run by the new binary", reloadTimeout, func(st control.Status) bool {
		if st.Version != upgradeVersion || len(st.WorkerList) != 2 {
			return false
		}
		for _, w := range st.WorkerList {
			if w.Generation != 2 || w.State != "ready" {
				return false
			}
		}
		return true
	})
	if st.Pid != b.Pid || readPid(t, pidfile) != b.Pid {
		t.Errorf("status pid %d, pidfile %d; want the same master, %d", st.Pid, readPid(t, pidfile), b.Pid)
	}
	for _, pid := range old {
		if processAlive(pid) {
			t.Errorf("worker %d of the old binary's time still runs", pid)
		}
	}
	if _, err := os.Stat(pidfile + ".oldbin"); !os.IsNotExist(err) {
		t.Errorf("an .oldbin pidfile appeared: %v", err)
	}
	b.signal(t, syscall.SIGTERM)
	if code := b.waitExit(t, exitTimeout); code != 0 {
		t.Errorf("the upgraded master exited %d on TERM", code)
	}
}

// A new binary that cannot take over (here: one that exits 3 at once)
// is refused before the master executes it: the master serves on as it
// was, and `baton upgrade` says why.
func TestInPlaceUpgradeToABrokenBinaryChangesNothing(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, ""))
	b, bin, pidfile := inPlaceUpgradable(t, d)
	servingGenerations(t, b.Addr(), 2)
	before := b.mustStatus(t)
	if err := os.WriteFile(bin+".new", []byte("#!/bin/sh\necho broken build >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(bin+".new", bin); err != nil {
		t.Fatal(err)
	}
	r := cli(t, nil, "upgrade", "--pid", pidfile)
	if r.code != 1 || !strings.Contains(r.stderr, "the new binary refused to take over (exit status 3): broken build") {
		t.Fatalf("upgrade to a broken binary: exit %d, %q", r.code, r.stderr)
	}
	after := b.mustStatus(t)
	if after.Pid != before.Pid || after.Version != before.Version || after.Generation != before.Generation ||
		!sameInts(workerPidsOf(after.WorkerList), workerPidsOf(before.WorkerList)) {
		t.Errorf("the master changed: before %+v, after %+v", before, after)
	}
	assertAllGeneration(t, servingGenerations(t, b.Addr(), 2), 1)
}

// A configuration the new binary rejects stops the upgrade before the
// exec, naming the problem.
func TestInPlaceUpgradeWithABrokenConfigChangesNothing(t *testing.T) {
	t.Parallel()
	v2 := secondBuild(t)
	d := newDeployment(t, workerConfig(1, ""))
	b, bin, pidfile := inPlaceUpgradable(t, d)
	before := b.mustStatus(t)
	install(t, v2, bin)
	d.write(workerConfig(1, "workers = \"many\""))
	r := cli(t, nil, "upgrade", "--pid", pidfile)
	if r.code != 1 || !strings.Contains(r.stderr, "rejects the configuration") || !strings.Contains(r.stderr, "workers") {
		t.Fatalf("upgrade with a broken config: exit %d, %q", r.code, r.stderr)
	}
	if after := b.mustStatus(t); after.Pid != before.Pid || after.Version != before.Version {
		t.Errorf("the master changed: %+v", after)
	}
}

func sameInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[int]int{}
	for _, v := range a {
		seen[v]++
	}
	for _, v := range b {
		if seen[v] == 0 {
			return false
		}
		seen[v]--
	}
	return true
}

// Under systemd, an in-place upgrade is a reload of the same main pid:
// RELOADING=1 then READY=1, no MAINPID=, and the watchdog keeps being
// pinged by that pid (WATCHDOG_PID stays right).
func TestInPlaceUpgradeKeepsSystemdsMainPidAndWatchdog(t *testing.T) {
	t.Parallel()
	v2 := secondBuild(t)
	b, sd, bin, pidfile := underSystemdWatchdog(t)
	sd.next(t, "READY", b.Pid)
	install(t, v2, bin)
	if r := cli(t, nil, "upgrade", "--pid", pidfile); r.code != 0 {
		t.Fatalf("upgrade: exit %d: %s", r.code, r.stderr)
	}
	reloading, readyAfter, pingAfter := false, false, false
	deadline := time.After(30 * time.Second)
	for !(readyAfter && pingAfter) {
		var m notification
		select {
		case m = <-sd.got:
		case <-deadline:
			t.Fatalf("after the upgrade: RELOADING=1 %v, then READY=1 %v, then WATCHDOG=1 %v; want all three", reloading, readyAfter, pingAfter)
		}
		if _, ok := m.fields["MAINPID"]; ok {
			t.Fatalf("MAINPID= sent by pid %d: an in-place upgrade keeps the main pid", m.pid)
		}
		if int(m.pid) != b.Pid {
			t.Fatalf("a notification from pid %d, not the master %d: %v", m.pid, b.Pid, m.fields)
		}
		switch {
		case m.fields["RELOADING"] == "1":
			reloading = true
		case reloading && m.fields["READY"] == "1":
			readyAfter = true
		case readyAfter && m.fields["WATCHDOG"] == "1":
			pingAfter = true
		}
	}
}

// httpStatusOf is the status code of a GET of url, or why there is none.
func httpStatusOf(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// A binary that is not there any more is refused the same way.
func TestInPlaceUpgradeToAMissingBinaryChangesNothing(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(1, ""))
	b, bin, pidfile := inPlaceUpgradable(t, d)
	before := b.mustStatus(t)
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	r := cli(t, nil, "upgrade", "--pid", pidfile)
	if r.code != 1 || !strings.Contains(r.stderr, "cannot start the new binary") || !strings.Contains(r.stderr, "no such file or directory") {
		t.Fatalf("upgrade to a missing binary: exit %d, %q", r.code, r.stderr)
	}
	if after := b.mustStatus(t); after.Pid != before.Pid || after.Generation != before.Generation {
		t.Errorf("the master changed: %+v", after)
	}
}
