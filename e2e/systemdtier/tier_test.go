//go:build systemdtier

package systemdtier

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/baton-pm/baton/e2e/internal/tiertest"
)

// importDelay is how long the app takes to import, in seconds: every start
// and reload of a worker takes at least this long.
const importDelay = 2

// TestSystemdTier runs baton under a real systemd 252 (Debian 12 booted in
// systemd-nspawn) with the units of contrib/systemd as shipped: start,
// reload, a failed reload, a crash of the main process, stop and socket
// activation, in one container, one after the other.
func TestSystemdTier(t *testing.T) {
	c := bootContainer(t)
	installApp(t, c, importDelay)

	t.Run("start is ready-gated", func(t *testing.T) { checkStart(t, c) })
	t.Run("containment with Delegate=yes", func(t *testing.T) { checkContainment(t, c) })
	t.Run("reload under load", func(t *testing.T) { checkReload(t, c) })
	t.Run("broken app: reload fails, old generation serves", func(t *testing.T) { checkBrokenReload(t, c) })
	t.Run("kill -9 of the main process", func(t *testing.T) { checkKillMain(t, c) })
	t.Run("stop is graceful", func(t *testing.T) { checkStop(t, c, "") })
	t.Run("socket activation queues during a slow start", func(t *testing.T) { checkSocketActivation(t, c) })
}

// ensureRunning brings the unit back to a known state: the good app, the
// usual import time, the service active.
func ensureRunning(t *testing.T, c *container) {
	t.Helper()
	c.writeFile(t, "/srv/app/app.py", []byte(appPy), 0o644)
	setImportDelay(t, c, importDelay)
	if state := c.show(t, unitName, "ActiveState")["ActiveState"]; state != "active" {
		c.exec(time.Minute, "systemctl", "reset-failed", unitName)
		c.must(t, "systemctl", "start", unitName)
	}
}

func checkStart(t *testing.T, c *container) {
	out, took, err := c.timed("systemctl", "start", unitName)
	if err != nil {
		t.Fatalf("systemctl start: %v\n%s\n%s", err, out, c.journal(time.Now().Add(-time.Minute)))
	}
	state, _ := c.exec(time.Minute, "systemctl", "is-active", unitName)
	r, rerr := c.get("/", 10*time.Second)
	t.Logf("systemctl start took %v (app import %d s); is-active right after: %s; first request: %s",
		took.Round(time.Millisecond), importDelay, strings.TrimSpace(state), kindOrOK(r, rerr))
	if took < importDelay*time.Second {
		t.Errorf("systemctl start returned after %v, before the workers could have imported the app (%d s)", took, importDelay)
	}
	if strings.TrimSpace(state) != "active" {
		t.Errorf("is-active right after systemctl start: %q", state)
	}
	if kind := tiertest.FailureKind(r.status, rerr); kind != "" {
		t.Errorf("the first request after start failed: %s", kind)
	} else if r.latency > time.Second {
		t.Errorf("the first request after start took %v: the workers were not ready when start returned", r.latency)
	}
	st := c.status(t)
	for _, w := range st.Workers {
		if w.State != "ready" {
			t.Errorf("worker %d (pid %d) is %s right after start", w.Slot, w.Pid, w.State)
		}
	}
	props := c.show(t, unitName, "StatusText", "MainPID")
	t.Logf("MainPID=%s StatusText=%q", props["MainPID"], props["StatusText"])
	if !strings.Contains(props["StatusText"], "2/2 workers ready") {
		t.Errorf("systemctl's status line is %q, want baton's STATUS= with 2/2 workers ready", props["StatusText"])
	}
}

// checkContainment: with Delegate=yes, baton puts every worker in a cgroup
// of its own below the unit's.
func checkContainment(t *testing.T, c *container) {
	ensureRunning(t, c)
	st := c.status(t)
	t.Logf("baton status --json: containment %q", st.Containment)
	if !strings.HasPrefix(st.Containment, "cgroup "+unitCgroup+"/") {
		t.Errorf("containment is %q, want a cgroup below the unit's %s (Delegate=yes)", st.Containment, unitCgroup)
	}
	tree := strings.TrimPrefix(st.Containment, "cgroup ")
	for _, w := range st.Workers {
		out, err := c.exec(time.Minute, "cat", fmt.Sprintf("/proc/%d/cgroup", w.Pid))
		if err != nil {
			t.Errorf("worker %d: %v", w.Pid, err)
			continue
		}
		var v2 string
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "0::") {
				v2 = strings.TrimPrefix(line, "0::")
			}
		}
		t.Logf("worker slot %d pid %d: cgroup %s", w.Slot, w.Pid, v2)
		if !strings.HasPrefix(v2, tree+"/") {
			t.Errorf("worker %d is in the cgroup %q, not in one of its own below %s", w.Pid, v2, tree)
		}
	}
}

func checkReload(t *testing.T, c *container) {
	ensureRunning(t, c)
	before := c.status(t).Generation
	since := time.Now()
	l := c.startLoad(4, 10*time.Second)
	time.Sleep(time.Second)
	out, took, err := c.timed("systemctl", "reload", unitName)
	after := c.status(t)
	time.Sleep(time.Second)
	// Once the reload has returned and the old workers had a second to
	// drain, only the new generation answers.
	var late []string
	for range 20 {
		r, err := c.get("/", 10*time.Second)
		if tiertest.FailureKind(r.status, err) != "" || r.gen != strconv.Itoa(after.Generation) {
			late = append(late, fmt.Sprintf("%s gen %s", tiertest.FailureKind(r.status, err), r.gen))
		}
	}
	res := resultOf(l.Stop())
	t.Logf("systemctl reload took %v (app import %d s), generation %d -> %d; load: %v", took.Round(time.Millisecond), importDelay, before, after.Generation, res)
	if err != nil {
		t.Fatalf("systemctl reload: %v\n%s\n%s", err, out, c.journal(time.Now().Add(-time.Minute)))
	}
	if took < importDelay*time.Second {
		t.Errorf("systemctl reload returned after %v, before the new workers could have imported the app (%d s)", took, importDelay)
	}
	if after.Generation != before+1 {
		t.Errorf("generation %d after the reload, want %d", after.Generation, before+1)
	}
	for _, w := range after.Workers {
		if w.Generation == after.Generation && w.State != "ready" {
			t.Errorf("new worker %d (pid %d) is %s when systemctl reload returned", w.Slot, w.Pid, w.State)
		}
	}
	if res.failures() != 0 || res.ok == 0 {
		t.Errorf("requests during the reload: %v", res)
	}
	if len(late) != 0 {
		t.Errorf("requests a second after the reload returned, not answered by generation %d: %v", after.Generation, late)
	}
	if active := c.show(t, unitName, "ActiveState")["ActiveState"]; active != "active" {
		t.Errorf("the unit is %s after the reload", active)
	}
	// drain_unlisten made each retiring worker deaf first: nspawn's
	// seccomp filter lets pidfd_getfd through (--system-call-filter).
	for _, line := range strings.Split(c.journal(since), "\n") {
		if strings.Contains(line, "could not make a retiring worker stop accepting") || strings.Contains(line, "pidfd_getfd") {
			t.Errorf("journal: %s", line)
		}
	}
}

func checkBrokenReload(t *testing.T, c *container) {
	ensureRunning(t, c)
	before := c.status(t)
	t.Cleanup(func() { c.writeFile(t, "/srv/app/app.py", []byte(appPy), 0o644) })
	c.writeFile(t, "/srv/app/app.py", []byte(brokenAppPy), 0o644)
	since := time.Now()
	l := c.startLoad(4, 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	out, took, err := c.timed("systemctl", "reload", unitName)
	time.Sleep(time.Second)
	res := resultOf(l.Stop())
	props := c.show(t, unitName, "ActiveState", "SubState", "MainPID")
	after := c.status(t)
	journal := c.journal(since)
	t.Logf("systemctl reload with a syntax error: %v after %v (%s); unit %s/%s; generation %d -> %d; load: %v",
		err, took.Round(time.Millisecond), strings.TrimSpace(out), props["ActiveState"], props["SubState"], before.Generation, after.Generation, res)
	if err == nil {
		t.Errorf("systemctl reload succeeded with a broken app")
	}
	if props["ActiveState"] != "active" {
		t.Errorf("the unit is %s/%s after the failed reload, want active", props["ActiveState"], props["SubState"])
	}
	if strconv.Itoa(before.Pid) != props["MainPID"] {
		t.Errorf("MainPID %s after the failed reload, was %d", props["MainPID"], before.Pid)
	}
	if res.failures() != 0 || res.ok == 0 {
		t.Errorf("requests during the failed reload: %v", res)
	}
	for g := range res.gens {
		if g != strconv.Itoa(before.Generation) {
			t.Errorf("generation %s answered during the failed reload; only the old generation %d should", g, before.Generation)
		}
	}
	if after.Generation != before.Generation {
		t.Errorf("generation %d serves after the failed reload, want the old %d", after.Generation, before.Generation)
	}
	for _, want := range []string{"SyntaxError", "reload failed"} {
		if !strings.Contains(journal, want) {
			t.Errorf("the journal does not say %q:\n%s", want, journal)
		}
	}
	for _, line := range strings.Split(journal, "\n") {
		if strings.Contains(line, "reload failed") || strings.Contains(line, "SyntaxError") || strings.Contains(line, "Reload failed") {
			t.Logf("journal: %s", line)
		}
	}

	// With the app repaired, the next reload succeeds.
	c.writeFile(t, "/srv/app/app.py", []byte(appPy), 0o644)
	if out, err := c.exec(2*time.Minute, "systemctl", "reload", unitName); err != nil {
		t.Errorf("systemctl reload after repairing the app: %v\n%s", err, out)
	}
}

func checkKillMain(t *testing.T, c *container) {
	ensureRunning(t, c)
	before := c.show(t, unitName, "MainPID", "NRestarts")
	main := before["MainPID"]
	old := c.unitProcesses(t)
	since := time.Now()
	l := c.startLoad(2, 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	c.must(t, "kill", "-9", main)
	var after map[string]string
	restarted := tiertest.WaitUntil(60*time.Second, poll, func() bool {
		after = c.show(t, unitName, "MainPID", "NRestarts", "ActiveState", "SubState")
		return after["ActiveState"] == "active" && after["MainPID"] != main && after["MainPID"] != "0"
	})
	took := time.Since(since)
	time.Sleep(500 * time.Millisecond)
	res := resultOf(l.Stop())
	now := c.unitProcesses(t)
	t.Logf("kill -9 %s: unit %s/%s again after %v, MainPID %s, NRestarts %s -> %s; load (not checked: requests the killed workers held fail): %v",
		main, after["ActiveState"], after["SubState"], took.Round(time.Millisecond), after["MainPID"], before["NRestarts"], after["NRestarts"], res)
	t.Logf("the unit's processes before: %v; after: %v", old, now)
	if !restarted {
		t.Fatalf("systemd did not restart the unit within 60 s of kill -9 of its main process:\n%s", c.journal(since))
	}
	n0, _ := strconv.Atoi(before["NRestarts"])
	if n1, _ := strconv.Atoi(after["NRestarts"]); n1 != n0+1 {
		t.Errorf("NRestarts %d after kill -9, want %d", n1, n0+1)
	}
	newMain, _ := strconv.Atoi(after["MainPID"])
	alive := map[int]proc{}
	for _, p := range now {
		alive[p.pid] = p
	}
	for _, p := range old {
		if q, ok := alive[p.pid]; ok && q.cmd == p.cmd {
			t.Errorf("process %d (%s) of the killed master is still in the unit's cgroup", p.pid, p.cmd)
		}
		if out, err := c.exec(time.Minute, "kill", "-0", strconv.Itoa(p.pid)); err == nil {
			t.Errorf("process %d (%s) of the killed master is still alive (%s)", p.pid, p.cmd, out)
		}
	}
	// Everything in the unit's cgroup is the new master or its descendant.
	for _, p := range now {
		if !descends(now, p.pid, newMain) {
			t.Errorf("process %d (%s, parent %d) in the unit's cgroup does not descend from the new master %d", p.pid, p.cmd, p.ppid, newMain)
		}
	}
	if r, err := c.get("/", 10*time.Second); tiertest.FailureKind(r.status, err) != "" {
		t.Errorf("a request after the restart: %s", tiertest.FailureKind(r.status, err))
	}
}

// descends says whether pid is ancestor or below it, following the
// parents recorded in procs.
func descends(procs []proc, pid, ancestor int) bool {
	parent := map[int]int{}
	for _, p := range procs {
		parent[p.pid] = p.ppid
	}
	for range len(procs) + 1 {
		if pid == ancestor {
			return true
		}
		next, ok := parent[pid]
		if !ok {
			return false
		}
		pid = next
	}
	return false
}

// checkStop: systemctl stop while a 3-s request is in flight. The request
// completes, the unit ends with Result=success and its cgroup is empty.
// what names the situation in messages ("after an upgrade").
func checkStop(t *testing.T, c *container, what string) {
	if what == "" {
		ensureRunning(t, c)
	}
	type answer struct {
		r   response
		err error
	}
	done := make(chan answer, 1)
	since := time.Now()
	go func() {
		r, err := c.get("/sleep", 30*time.Second)
		done <- answer{r, err}
	}()
	time.Sleep(500 * time.Millisecond)
	out, took, err := c.timed("systemctl", "stop", unitName)
	var a answer
	select {
	case a = <-done:
	case <-time.After(30 * time.Second):
		a.err = fmt.Errorf("no answer 30 s after the stop")
	}
	props := c.show(t, unitName, "ActiveState", "SubState", "Result")
	left := c.unitProcesses(t)
	t.Logf("systemctl stop%s took %v; the in-flight 3-s request: %v (%v after it was sent); unit %s/%s Result=%s; processes left in its cgroup: %v",
		what, took.Round(time.Millisecond), kindOrOK(a.r, a.err), time.Since(since).Round(time.Millisecond), props["ActiveState"], props["SubState"], props["Result"], left)
	if err != nil {
		t.Errorf("systemctl stop%s: %v\n%s", what, err, out)
	}
	if kind := tiertest.FailureKind(a.r.status, a.err); kind != "" {
		t.Errorf("the request in flight during systemctl stop%s failed: %s", what, kind)
	}
	if props["Result"] != "success" || props["ActiveState"] != "inactive" {
		t.Errorf("after systemctl stop%s the unit is %s/%s with Result=%s, want inactive and success", what, props["ActiveState"], props["SubState"], props["Result"])
	}
	if len(left) != 0 {
		t.Errorf("the unit's cgroup is not empty after systemctl stop%s: %v", what, left)
	}
	if t.Failed() {
		t.Logf("journal:\n%s", c.journal(since))
	}
}

func kindOrOK(r response, err error) string {
	if kind := tiertest.FailureKind(r.status, err); kind != "" {
		return kind
	}
	return fmt.Sprintf("200 from gen %s in %v", r.gen, r.latency.Round(time.Millisecond))
}

// checkSocketActivation: with app.service stopped and app.socket listening,
// requests start the service, wait in the socket's queue during its slow
// start (3 s of import) and are all answered.
func checkSocketActivation(t *testing.T, c *container) {
	c.writeFile(t, "/srv/app/app.py", []byte(appPy), 0o644)
	const slowImport = 3
	setImportDelay(t, c, slowImport)
	t.Cleanup(func() { setImportDelay(t, c, importDelay) })
	if props := c.show(t, unitName, "ActiveState"); props["ActiveState"] != "inactive" {
		c.must(t, "systemctl", "stop", unitName)
	}
	if sock := c.show(t, "app.socket", "ActiveState")["ActiveState"]; sock != "active" {
		t.Fatalf("app.socket is %s, want active (it holds the listener while the service is stopped)", sock)
	}
	since := time.Now()
	l := c.startLoad(4, 30*time.Second)
	var props map[string]string
	active := tiertest.WaitUntil(60*time.Second, poll, func() bool {
		props = c.show(t, unitName, "ActiveState", "MainPID")
		return props["ActiveState"] == "active"
	})
	activeAfter := time.Since(since)
	time.Sleep(time.Second)
	res := resultOf(l.Stop())
	t.Logf("requests to the stopped service: it was active %v later (app import %d s), MainPID %s; load: %v",
		activeAfter.Round(time.Millisecond), slowImport, props["MainPID"], res)
	if !active {
		t.Fatalf("requests to app.socket did not start app.service within 60 s:\n%s", c.journal(since))
	}
	if res.failures() != 0 || res.ok == 0 {
		t.Errorf("requests during the socket-activated start: %v", res)
	}
	if res.maxLatency < (slowImport-1)*time.Second {
		t.Errorf("the slowest request took %v: none waited for the %d-s start, so none was queued during it", res.maxLatency, slowImport)
	}
	// One start, by the socket: the service neither failed nor restarted.
	if journal := c.journal(since); strings.Count(journal, "Started app.service") != 1 {
		t.Errorf("app.service was not started exactly once by its socket:\n%s", journal)
	}
	if pid := c.show(t, unitName, "MainPID")["MainPID"]; pid != props["MainPID"] {
		t.Errorf("MainPID went from %s to %s", props["MainPID"], pid)
	}
}
