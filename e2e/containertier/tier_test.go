//go:build containertier

package containertier

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-pm/baton/e2e/internal/tiertest"
)

// TestContainerRecipe builds examples/container/Dockerfile and runs it as
// shipped: baton as PID 1 serves uvicorn workers; orphans are reaped; a HUP
// reloads under load with no failed request; podman stop is a lame-duck
// drain ending in exit 0.
func TestContainerRecipe(t *testing.T) {
	requirements(t)
	image := buildImage(t)
	c := runContainer(t, image)
	waitServing(t, c)

	t.Run("baton is PID 1", func(t *testing.T) { checkPID1(t, c) })
	t.Run("orphans are reaped", func(t *testing.T) { checkOrphansReaped(t, c) })
	t.Run("HUP reloads under load", func(t *testing.T) { checkReload(t, c) })
	t.Run("podman stop is a lame-duck drain", func(t *testing.T) { checkStop(t, c) })
}

// TestContainerWithoutUnshare runs the recipe under a seccomp profile
// that refuses unshare, as Docker's default profile does without
// CAP_SYS_ADMIN: the master cannot give a thread a private file table, says
// so, and makes the retiring workers deaf with helper processes instead;
// the reload under load still loses no request.
func TestContainerWithoutUnshare(t *testing.T) {
	requirements(t)
	image := buildImage(t)
	profile := filepath.Join(t.TempDir(), "no-unshare.json")
	if err := os.WriteFile(profile, []byte(`{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [`+
		`{"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	c := runContainer(t, image, "--security-opt", "seccomp="+profile)
	waitServing(t, c)
	checkReload(t, c)
	if _, _, ok := c.logRecord(unlistenFallback); !ok {
		t.Errorf("no fallback logged under a profile that refuses unshare; log:\n%s", c.logs())
	}
}

// waitServing waits for /readyz to say 200 and the app to answer.
func waitServing(t *testing.T, c *container) {
	t.Helper()
	if !tiertest.WaitUntil(time.Minute, poll, func() bool {
		status, _, err := c.netns.Get(metricsAddr, "/readyz", 5*time.Second)
		return err == nil && status == 200
	}) {
		t.Fatalf("/readyz never said 200; baton's log:\n%s", c.logs())
	}
	if status, body, err := c.netns.Get(appAddr, "/", 10*time.Second); err != nil || status != 200 || !strings.HasPrefix(body, "hello from pid ") {
		t.Fatalf("GET / once ready: %d %q %v", status, body, err)
	}
}

func checkPID1(t *testing.T, c *container) {
	cmdline := mustPodman(t, time.Minute, "exec", c.name, "sh", "-c", `tr '\0' ' ' </proc/1/cmdline`)
	t.Logf("PID 1: %s", cmdline)
	if !strings.HasPrefix(cmdline, "baton run ") || !strings.Contains(cmdline, "--shutdown-delay 5s") {
		t.Errorf("PID 1 is %q, want the recipe's baton run with --shutdown-delay 5s", cmdline)
	}
	if line, _, ok := c.logRecord("reaping orphaned processes (child subreaper)"); !ok || !strings.Contains(line, "pid1=true") {
		t.Errorf("baton did not log that it reaps as PID 1: %q", line)
	}
}

// checkOrphansReaped: a process whose parent exits inside the container
// is adopted by PID 1; baton must reap it when it exits. A control first
// shows that the check sees a zombie when there is one: a child of a
// parent that never waits.
func checkOrphansReaped(t *testing.T, c *container) {
	mustPodman(t, time.Minute, "exec", "-d", c.name, "sh", "-c", "sleep 0.2 & exec sleep 3")
	if !tiertest.WaitUntil(10*time.Second, poll, func() bool { return len(c.zombies(t)) > 0 }) {
		t.Fatal("control: a child of a process that never waits did not show as a zombie: the check cannot see zombies")
	}
	// Orphans: the shell exits at once, its sleeps are PID 1's.
	for range 5 {
		mustPodman(t, time.Minute, "exec", c.name, "sh", "-c", "sleep 0.5 & sleep 1 & exit 0")
	}
	time.Sleep(5 * time.Second) // the control's parent and every orphan are gone by then
	if z := c.zombies(t); len(z) > 0 {
		t.Errorf("zombies in the container after its orphans exited: %v", z)
	}
	out := mustPodman(t, time.Minute, "exec", c.name, "sh", "-c", "grep -l '^sleep$' /proc/[0-9]*/comm 2>/dev/null || true")
	if strings.TrimSpace(out) != "" {
		t.Errorf("sleep processes still there: %s", out)
	}
}

// checkReload: HUP under load, from inside the container's network; no
// request fails, and new workers answer after it.
func checkReload(t *testing.T, c *container) {
	l := c.startLoad(t, 4)
	time.Sleep(time.Second)
	hupAt := time.Now()
	mustPodman(t, time.Minute, "kill", "-s", "HUP", c.name)
	line, doneAt := c.waitLog(t, "reload succeeded", 2*time.Minute)
	time.Sleep(time.Second)
	outcomes := l.Stop()
	all := tiertest.Count(outcomes, time.Time{}, time.Now())
	t.Logf("%s\n%d requests, failed %v, %d answering workers (old and new)", line, all.OK, all.Failed, len(all.Answers))
	if len(all.Failed) > 0 {
		t.Errorf("requests failed across the reload: %v", all.Failed)
	}
	before := tiertest.Count(outcomes, time.Time{}, hupAt)
	after := tiertest.Count(outcomes, doneAt.Add(time.Second/2), time.Now())
	if before.OK == 0 || len(after.Answers) == 0 {
		t.Fatalf("no answers before the HUP (%d) or after the reload (%v)", before.OK, after.Answers)
	}
	for body := range after.Answers {
		if before.Answers[body] > 0 {
			t.Errorf("%q answered both before the HUP and after the reload: not a new worker", body)
		}
	}
	if z := c.zombies(t); len(z) > 0 {
		t.Errorf("zombies after the reload: %v", z)
	}
	checkUnlistenPath(t, c)
}

// unlistenFallback is the master's warning when it cannot remove a
// retiring worker's registrations from a thread of its own.
const unlistenFallback = "cannot remove a retiring worker's listener registrations from a thread of the master's own; " +
	"a helper process does it from now on (one fork and exec of baton per retiring worker)"

// checkUnlistenPath: the master made the old workers deaf from a thread
// with a private file table where the container lets a process
// unshare(CLONE_FILES), and said it fell back to helper processes where
// the container's seccomp profile refuses it (Docker's default does).
// Which one the container allows is asked of the container itself.
func checkUnlistenPath(t *testing.T, c *container) {
	out, err := podman(time.Minute, "exec", c.name, "python3", "-c",
		"import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "+
			"print('refused' if libc.unshare(0x400) != 0 else 'allowed', os.strerror(ctypes.get_errno()))")
	if err != nil {
		t.Fatalf("asking the container whether unshare(CLONE_FILES) is allowed: %v: %s", err, out)
	}
	refused := strings.HasPrefix(strings.TrimSpace(out), "refused")
	_, _, fellBack := c.logRecord(unlistenFallback)
	t.Logf("unshare(CLONE_FILES) in the container: %s; the master fell back to helper processes: %v", strings.TrimSpace(out), fellBack)
	if refused != fellBack {
		t.Errorf("unshare(CLONE_FILES) refused in the container: %v, but the master's log says it fell back: %v", refused, fellBack)
	}
}

// checkStop: podman stop sends TERM; /readyz is 503 at once while every
// request still succeeds for shutdown_delay; then the drain, and baton
// exits 0.
func checkStop(t *testing.T, c *container) {
	l := c.startLoad(t, 4)
	time.Sleep(time.Second)
	stop := exec.Command("podman", append(podmanGlobal, "stop", "-t", "60", c.name)...)
	termAt := time.Now()
	if err := stop.Start(); err != nil {
		t.Fatal(err)
	}
	var body string
	if !tiertest.WaitUntil(30*time.Second, poll, func() bool {
		var status int
		status, body, _ = c.netns.Get(metricsAddr, "/readyz", 5*time.Second)
		return status == 503
	}) {
		t.Fatalf("/readyz never said 503 after podman stop; baton's log:\n%s", c.logs())
	}
	seen503 := time.Now()
	if !strings.Contains(body, "lame duck") {
		t.Errorf("/readyz during the delay: %q, want the lame duck named", body)
	}
	if err := stop.Wait(); err != nil {
		t.Fatalf("podman stop: %v", err)
	}
	stopped := time.Since(termAt)
	outcomes := l.Stop()
	_, overAt := c.waitLog(t, "shutdown_delay is over: stopping the workers", time.Second)
	delay := tiertest.Count(outcomes, termAt, overAt)
	after503 := tiertest.Count(outcomes, seen503, overAt)
	t.Logf("podman stop took %v; TERM to the end of the delay %v: %d requests ended in it (%d after /readyz was seen 503), failed %v",
		stopped.Round(time.Millisecond), overAt.Sub(termAt).Round(time.Millisecond), delay.OK, after503.OK, delay.Failed)
	if len(delay.Failed) > 0 {
		t.Errorf("requests failed during the lame-duck delay: %v", delay.Failed)
	}
	if after503.OK == 0 {
		t.Errorf("no request succeeded while /readyz said 503")
	}
	if stopped < shutdownDelay {
		t.Errorf("podman stop took %v, less than shutdown_delay (%v)", stopped, shutdownDelay)
	}
	code := strings.TrimSpace(mustPodman(t, time.Minute, "inspect", "--format", "{{.State.ExitCode}}", c.name))
	if code != "0" {
		t.Errorf("baton exited %s, want 0; its log:\n%s", code, c.logs())
	}
	if _, _, ok := c.logRecord("shutdown complete"); !ok {
		t.Errorf("no \"shutdown complete\" in baton's log:\n%s", c.logs())
	}
	if logs := c.logs(); strings.Contains(logs, "StopSignal SIGTERM failed") || strings.Contains(logs, "killing them") {
		t.Errorf("the stop was not graceful:\n%s", logs)
	}
}
