package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// The interop matrix (issue 17): real third-party servers from Debian's
// packages, each under baton with ready = "auto" and two workers, must
//
//  1. serve on baton's port, answered by baton's workers (or the processes
//     they fork);
//  2. go through two reloads under a request loop with no failed request,
//     the new generation serving the new deploy after each;
//  3. have a bad deploy refused: `baton reload` exits 1 and shows the
//     server's own error, while the old generation keeps serving;
//  4. finish a request in flight across a reload when the server drains on
//     SIGTERM, or drop it when the row says it does not (drains: false),
//     so that the table stays true when a server changes.
//
// The README's table of servers (under "How common servers take the
// listener") is this table: TestInteropMatrixIsTheREADMETable compares them.

// interopServer is one row of the matrix.
type interopServer struct {
	name string // the README's server column
	// needs says what to install when probe fails (the Debian packages).
	needs string
	probe []string
	// command is the worker command as the README shows it: the program
	// is looked up in $PATH (./server is in the app's directory), and
	// 127.0.0.1:8000 stands for baton's bind (puma must be told it).
	command  []string
	settings []string // baton flags the server needs
	ready    string   // baton's readiness mode
	drains   bool     // finishes in-flight requests on SIGTERM
	// forks: the worker forks the process that answers (gunicorn's
	// arbiter its worker).
	forks bool
	files map[string]string // the app; the test writes VERSION
	// broken is a bad deploy (these files replaced), and brokenSays what
	// the server says about it, which `baton reload` must show.
	broken     map[string]string
	brokenSays string
}

// readmeBind is the address the README's commands are written for.
const readmeBind = "127.0.0.1:8000"

// matrixImportDelay is how long every matrix app "imports" before it
// serves (see interop_apps_test.go).
const matrixImportDelay = 700 * time.Millisecond

// matrixTimeout bounds each awaited step of a row: ten servers boot and
// reload at once on a small, shared machine.
const matrixTimeout = 2 * time.Minute

// interopMatrix is the matrix. It is a function because the Go row's
// command names the test worker TestMain builds.
func interopMatrix() []interopServer {
	python := func(module string) []string { return []string{"/usr/bin/python3", "-c", "import " + module} }
	return []interopServer{{
		name:       "uvicorn 0.17",
		needs:      "uvicorn python3-uvicorn",
		probe:      []string{"uvicorn", "--version"},
		command:    []string{"uvicorn", "--fd", "3", "app:app"},
		ready:      "auto",
		drains:     true,
		files:      map[string]string{"app.py": asgiApp},
		broken:     map[string]string{"app.py": "1 / 0  # a bug at import\n" + asgiApp},
		brokenSays: "ZeroDivisionError: division by zero",
	}, {
		name:       "gunicorn 20.1, sync worker, Flask 2.2",
		needs:      "gunicorn python3-flask",
		probe:      python("flask"),
		command:    []string{"gunicorn", "app:app"},
		ready:      "auto",
		drains:     true,
		forks:      true,
		files:      map[string]string{"app.py": flaskApp},
		broken:     map[string]string{"app.py": flaskApp + "\ndef broken(:\n    pass\n"},
		brokenSays: "SyntaxError: invalid syntax",
	}, {
		name:       "gunicorn 20.1, gthread worker",
		needs:      "gunicorn",
		probe:      []string{"gunicorn", "--version"},
		command:    []string{"gunicorn", "--bind", "fd://3", "-k", "gthread", "--threads", "4", "app:app"},
		settings:   []string{"--listen-env=false"},
		ready:      "auto",
		drains:     true,
		forks:      true,
		files:      map[string]string{"app.py": wsgiApp},
		broken:     map[string]string{"app.py": "import baton_matrix_missing_dependency\n" + wsgiApp},
		brokenSays: "ModuleNotFoundError: No module named 'baton_matrix_missing_dependency'",
	}, {
		name:    "Django 3.2 under gunicorn 20.1",
		needs:   "gunicorn python3-django",
		probe:   python("django"),
		command: []string{"gunicorn", "wsgi:application"},
		ready:   "auto",
		drains:  true,
		forks:   true,
		files:   map[string]string{"settings.py": djangoSettings, "urls.py": djangoURLs, "wsgi.py": djangoWSGI},
		// A typo in INSTALLED_APPS fails django.setup(), at boot.
		broken:     map[string]string{"settings.py": strings.Replace(djangoSettings, "INSTALLED_APPS = []", `INSTALLED_APPS = ["blgo"]`, 1)},
		brokenSays: "ModuleNotFoundError: No module named 'blgo'",
	}, {
		name:       "hypercorn 0.13",
		needs:      "python3-hypercorn",
		probe:      []string{"hypercorn", "--help"},
		command:    []string{"hypercorn", "--bind", "fd://3", "app:app"},
		ready:      "auto",
		drains:     true,
		files:      map[string]string{"app.py": asgiApp},
		broken:     map[string]string{"app.py": asgiApp + "\napp = make_app()\n"},
		brokenSays: "NameError: name 'make_app' is not defined",
	}, {
		name:       "daphne 4.0",
		needs:      "daphne",
		probe:      []string{"daphne", "--help"},
		command:    []string{"daphne", "--fd", "3", "app:application"},
		ready:      "auto",
		drains:     false,
		files:      map[string]string{"app.py": asgiApp},
		broken:     map[string]string{"app.py": asgiApp + "\nDATABASE_URL = os.environ['DATABASE_URL']\n"},
		brokenSays: "KeyError: 'DATABASE_URL'",
	}, {
		name:       "waitress 2.1",
		needs:      "python3-waitress",
		probe:      python("waitress"),
		command:    []string{"/usr/bin/python3", "serve.py"},
		ready:      "auto",
		drains:     true,
		files:      map[string]string{"app.py": wsgiApp, "serve.py": waitressServe},
		broken:     map[string]string{"app.py": strings.Replace(wsgiApp, "import json\n", "import json\n import os\n", 1)},
		brokenSays: "IndentationError: unexpected indent",
	}, {
		name:       "node 20",
		needs:      "nodejs",
		probe:      []string{"node", "--version"},
		command:    []string{"node", "server.js"},
		ready:      "auto",
		drains:     true,
		files:      map[string]string{"server.js": nodeServer},
		broken:     map[string]string{"server.js": "require('./config');\n" + nodeServer},
		brokenSays: "Error: Cannot find module './config'",
	}, {
		name:       "puma 5.6, rack",
		needs:      "puma ruby-rack ruby-sd-notify",
		probe:      []string{"ruby", "-e", `require "rack"; require "sd_notify"`},
		command:    []string{"puma", "-b", "tcp://" + readmeBind, "config.ru"},
		ready:      "auto",
		drains:     true,
		files:      map[string]string{"config.ru": pumaConfig},
		broken:     map[string]string{"config.ru": pumaConfig + "\nuse Rack::Sessions\n"},
		brokenSays: "uninitialized constant Rack::Sessions (NameError)",
	}, {
		name:       "Go, baton's worker package",
		needs:      "go (the test worker is built from e2e/testdata)",
		probe:      []string{testworkerBin, "-h"},
		command:    []string{"./server"},
		ready:      "auto",
		drains:     true,
		files:      map[string]string{"server": goServer("VERSION")},
		broken:     map[string]string{"server": goServer("RELEASE")},
		brokenSays: "reading the app's version: open RELEASE: no such file or directory",
	}}
}

func TestInteropMatrix(t *testing.T) {
	t.Parallel()
	start := time.Now()
	t.Cleanup(func() { t.Logf("the matrix took %v", time.Since(start).Round(time.Second)) })
	for _, s := range interopMatrix() {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			s.requireInstalled(t)
			r := startRow(t, s)
			r.reloadsUnderLoad(t)
			r.refusesBadDeploy(t)
			r.stops(t)
			t.Logf("%s: %v", s.name, time.Since(r.started).Round(100*time.Millisecond))
		})
	}
}

// requireTool fails (never skips) the test when a program is missing.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run scripts/install-test-deps (%v)", name, err)
	}
	return path
}

// requireInstalled fails the test, naming what to install, when the
// server's probe fails.
func (s interopServer) requireInstalled(t *testing.T) {
	t.Helper()
	out, err := exec.Command(s.probe[0], s.probe[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s is not installed (%s: %v, %s): run scripts/install-test-deps (Debian: %s)",
			s.name, strings.Join(s.probe, " "), err, bytes.TrimSpace(out), s.needs)
	}
}

// commandLine is the worker command for baton bound to bind, with each
// program looked up as baton would.
func (s interopServer) commandLine(t *testing.T, dir, bind string) []string {
	cmd := make([]string, len(s.command))
	for i, arg := range s.command {
		cmd[i] = strings.ReplaceAll(arg, readmeBind, bind)
	}
	if strings.HasPrefix(cmd[0], "./") {
		cmd[0] = filepath.Join(dir, cmd[0])
	} else {
		cmd[0] = requireTool(t, cmd[0])
	}
	return cmd
}

// namesItsBind says whether the command must name baton's address.
func (s interopServer) namesItsBind() bool {
	return slices.ContainsFunc(s.command, func(arg string) bool { return strings.Contains(arg, readmeBind) })
}

// matrixRow is one server under baton, as the row's test drives it.
type matrixRow struct {
	s       interopServer
	b       *Baton
	dir     string // the app, the workers' working directory
	deploys int    // versions deployed so far: "v1", "v2", ...
	started time.Time
	// serving is who answered for the generation in force: worker pid ->
	// the pids that answered for it (itself, or what it forked).
	serving map[int][]int
	// badDeployFrom and badDeployTo delimit the bad deploy's part of
	// baton's stderr (offsets), the only part where a traceback belongs.
	badDeployFrom, badDeployTo int
}

func startRow(t *testing.T, s interopServer) *matrixRow {
	r := &matrixRow{s: s, dir: t.TempDir(), started: time.Now()}
	r.deploy(t, s.files)
	bind := "127.0.0.1:0"
	if s.namesItsBind() {
		bind = freeAddr(t)
	}
	args := slices.Concat(
		[]string{"run", "-b", bind, "-w", "2", "--chdir", r.dir, "--ready", s.ready,
			"--boot-timeout", matrixTimeout.String(), "--graceful-timeout", "60s", "--log-level", "debug"},
		s.settings, []string{"--"}, s.commandLine(t, r.dir, bind))
	r.b = startBaton(t, args...)
	r.b.waitStatus(t, "2 ready workers", matrixTimeout, func(st control.Status) bool {
		return len(st.WorkerList) == 2 && len(inState(st, "ready")) == 2
	})
	r.expectServing(t)
	r.expectSeenReady(t, 1)
	return r
}

// deploy writes files into the app's directory with the next version.
func (r *matrixRow) deploy(t *testing.T, files map[string]string) {
	t.Helper()
	r.write(t, files)
	r.deploys++
	writeFile(t, r.dir, "VERSION", r.version()+"\n", 0o644)
}

// write writes files into the app's directory; scripts are executable.
func (r *matrixRow) write(t *testing.T, files map[string]string) {
	t.Helper()
	for name, content := range files {
		path := writeFile(t, r.dir, name, content, 0o644)
		if strings.HasPrefix(content, "#!") {
			if err := os.Chmod(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// version is what the last good deploy serves.
func (r *matrixRow) version() string { return fmt.Sprintf("v%d", r.deploys) }

// matrixAnswer is an app's answer to GET /.
type matrixAnswer struct {
	Pid     int    `json:"pid"`
	Version string `json:"version"`
}

// askMatrixApp makes one request on a fresh connection; anything but a
// matrix app's 200 answer is an error.
func askMatrixApp(addr, path string, timeout time.Duration) (matrixAnswer, error) {
	rep, err := get(addr, path, timeout)
	if err != nil {
		return matrixAnswer{}, err
	}
	var a matrixAnswer
	if rep.status != 200 {
		return a, fmt.Errorf("GET %s: status %d: %q", path, rep.status, rep.body)
	}
	if err := json.Unmarshal(rep.body, &a); err != nil || a.Pid == 0 {
		return a, fmt.Errorf("GET %s: not an answer of the matrix app: %q", path, rep.body)
	}
	return a, nil
}

// currentWorkers are the pids of the generation in force, not draining.
func currentWorkers(st control.Status) []int {
	var ws []control.Worker
	for _, w := range st.WorkerList {
		if w.Generation == st.Generation && w.State != "draining" {
			ws = append(ws, w)
		}
	}
	return workerPidsOf(ws)
}

// ownerOf is the worker among workers that pid answers for: the worker
// itself, or for a server that forks, the worker whose child it is.
func (r *matrixRow) ownerOf(pid int, workers []int) (int, error) {
	if !r.s.forks {
		if slices.Contains(workers, pid) {
			return pid, nil
		}
		return 0, fmt.Errorf("pid %d (%s) answered; it is not one of baton's workers %v", pid, cmdline(pid), workers)
	}
	p, err := readStat(pid)
	if err != nil {
		return 0, fmt.Errorf("pid %d answered and is gone: %v", pid, err)
	}
	if !slices.Contains(workers, p.ppid) {
		return 0, fmt.Errorf("pid %d (%s) answered; its parent %d is not one of baton's workers %v", pid, cmdline(pid), p.ppid, workers)
	}
	return p.ppid, nil
}

// expectServing asks GET / on fresh connections until every worker of the
// generation in force has answered (itself or through what it forked),
// and fails the test on any failed request, an answer from another
// process, or one with another version than the last good deploy's.
func (r *matrixRow) expectServing(t *testing.T) {
	t.Helper()
	workers := currentWorkers(r.b.mustStatus(t))
	serving := map[int][]int{}
	deadline := time.Now().Add(matrixTimeout)
	for n := 0; len(serving) < len(workers); n++ {
		if time.Now().After(deadline) || n == 5000 {
			t.Fatalf("after %d requests, only workers %v of %v answered", n, slices.Sorted(maps.Keys(serving)), workers)
		}
		a, err := askMatrixApp(r.b.Addr(), "/", 30*time.Second)
		if err != nil {
			t.Fatalf("request %d: %v", n+1, err)
		}
		if a.Version != r.version() {
			t.Fatalf("pid %d answered with version %q, want %q (the deploy in force)", a.Pid, a.Version, r.version())
		}
		owner, err := r.ownerOf(a.Pid, workers)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(serving[owner], a.Pid) {
			serving[owner] = append(serving[owner], a.Pid)
		}
	}
	r.serving = serving
}

// servingPids are the pids that answered for the generation in force.
func (r *matrixRow) servingPids() []int {
	var pids []int
	for _, ps := range r.serving {
		pids = append(pids, ps...)
	}
	slices.Sort(pids)
	return pids
}

// expectSeenReady checks that generation gen's workers were seen ready by
// the row's readiness mode, and not before the app's slow import was over.
func (r *matrixRow) expectSeenReady(t *testing.T, gen int) {
	t.Helper()
	ready := r.b.logs("worker ready", func(rec record) bool { return rec.int("generation") == gen })
	if len(ready) != 2 {
		t.Fatalf("%d workers of generation %d ready, want 2", len(ready), gen)
	}
	for _, rec := range ready {
		boot, err := time.ParseDuration(rec.str("boot_time"))
		if rec.str("seen_by") != r.s.ready || err != nil || boot < matrixImportDelay {
			t.Errorf("worker of generation %d ready after %s, seen by %q; want %q, and not before the app's %v import: %s",
				gen, rec.str("boot_time"), rec.str("seen_by"), r.s.ready, matrixImportDelay, rec)
		}
	}
}

// reloadsUnderLoad deploys twice, each time reloading while a request
// loop runs; the first reload also retires a worker with a request in
// flight.
func (r *matrixRow) reloadsUnderLoad(t *testing.T) {
	t.Helper()
	l := r.startLoad()
	for i := range 2 {
		r.deploy(t, r.s.files)
		if i == 0 {
			r.reloadWithARequestInFlight(t)
		} else {
			r.reloadGood(t)
		}
		gen := r.b.mustStatus(t).Generation
		r.expectServing(t)
		r.expectSeenReady(t, gen)
	}
	assertNoFailures(t, l.stop())
}

// startLoad runs a request loop on fresh connections: two at a time,
// with pauses, as ten rows run at once.
func (r *matrixRow) startLoad() *load {
	return startLoad(loadOptions{addr: r.b.Addr(), concurrency: 2, pause: 20 * time.Millisecond,
		maxDuration: 10 * time.Minute, timeout: time.Minute})
}

// reloadGood reloads a good deploy: `baton reload` must succeed. baton
// answers once the old workers no longer wait for connections (made deaf
// by drain_unlisten, or done with their stop signal: gunicorn's sync
// worker and puma wait in poll or select), so from then on every answer
// must be the new version (expectServing) though the old workers may still
// be finishing their requests.
func (r *matrixRow) reloadGood(t *testing.T) {
	t.Helper()
	if res := r.reload(t); res.code != 0 {
		t.Fatalf("reload of %s: exit %d: %s%s", r.version(), res.code, res.stdout, res.stderr)
	}
}

// waitExited waits until each of workers has exited.
func (r *matrixRow) waitExited(t *testing.T, workers []int) {
	t.Helper()
	r.b.waitLogs(t, "worker exited", func(rec record) bool { return slices.Contains(workers, rec.int("pid")) },
		len(workers), matrixTimeout)
}

// waitSignalled waits until baton has sent each of workers its stop signal.
func (r *matrixRow) waitSignalled(t *testing.T, workers []int) {
	t.Helper()
	r.b.waitLogs(t, "signalled worker", func(rec record) bool { return slices.Contains(workers, rec.int("pid")) },
		len(workers), matrixTimeout)
}

// reload runs `baton reload` to its end.
func (r *matrixRow) reload(t *testing.T) cliResult {
	t.Helper()
	res, err := batonReload(r.b)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("baton reload: exit %d\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
	return res
}

// batonReload runs `baton reload` against b; unlike b.cli it may run in
// a goroutine of its own.
func batonReload(b *Baton) (cliResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*matrixTimeout)
	defer cancel()
	return runClient(ctx, batonBin, nil, nil, "reload", "--control", b.Control)
}

// inFlight is how a request that was in flight across a reload ended.
type inFlight struct {
	answer matrixAnswer
	err    error
}

// reloadWithARequestInFlight reloads while GET /gated is in a worker of
// the old generation, and lets that request end only once baton has sent
// every old worker its stop signal and the servers have had a second to
// act on it: a server that drains answers it, one that does not has
// dropped it by then.
func (r *matrixRow) reloadWithARequestInFlight(t *testing.T) {
	t.Helper()
	old := currentWorkers(r.b.mustStatus(t))
	oldPids, oldVersion := r.servingPids(), fmt.Sprintf("v%d", r.deploys-1)
	started, release := filepath.Join(r.dir, "gated.started"), filepath.Join(r.dir, "gated.release")
	done := make(chan inFlight, 1)
	go func() {
		a, err := askMatrixApp(r.b.Addr(), "/gated", 2*matrixTimeout)
		done <- inFlight{a, err}
	}()
	waitFor(t, matrixTimeout, "GET /gated to reach the app", func() bool { _, err := os.Stat(started); return err == nil })

	reloaded := make(chan error, 1)
	var res cliResult
	go func() {
		var err error
		res, err = batonReload(r.b)
		reloaded <- err
	}()
	r.waitSignalled(t, old)
	time.Sleep(time.Second)
	writeFile(t, r.dir, "gated.release", "", 0o644)
	var got inFlight
	select {
	case got = <-done:
	case <-time.After(2 * matrixTimeout):
		t.Fatal("GET /gated did not end")
	}
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
	t.Logf("baton reload: exit %d\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
	if res.code != 0 {
		t.Fatalf("reload of %s: exit %d: %s%s", r.version(), res.code, res.stdout, res.stderr)
	}
	os.Remove(started)
	os.Remove(release)
	r.waitExited(t, old)

	switch {
	case r.s.drains && got.err != nil:
		t.Errorf("the request in flight when its worker was told to stop failed: %v; the row says the server drains", got.err)
	case r.s.drains && (got.answer.Version != oldVersion || !slices.Contains(oldPids, got.answer.Pid)):
		t.Errorf("the request in flight was answered by pid %d with %q; want the old generation (pids %v) with %q",
			got.answer.Pid, got.answer.Version, oldPids, oldVersion)
	case r.s.drains:
		waitFor(t, matrixTimeout, fmt.Sprintf("pid %d, which drained the request, to exit", got.answer.Pid),
			func() bool { return !processAlive(got.answer.Pid) })
	case got.err == nil:
		t.Errorf("the request in flight when its worker was told to stop was answered (pid %d, %q); the row says the server drops it (drains: false): has it changed?",
			got.answer.Pid, got.answer.Version)
	default:
		t.Logf("the request in flight was dropped, as the row says: %v", got.err)
	}
}

// refusesBadDeploy deploys a broken app: the reload must fail with the
// server's own message while the old generation serves on, unchanged;
// then the good app is deployed again.
func (r *matrixRow) refusesBadDeploy(t *testing.T) {
	t.Helper()
	before := r.b.mustStatus(t)
	oldWorkers, oldPids := currentWorkers(before), r.servingPids()
	r.badDeployFrom = len(r.b.Stderr())
	r.write(t, r.s.broken)
	l := r.startLoad()
	res := r.reload(t)
	during := l.stop()
	output := res.stdout + res.stderr
	if res.code != 1 || !strings.Contains(output, r.s.brokenSays) {
		t.Errorf("baton reload of the broken app: exit %d; want 1, and the server's own %q in:\n%s", res.code, r.s.brokenSays, output)
	}
	assertNoFailures(t, during)
	for pid := range during.Pids {
		if !slices.Contains(oldPids, pid) {
			t.Errorf("pid %d answered during the failed reload; only the old generation (%v) should", pid, oldPids)
		}
	}
	after := r.b.mustStatus(t)
	if got := currentWorkers(after); !slices.Equal(got, oldWorkers) || after.Generation != before.Generation {
		t.Errorf("after the failed reload generation %d serves with workers %v; want generation %d's %v",
			after.Generation, got, before.Generation, oldWorkers)
	}
	r.expectServing(t)
	if got := r.servingPids(); !slices.Equal(got, oldPids) {
		t.Errorf("after the failed reload pids %v answer; want the old generation's %v", got, oldPids)
	}

	r.deploy(t, r.s.files)
	r.reloadGood(t)
	r.expectServing(t)
	r.badDeployTo = len(r.b.Stderr())
}

// stops ends baton with TERM: every process must be gone, and no Python
// traceback may have come but the bad deploy's.
func (r *matrixRow) stops(t *testing.T) {
	t.Helper()
	r.b.signal(t, syscall.SIGTERM)
	if code := r.b.waitExit(t, matrixTimeout); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
	r.b.assertNothingLeft(t)
	r.b.waitOutputClosed(5 * time.Second)
	out := r.b.Stderr()
	for _, part := range []string{out[:r.badDeployFrom], out[min(r.badDeployTo, len(out)):]} {
		if strings.Contains(part, "Traceback") {
			t.Errorf("a Python traceback other than the bad deploy's in the output:\n%s", lastLines(part, 60))
		}
	}
}
