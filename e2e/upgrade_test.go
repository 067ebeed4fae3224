package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

const upgradeVersion = "upgrade-v2"

var (
	buildV2Once sync.Once
	batonV2     string
	buildV2Err  error
)

// secondBuild is baton built again with another version string, the "new
// release" an upgrade switches to.
func secondBuild(t *testing.T) string {
	t.Helper()
	buildV2Once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildV2Err = err
			return
		}
		batonV2 = filepath.Join(filepath.Dir(batonBin), "baton-"+upgradeVersion)
		buildV2Err = goBuildWithVersion(root, batonV2, upgradeVersion)
	})
	if buildV2Err != nil {
		t.Fatal(buildV2Err)
	}
	return batonV2
}

func goBuildWithVersion(root, out, version string) error {
	args := []string{"build", "-o", out, "-ldflags", "-X main.version=" + version}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, "./cmd/baton")...)
	cmd.Dir = root
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, output)
	}
	return nil
}

// install puts the binary src at path the way a deploy does: a new file
// renamed over the old one.
func install(t *testing.T, src, path string) {
	t.Helper()
	tmp := path + ".new"
	if err := copyFile(src, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// upgradable starts baton from a binary of its own in dir, with a pidfile
// (and so a control socket) beside it.
func upgradable(t *testing.T, d *deployment) (b *Baton, bin, pid string) {
	t.Helper()
	dir := t.TempDir()
	bin, pid = filepath.Join(dir, "baton"), filepath.Join(dir, "baton.pid")
	install(t, batonBin, bin)
	b = launch(t, batonSpec{bin: bin, args: []string{"run", "-c", d.path, "--pid", pid, "--upgrade-mode", "new-master"}})
	b.waitStarted(t)
	return b, bin, pid
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("pidfile: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("pidfile %s: %q", path, data)
	}
	return pid
}

// stopNewMaster stops a master the harness did not start, and checks it
// goes with its workers.
func stopNewMaster(t *testing.T, pidfile string) {
	t.Helper()
	pid := readPid(t, pidfile)
	workers := workersOf(pid)
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	// It takes the control socket over from the old master within 100 ms.
	waitFor(t, waitTimeout, "the new master's control socket", func() bool {
		c, err := net.Dial("unix", strings.TrimSuffix(pidfile, ".pid")+".sock")
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if r := cli(t, nil, "stop", "--pid", pidfile); r.code != 0 {
		t.Fatalf("stopping the new master: exit %d: %s", r.code, r.stderr)
	}
	for _, w := range append(workers, pid) {
		if processAlive(w) {
			t.Errorf("process %d of the new master is still running", w)
		}
	}
}

func TestUpgradeUnderLoadHandsOverToTheNewBinary(t *testing.T) {
	t.Parallel()
	v2 := secondBuild(t)
	d := newDeployment(t, workerConfig(2, "", "-boot-delay", "300ms"))
	b, bin, pidfile := upgradable(t, d)
	old := servingGenerations(t, b.Addr(), 2)

	l := steadyLoad(b)
	install(t, v2, bin)
	r := cli(t, nil, "upgrade", "--pid", pidfile)
	if r.code != 0 || !strings.Contains(r.stdout, "baton "+upgradeVersion+", serves") ||
		!strings.Contains(r.stdout, "the new master is starting its workers") {
		t.Fatalf("upgrade: exit %d, stdout %q", r.code, r.stdout)
	}
	// The old master drains its workers and exits.
	if code := b.waitExit(t, 30*time.Second); code != 0 {
		t.Errorf("old master exited %d, want 0", code)
	}
	time.Sleep(200 * time.Millisecond) // the new workers alone serve a moment
	res := l.stop()
	assertNoFailures(t, res)

	newPid := readPid(t, pidfile)
	if newPid == b.Pid || !processAlive(newPid) {
		t.Fatalf("pidfile names %d; the old master was %d", newPid, b.Pid)
	}
	if _, err := os.Stat(pidfile + ".oldbin"); !os.IsNotExist(err) {
		t.Errorf("%s.oldbin left after the old master exited (%v)", pidfile, err)
	}
	st := cli(t, nil, "status", "--json", "--pid", pidfile)
	if st.code != 0 || !strings.Contains(st.stdout, `"version": "`+upgradeVersion+`"`) || !strings.Contains(st.stdout, fmt.Sprintf(`"pid": %d`, newPid)) {
		t.Errorf("status after the upgrade: %s", st.stdout)
	}
	for pid := range old {
		if processAlive(pid) {
			t.Errorf("old worker %d still running", pid)
		}
	}
	stopNewMaster(t, pidfile)
}

func TestUpgradeToABinaryThatFailsRollsBack(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, ""))
	b, bin, pidfile := upgradable(t, d)
	servingGenerations(t, b.Addr(), 2)

	l := steadyLoad(b)
	if err := os.WriteFile(bin+".new", []byte("#!/bin/sh\necho 'broken release' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.Rename(bin+".new", bin)
	r := cli(t, nil, "upgrade", "--pid", pidfile)
	res := l.stop()
	if r.code != 1 || !strings.Contains(r.stderr, "the new master exited: exit status 3") || !strings.Contains(r.stderr, "the old master keeps serving") {
		t.Fatalf("upgrade to a broken binary: exit %d, stderr %q", r.code, r.stderr)
	}
	assertNoFailures(t, res)
	if pid := readPid(t, pidfile); pid != b.Pid {
		t.Errorf("pidfile names %d after the rollback, want the old master %d", pid, b.Pid)
	}
	if _, err := os.Stat(pidfile + ".oldbin"); !os.IsNotExist(err) {
		t.Errorf(".oldbin left after a rollback (%v)", err)
	}
	assertAllGeneration(t, servingGenerations(t, b.Addr(), 2), 1)
}

func TestUpgradeWhoseWorkersNeverGetReadyRollsBack(t *testing.T) {
	t.Parallel()
	v2 := secondBuild(t)
	d := newDeployment(t, workerConfig(2, `boot_timeout = "1s"`))
	b, bin, pidfile := upgradable(t, d)
	servingGenerations(t, b.Addr(), 2)

	// The new release's workers hang in their import.
	d.write(workerConfig(2, `boot_timeout = "1s"`, "-boot-delay", "1h"))
	install(t, v2, bin)
	l := steadyLoad(b)
	r := cli(t, nil, "upgrade", "--pid", pidfile)
	res := l.stop()
	if r.code != 1 || !strings.Contains(r.stderr, "the new master was not ready within boot_timeout (1s)") {
		t.Fatalf("upgrade: exit %d, stderr %q", r.code, r.stderr)
	}
	assertNoFailures(t, res)
	if pid := readPid(t, pidfile); pid != b.Pid {
		t.Errorf("pidfile names %d after the rollback, want %d", pid, b.Pid)
	}
	newMaster := b.waitLog(t, "upgrade started", nil, waitTimeout).int("new_master_pid")
	waitFor(t, 20*time.Second, "the failed new master to be gone", func() bool { return !processAlive(newMaster) })
	assertAllGeneration(t, servingGenerations(t, b.Addr(), 2), 1)
}

func TestManualUpgradeDanceUSR2WinchTerm(t *testing.T) {
	t.Parallel()
	v2 := secondBuild(t)
	d := newDeployment(t, workerConfig(2, `upgrade_handover = "manual"`, "-boot-delay", "200ms"))
	b, bin, pidfile := upgradable(t, d)
	servingGenerations(t, b.Addr(), 2)

	l := steadyLoad(b)
	install(t, v2, bin)
	b.signal(t, syscall.SIGUSR2)
	// The old master lets go of the control socket once the new one is
	// ready, and the new one takes it over.
	st := b.waitStatus(t, "the new master on the control socket", 30*time.Second, func(st control.Status) bool {
		return st.Pid != b.Pid
	})
	if st.Version != upgradeVersion || len(inState(st, "ready")) != 2 {
		t.Errorf("the new master: version %q, %d ready workers; want %s with 2", st.Version, len(inState(st, "ready")), upgradeVersion)
	}
	if _, err := os.Stat(pidfile + ".oldbin"); err != nil {
		t.Errorf("no %s.oldbin while both masters run: %v", pidfile, err)
	}
	newPid := readPid(t, pidfile)
	if newPid != st.Pid {
		t.Errorf("the pidfile names %d, the control socket's master is %d", newPid, st.Pid)
	}
	// The control socket moved to the new master at once.
	waitFor(t, waitTimeout, "the new master's control socket", func() bool {
		return cli(t, nil, "status", "--pid", pidfile).code == 0
	})
	if st := cli(t, nil, "status", "--pid", pidfile); !strings.Contains(st.stdout, fmt.Sprintf("pid %d, baton %s", newPid, upgradeVersion)) {
		t.Errorf("status during the manual hand-over: %q, want the new master", st.stdout)
	}
	// Both masters' workers serve now; WINCH stops the old ones.
	b.signal(t, syscall.SIGWINCH)
	waitFor(t, 30*time.Second, "the old master's workers to exit after WINCH", func() bool { return len(workersOf(b.Pid)) == 0 })
	time.Sleep(300 * time.Millisecond) // only the new master's workers serve
	b.signal(t, syscall.SIGTERM)
	if code := b.waitExit(t, 30*time.Second); code != 0 {
		t.Errorf("old master exited %d", code)
	}
	res := l.stop()
	assertNoFailures(t, res)
	if readPid(t, pidfile) != newPid || !processAlive(newPid) {
		t.Fatalf("the new master %d is not the one left serving", newPid)
	}
	stopNewMaster(t, pidfile)
}

// Under systemd the new master announces itself as the service's main
// process before the old one exits, and the old one never says STOPPING=1.
func TestUpgradeTellsSystemdTheNewMainPid(t *testing.T) {
	t.Parallel()
	v2 := secondBuild(t)
	sd := newFakeSystemd(t)
	d := newDeployment(t, workerConfig(2, ""))
	dir := t.TempDir()
	bin, pidfile := filepath.Join(dir, "baton"), filepath.Join(dir, "baton.pid")
	install(t, batonBin, bin)
	b := launch(t, batonSpec{bin: bin, args: []string{"run", "-c", d.path, "--pid", pidfile, "--upgrade-mode", "new-master"},
		env: []string{"NOTIFY_SOCKET=" + sd.path}})
	b.waitStarted(t)
	sd.next(t, "READY", b.Pid)

	install(t, v2, bin)
	b.signal(t, syscall.SIGUSR2)
	var newPid int
	deadline := time.After(30 * time.Second)
	for newPid == 0 {
		select {
		case m := <-sd.got:
			if _, stopping := m.fields["STOPPING"]; stopping {
				t.Fatalf("STOPPING=1 from pid %d before the new master took over", m.pid)
			}
			if v, ok := m.fields["MAINPID"]; ok {
				newPid, _ = strconv.Atoi(v)
				if int(m.pid) != newPid || m.fields["READY"] != "1" {
					t.Errorf("MAINPID=%s READY=%s sent by pid %d; want the new master to announce itself", v, m.fields["READY"], m.pid)
				}
			}
		case <-deadline:
			t.Fatal("no MAINPID= from the new master")
		}
	}
	if code := b.waitExit(t, 30*time.Second); code != 0 {
		t.Errorf("old master exited %d", code)
	}
	for {
		select {
		case m := <-sd.got:
			if _, stopping := m.fields["STOPPING"]; stopping && int(m.pid) == b.Pid {
				t.Errorf("the old master said STOPPING=1 after handing over: systemd would stop the service")
			}
			continue
		default:
		}
		break
	}
	if newPid != readPid(t, pidfile) {
		t.Errorf("MAINPID %d, pidfile %d", newPid, readPid(t, pidfile))
	}
	stopNewMaster(t, pidfile)
}

// Under systemd's watchdog the old master's WATCHDOG_PID names it; the
// new master must not inherit it, or it never pings and systemd kills
// the service WatchdogSec after the upgrade (issue 13).
func TestUpgradedMasterPingsSystemdsWatchdog(t *testing.T) {
	t.Parallel()
	v2 := secondBuild(t)
	b, sd, bin, pidfile := underSystemdWatchdog(t, "--upgrade-mode", "new-master")
	sd.next(t, "WATCHDOG", b.Pid)

	install(t, v2, bin)
	b.signal(t, syscall.SIGUSR2)
	newPid := 0
	deadline := time.After(30 * time.Second)
	for {
		select {
		case m := <-sd.got:
			if v, ok := m.fields["MAINPID"]; ok {
				newPid, _ = strconv.Atoi(v)
				continue
			}
			if newPid != 0 && int(m.pid) == newPid && m.fields["WATCHDOG"] == "1" {
				stopNewMaster(t, pidfile)
				return
			}
		case <-deadline:
			t.Fatalf("no WATCHDOG=1 from the new master (pid %d) within 30 s of the upgrade", newPid)
		}
	}
}

// asSystemd is a wrapper that starts bin as systemd starts a service
// with a watchdog: WATCHDOG_PID is the master's own pid.
func asSystemd(t *testing.T, bin string) string {
	t.Helper()
	wrapper := filepath.Join(filepath.Dir(bin), "as-systemd")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nexport WATCHDOG_PID=$$\nexec "+bin+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return wrapper
}

// underSystemdWatchdog starts a baton of one worker as systemd would, with
// WatchdogSec=1s: from a copy of the binary that an upgrade may replace
// (bin), through a wrapper that makes WATCHDOG_PID the master's own pid, with
// a pidfile, reporting to a fake systemd. extra are more flags for run.
func underSystemdWatchdog(t *testing.T, extra ...string) (b *Baton, sd *fakeSystemd, bin, pidfile string) {
	t.Helper()
	sd = newFakeSystemd(t)
	d := newDeployment(t, workerConfig(1, ""))
	dir := t.TempDir()
	bin, pidfile = filepath.Join(dir, "baton"), filepath.Join(dir, "baton.pid")
	install(t, batonBin, bin)
	b = launch(t, batonSpec{bin: asSystemd(t, bin), args: append([]string{"run", "-c", d.path, "--pid", pidfile}, extra...),
		env: []string{"NOTIFY_SOCKET=" + sd.path, "WATCHDOG_USEC=1000000"}})
	b.waitStarted(t)
	return b, sd, bin, pidfile
}
