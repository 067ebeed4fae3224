package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// Preload mode with a real uvicorn: one template per generation imports
// the app, the workers are forked from it and are baton's own children,
// a reload imports the new code, and a broken import is refused with
// its traceback while the old generation serves.

// preloadApp answers with the worker's pid, the pid of the process that
// imported the module (the template), and the version read at import.
const preloadApp = `import json, os, time

IMPORT_PID = os.getpid()
with open(os.path.join(os.path.dirname(__file__), "VERSION")) as f:
    VERSION = f.read().strip()

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/block":
        time.sleep(60)  # blocks the event loop, as a sync call in an async view does
    body = json.dumps({"pid": os.getpid(), "import_pid": IMPORT_PID, "version": VERSION}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
`

type preloadReply struct {
	Pid       int    `json:"pid"`
	ImportPid int    `json:"import_pid"`
	Version   string `json:"version"`
}

func getPreload(t *testing.T, addr string) preloadReply {
	t.Helper()
	r, err := get(addr, "/", 10*time.Second)
	if err != nil || r.status != 200 {
		t.Fatalf("GET /: %v (status %d)", err, r.status)
	}
	var p preloadReply
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("GET /: %q: %v", r.body, err)
	}
	return p
}

func writePreloadApp(t *testing.T, version string) string {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	writeFile(t, dir, "app.py", preloadApp, 0o644)
	writeFile(t, dir, "VERSION", version, 0o644)
	return dir
}

// templateOf is the one template of generation gen in st.
func templateOf(t *testing.T, st control.Status, gen int) control.Template {
	t.Helper()
	for _, tm := range st.Templates {
		if tm.Generation == gen {
			return tm
		}
	}
	t.Fatalf("no template for generation %d: %+v", gen, st.Templates)
	return control.Template{}
}

func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatalf("cgroup of %d: %v", pid, err)
	}
	return strings.TrimSpace(string(data))
}

func TestPreloadForksWorkersThatReloadNewCodeAndRefuseABrokenImport(t *testing.T) {
	t.Parallel()
	requireTool(t, "/usr/bin/uvicorn")
	for _, mode := range containmentModes {
		t.Run("cgroup="+mode, func(t *testing.T) {
			t.Parallel()
			dir := writePreloadApp(t, "v1")
			b := startBaton(t, "run", "-w", "2", "--cgroup", mode, "--chdir", dir, "--preload", "app",
				"--graceful-timeout", "20s", "--", "/usr/bin/uvicorn", "--fd", "3", "app:app")
			st := b.waitReady(t, 2)
			tmpl := templateOf(t, st, 1)
			if tmpl.State != "ready" || tmpl.ImportTime <= 0 {
				t.Errorf("template %+v, want ready with its import time", tmpl)
			}

			// Forked from the template, imported there once, and then
			// baton's own children in groups of their own.
			seen := map[int]bool{}
			waitFor(t, waitTimeout, "both workers to answer", func() bool {
				p := getPreload(t, b.Addr())
				if p.ImportPid != tmpl.Pid || p.Version != "v1" {
					t.Fatalf("answer %+v: want the app imported by the template %d, version v1", p, tmpl.Pid)
				}
				seen[p.Pid] = true
				return len(seen) == 2
			})
			for _, w := range st.WorkerList {
				ps := statOf(t, w.Pid)
				if w.Template != tmpl.Pid || ps.ppid != b.Pid || ps.pgrp != w.Pid {
					t.Errorf("worker %d: template %d, parent %d, process group %d; want template %d, parent baton %d, its own group",
						w.Pid, w.Template, ps.ppid, ps.pgrp, tmpl.Pid, b.Pid)
				}
				if mode == "auto" && cgroupOf(t, w.Pid) == cgroupOf(t, tmpl.Pid) {
					t.Errorf("worker %d shares the template's cgroup %s", w.Pid, cgroupOf(t, w.Pid))
				}
			}

			// Reloads under load import the new code in a new template.
			l := steadyLoad(b)
			for _, step := range []struct {
				gen     int
				version string
			}{{2, "v2"}, {3, "v3"}} {
				writeFile(t, dir, "VERSION", step.version, 0o644)
				if r := b.cli(t, "reload"); r.code != 0 {
					t.Fatalf("reload to %s: exit %d\n%s%s", step.version, r.code, r.stdout, r.stderr)
				}
				st := b.mustStatus(t)
				next := templateOf(t, st, step.gen)
				// baton reload answers once the old workers accept no
				// more: from then on only the new code answers.
				for range 10 {
					if p := getPreload(t, b.Addr()); p.Version != step.version || p.ImportPid != next.Pid {
						t.Errorf("after the reload: %+v, want version %s imported by template %d", p, step.version, next.Pid)
					}
				}
			}
			time.Sleep(300 * time.Millisecond)
			assertNoFailures(t, l.stop())
			b.waitStatus(t, "the old templates to exit", waitTimeout, func(st control.Status) bool {
				return len(st.Templates) == 1
			})
			if alive(tmpl.Pid) {
				t.Errorf("generation 1's template %d still runs", tmpl.Pid)
			}

			// A broken import: refused with the traceback, old code serves.
			serving := templateOf(t, b.mustStatus(t), 3)
			writeFile(t, dir, "app.py", "import os\nIMPORT_PID = 1 // 0\n", 0o644)
			l = steadyLoad(b)
			res := b.cli(t, "reload")
			assertNoFailures(t, l.stop())
			if res.code != 1 || !strings.Contains(res.stdout+res.stderr, "ZeroDivisionError") ||
				!strings.Contains(res.stdout+res.stderr, "Traceback") {
				t.Errorf("baton reload of a broken import: exit %d, output:\n%s%s\nwant exit 1 with the traceback",
					res.code, res.stdout, res.stderr)
			}
			st = b.mustStatus(t)
			if st.Generation != 3 || len(inState(st, "ready")) != 2 {
				t.Errorf("after the broken import: generation %d with %d ready, want generation 3 with 2", st.Generation, len(inState(st, "ready")))
			}
			for _, w := range st.WorkerList {
				if w.Generation != 3 {
					t.Errorf("a worker of the broken generation exists: %+v", w)
				}
			}
			if p := getPreload(t, b.Addr()); p.Version != "v3" {
				t.Errorf("after the broken import: %+v, want v3 serving", p)
			}

			// A crashed worker is forked again from its template.
			victim := st.WorkerList[0]
			syscall.Kill(victim.Pid, syscall.SIGKILL)
			st = b.waitStatus(t, "the slot refilled", waitTimeout, func(st control.Status) bool {
				w, ok := inSlot(st, victim.Slot)
				return ok && w.Pid != victim.Pid && w.State == "ready"
			})
			w, _ := inSlot(st, victim.Slot)
			if w.Template != serving.Pid {
				t.Errorf("the replacement was forked by %d, want the serving template %d", w.Template, serving.Pid)
			}

			b.signal(t, syscall.SIGTERM)
			if code := b.waitExit(t, 40*time.Second); code != 0 {
				t.Errorf("exit code %d after TERM, want 0", code)
			}
			b.assertNothingLeft(t)
		})
	}
}

func alive(pid int) bool {
	p, err := readStat(pid)
	return err == nil && !p.zombie()
}

func TestPreloadImportErrorFailsTheStartWithTheTraceback(t *testing.T) {
	t.Parallel()
	requireTool(t, "/usr/bin/uvicorn")
	dir := t.TempDir()
	writeFile(t, dir, "app.py", "import nonexistent_module_for_baton\n", 0o644)
	r := runToExit(t, batonSpec{args: []string{"run", "-w", "2", "--chdir", dir, "--preload", "app",
		"--", "/usr/bin/uvicorn", "--fd", "3", "app:app"}})
	if r.code != 2 || !strings.Contains(r.stderr, "No module named 'nonexistent_module_for_baton'") ||
		!strings.Contains(r.stderr, "Traceback") {
		t.Errorf("exit %d, stderr:\n%s\nwant exit 2 with the traceback", r.code, lastLines(r.stderr, 40))
	}
}

func TestPreloadCheckRefusesACommandThatIsNotPython(t *testing.T) {
	t.Parallel()
	node := requireTool(t, "node")
	res := cli(t, nil, "check", "--preload", "app", "--", node, "-e", "1")
	if res.code != 2 || !strings.Contains(res.stderr, "preload") || !strings.Contains(res.stderr, "Python") {
		t.Errorf("baton check --preload with node: exit %d, stderr:\n%s\nwant exit 2 naming preload and Python", res.code, res.stderr)
	}
	res = cli(t, nil, "check", "--preload", "app", "--subreaper=false", "--", "/usr/bin/python3", "-m", "app")
	if res.code != 2 || !strings.Contains(res.stderr, "subreaper") {
		t.Errorf("baton check --preload --subreaper=false: exit %d, stderr:\n%s\nwant exit 2 naming subreaper", res.code, res.stderr)
	}
}

// A handler that blocks the event loop stops the forked worker's
// WATCHDOG=1 pings: with timeout = "5s" the worker is killed within
// timeout + graceful_timeout and replaced, and the other one serves
// meanwhile.
func TestPreloadWatchdogReplacesAWorkerWhoseEventLoopIsBlocked(t *testing.T) {
	t.Parallel()
	requireTool(t, "/usr/bin/uvicorn")
	const timeout, graceful = 5 * time.Second, 3 * time.Second
	dir := writePreloadApp(t, "v1")
	b := startBaton(t, "run", "-w", "2", "--chdir", dir, "--preload", "app", "--timeout", timeout.String(),
		"--graceful-timeout", graceful.String(), "--", "/usr/bin/uvicorn", "--fd", "3", "app:app")
	b.waitReady(t, 2)
	// The pings arm the watchdog: wait for the first one of each.
	st := b.waitStatus(t, "both workers to ping the watchdog", waitTimeout, func(st control.Status) bool {
		n := 0
		for _, w := range st.WorkerList {
			if w.Watchdog {
				n++
			}
		}
		return n == 2
	})
	before := map[int]bool{}
	for _, w := range st.WorkerList {
		before[w.Pid] = true
	}
	blocked := make(chan error, 1)
	go func() {
		_, err := get(b.Addr(), "/block", 60*time.Second)
		blocked <- err
	}()
	start := time.Now()
	l := startLoad(loadOptions{addr: b.Addr(), concurrency: 1, maxDuration: 2 * time.Minute, timeout: 20 * time.Second})
	b.waitStatus(t, "the blocked worker gone", 60*time.Second, func(st control.Status) bool {
		for _, w := range st.WorkerList {
			if before[w.Pid] && w.State != "ready" {
				return false // being stopped
			}
		}
		return len(st.WorkerList) < 2 || !before[st.WorkerList[0].Pid] || !before[st.WorkerList[1].Pid]
	})
	killed := time.Since(start)
	st = b.waitStatus(t, "the blocked worker replaced", 60*time.Second, func(st control.Status) bool {
		return len(inState(st, "ready")) == 2
	})
	replaced := time.Since(start)
	res := l.stop()
	t.Logf("blocked worker gone after %v, replacement ready after %v; load meanwhile: %s", killed, replaced, res)
	if res.OK == 0 {
		t.Errorf("the other worker served nothing while one was blocked: %s", res)
	}
	// The bound is behaviour, not speed: timeout + graceful_timeout, with
	// generous room for the master's checks and a loaded machine.
	if limit := timeout + graceful + 5*time.Second; killed > limit {
		t.Errorf("the blocked worker was gone after %v, want within timeout + graceful_timeout (%v, with slack %v)",
			killed, timeout+graceful, limit)
	}
	if missed := b.logs("worker missed its watchdog; killing and replacing it", nil); len(missed) != 1 {
		t.Errorf("%d watchdog misses logged, want 1 (the blocked worker); log:\n%s", len(missed), lastLines(b.Stderr(), 40))
	}
	select {
	case err := <-blocked:
		if err == nil {
			t.Error("the blocked request was answered: the worker was not killed")
		}
	case <-time.After(10 * time.Second):
		t.Error("the blocked request's connection is still open after its worker was replaced")
	}
}

// Each server's own entry point runs in the forked worker, with the app
// the template imported: the console scripts Debian ships, python -m, and
// gunicorn (whose arbiter then forks its own worker from the preloaded
// app).
func TestPreloadRunsEachServersOwnEntryPoint(t *testing.T) {
	t.Parallel()
	const wsgi = `import json, os
IMPORT_PID = os.getpid()

def app(environ, start_response):
    body = json.dumps({"pid": os.getpid(), "import_pid": IMPORT_PID, "version": "wsgi"}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
`
	for _, tc := range []struct {
		name    string
		tool    string
		flags   []string
		command []string
		app     string
	}{
		{"python3 -m uvicorn", "/usr/bin/python3", nil, []string{"/usr/bin/python3", "-m", "uvicorn", "--fd", "3", "app:app"}, preloadApp},
		{"uvicorn console script", "/usr/bin/uvicorn", nil, []string{"/usr/bin/uvicorn", "--fd", "3", "app:app"}, preloadApp},
		{"hypercorn", "/usr/bin/hypercorn", nil, []string{"/usr/bin/hypercorn", "--bind", "fd://3", "app:app"}, preloadApp},
		{"daphne", "/usr/bin/daphne", nil, []string{"/usr/bin/daphne", "--fd", "3", "app:app"}, preloadApp},
		{"gunicorn", "/usr/bin/gunicorn", []string{"--listen-env=false"}, []string{"/usr/bin/gunicorn", "--bind", "fd://3", "app:app"}, wsgi},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			requireTool(t, tc.tool)
			dir := writePreloadApp(t, "v1")
			writeFile(t, dir, "app.py", tc.app, 0o644)
			args := append([]string{"run", "-w", "2", "--chdir", dir, "--preload", "app"}, tc.flags...)
			b := startBaton(t, append(append(args, "--"), tc.command...)...)
			st := b.waitReady(t, 2)
			tmpl := templateOf(t, st, 1)
			p := getPreload(t, b.Addr())
			if p.ImportPid != tmpl.Pid {
				t.Errorf("the app was imported by pid %d, want the template %d", p.ImportPid, tmpl.Pid)
			}
			l := steadyLoad(b)
			r := b.reload(t, 2)
			res := l.stop()
			if !r.OK {
				t.Fatalf("reload: %s", describeReload(&r))
			}
			assertNoFailures(t, res)
			b.signal(t, syscall.SIGTERM)
			if code := b.waitExit(t, 40*time.Second); code != 0 {
				t.Errorf("exit code %d after TERM, want 0", code)
			}
			b.assertNothingLeft(t)
			if out := b.Stderr(); strings.Contains(out, "Traceback") {
				t.Errorf("a Python traceback in the output:\n%s", lastLines(out, 60))
			}
		})
	}
}

// With user = nobody the template drops privileges before it imports
// anything, and so do the workers it forks.
func TestPreloadTemplateAndWorkersRunAsTheUser(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs workers as nobody and needs root")
	}
	requireTool(t, "/usr/bin/uvicorn")
	dir := writePreloadApp(t, "v1")
	os.Chmod(filepath.Dir(dir), 0o755) // the test's own temp dir, for nobody to enter
	b := startBaton(t, "run", "-w", "2", "--chdir", dir, "--preload", "app", "--user", "nobody",
		"--", "/usr/bin/uvicorn", "--fd", "3", "app:app")
	st := b.waitReady(t, 2)
	pids := []int{templateOf(t, st, 1).Pid}
	for _, w := range st.WorkerList {
		pids = append(pids, w.Pid)
	}
	for _, pid := range pids {
		if uid := uidOf(t, pid); uid != "65534" {
			t.Errorf("process %d runs as uid %s, want nobody (65534)", pid, uid)
		}
	}
	if p := getPreload(t, b.Addr()); p.ImportPid != pids[0] {
		t.Errorf("the app was imported by %d, want the template %d", p.ImportPid, pids[0])
	}
}

func uidOf(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("status of %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
			return strings.Fields(rest)[0] // the real uid
		}
	}
	t.Fatalf("no Uid line for %d", pid)
	return ""
}

// An in-place upgrade re-executes baton: the templates, whose control
// sockets close with the exec, exit; the forked workers are the master's
// children and are adopted; the upgrade's reload forks the new generation
// from a new template.
func TestPreloadSurvivesAnInPlaceUpgrade(t *testing.T) {
	t.Parallel()
	requireTool(t, "/usr/bin/uvicorn")
	dir := writePreloadApp(t, "v1")
	b := startBaton(t, "run", "-w", "2", "--chdir", dir, "--preload", "app",
		"--", "/usr/bin/uvicorn", "--fd", "3", "app:app")
	st := b.waitReady(t, 2)
	old := templateOf(t, st, 1)
	writeFile(t, dir, "VERSION", "v2", 0o644)
	l := steadyLoad(b)
	r := b.cli(t, "upgrade")
	res := l.stop()
	if r.code != 0 {
		t.Fatalf("baton upgrade: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	assertNoFailures(t, res)
	st = b.waitStatus(t, "the new generation alone", waitTimeout, func(st control.Status) bool {
		return len(st.WorkerList) == 2 && st.WorkerList[0].Generation == st.Generation &&
			st.WorkerList[1].Generation == st.Generation && len(st.Templates) == 1
	})
	next := templateOf(t, st, st.Generation)
	if st.Pid != b.Pid || next.Pid == old.Pid {
		t.Errorf("after the upgrade: master %d, template %d; want the same master %d and a new template (old %d)",
			st.Pid, next.Pid, b.Pid, old.Pid)
	}
	waitFor(t, waitTimeout, "the old template to exit", func() bool { return !alive(old.Pid) })
	if p := getPreload(t, b.Addr()); p.Version != "v2" || p.ImportPid != next.Pid {
		t.Errorf("after the upgrade: %+v, want v2 imported by template %d", p, next.Pid)
	}
}

// preloadBallastApp imports 48 MiB of data into the template, which every
// forked worker maps and so counts in its RSS, and grows a worker's own
// memory by 64 MiB on /grow.
const preloadBallastApp = `import json, os

BALLAST = bytes(range(256)) * (48 * 1024 * 1024 // 256)  # written: resident, shared with every worker
GROWN = []

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/grow":
        GROWN.append(bytes(range(256)) * (64 * 1024 * 1024 // 256))
    body = json.dumps({"pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
`

// max_worker_memory counts what a forked worker does not share with its
// template: workers whose RSS is above the limit only because they map the
// template's 48 MiB are left alone, and one that grew its own memory past
// the limit is replaced.
func TestPreloadMaxWorkerMemoryCountsWhatAWorkerDoesNotShare(t *testing.T) {
	t.Parallel()
	requireTool(t, "/usr/bin/uvicorn")
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	writeFile(t, dir, "app.py", preloadBallastApp, 0o644)
	const limit = 40 << 20
	b := startBaton(t, "run", "-w", "2", "--chdir", dir, "--preload", "app", "--max-worker-memory", "40MiB",
		"--", "/usr/bin/uvicorn", "--fd", "3", "app:app")
	st := b.waitReady(t, 2)
	before := map[int]bool{}
	for _, w := range st.WorkerList {
		before[w.Pid] = true
		if rss := procRSS(t, w.Pid); rss <= limit {
			t.Fatalf("worker %d's RSS is %d KiB: the test needs it above the limit through the shared ballast", w.Pid, rss>>10)
		}
	}
	// Several memory checks (one a second) pass over them.
	time.Sleep(4 * time.Second)
	if replaced := b.logs("replacing worker", nil); len(replaced) != 0 {
		t.Fatalf("workers replaced for memory they share with the template: %v", replaced)
	}
	st, err := b.status()
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range st.WorkerList {
		if !before[w.Pid] || w.RSS == 0 || w.RSS > limit {
			t.Errorf("worker %d: status memory %d KiB; want one of the first workers, counted below the limit", w.Pid, w.RSS>>10)
		}
	}

	r, err := get(b.Addr(), "/grow", 20*time.Second)
	if err != nil || r.status != 200 {
		t.Fatalf("grow: %v %d", err, r.status)
	}
	grown := b.waitLog(t, "replacing worker", func(r record) bool { return r.str("reason") == "memory" }, waitTimeout)
	if mem := grown.int("memory"); mem <= limit || !before[grown.int("pid")] {
		t.Errorf("replaced worker %d at memory %d, want one of the first workers above the limit", grown.int("pid"), mem)
	}
	b.waitStatus(t, "the grown worker replaced", waitTimeout, func(st control.Status) bool {
		ready := inState(st, "ready")
		return len(st.WorkerList) == 2 && len(ready) == 2 && ready[0].Pid != grown.int("pid") && ready[1].Pid != grown.int("pid")
	})
	if n := len(b.logs("replacing worker", nil)); n != 1 {
		t.Errorf("%d workers replaced, want only the one that grew", n)
	}
}

// procRSS is pid's resident memory in bytes.
func procRSS(t *testing.T, pid int) uint64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kib uint64
			fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kib)
			return kib << 10
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}
