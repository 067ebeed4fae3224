package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// reloadTimeout bounds one reload in these tests; they take well under a
// second or two on an idle machine.
const reloadTimeout = 30 * time.Second

// deployment is a config file a test rewrites and then reloads, as a
// deploy would.
type deployment struct {
	t    *testing.T
	path string
}

func newDeployment(t *testing.T, toml string) *deployment {
	d := &deployment{t: t, path: filepath.Join(t.TempDir(), "baton.toml")}
	d.write(toml)
	return d
}

func (d *deployment) write(toml string) {
	d.t.Helper()
	if err := os.WriteFile(d.path, []byte(toml), 0o644); err != nil {
		d.t.Fatal(err)
	}
}

// workerConfig is a config running the test worker with args, on a free
// port unless extra sets bind (metrics_bind is not bind: without a bind
// key baton would take the default 127.0.0.1:8000, which tests running in
// parallel share).
func workerConfig(workers int, extra string, args ...string) string {
	if !regexp.MustCompile(`(?m)^\s*bind\s*=`).MatchString(extra) {
		extra += "\nbind = [\"127.0.0.1:0\"]"
	}
	quoted := []string{strconv.Quote(testworkerBin)}
	for _, a := range args {
		quoted = append(quoted, strconv.Quote(a))
	}
	return fmt.Sprintf("workers = %d\ncommand = [%s]\ngraceful_timeout = \"10s\"\n%s\n",
		workers, strings.Join(quoted, ", "), extra)
}

// servingGenerations asks enough requests to see every worker and returns
// the generations that answered, by pid.
func servingGenerations(t *testing.T, addr string, workers int) map[int]string {
	t.Helper()
	gens := map[int]string{}
	for pid, info := range collectWorkers(t, addr, workers, 20*time.Second) {
		gens[pid] = string(info.Generation)
	}
	return gens
}

func assertAllGeneration(t *testing.T, gens map[int]string, want int) {
	t.Helper()
	for pid, g := range gens {
		if g != strconv.Itoa(want) {
			t.Errorf("worker pid %d is of generation %s, want %d (all: %v)", pid, g, want, gens)
		}
	}
}

func assertNoFailures(t *testing.T, res loadResult) {
	t.Helper()
	t.Logf("load: %s", res)
	if res.Failures() != 0 {
		t.Errorf("%d requests failed during the reloads: %s", res.Failures(), res)
	}
	if res.OK == 0 {
		t.Error("no request succeeded: the load did not run")
	}
}

// workersOf lists the master's worker processes, leaving out its
// short-lived helpers (baton _unlisten): a worker leads its own process
// group, a helper stays in the master's.
func workersOf(master int) []int {
	var workers []int
	for _, p := range allProcs() {
		if p.ppid == master && p.pgrp == p.pid && !p.zombie() {
			workers = append(workers, p.pid)
		}
	}
	return workers
}

// waitWorkers waits until the master has n worker processes: after a
// reload, the old ones drain for a moment.
func (b *Baton) waitWorkers(t *testing.T, n int) {
	t.Helper()
	waitFor(t, 20*time.Second, fmt.Sprintf("%d worker processes", n), func() bool { return len(workersOf(b.Pid)) == n })
}

// assertRolledBack checks that a failed reload left generation 1 as it
// was: its workers alive and serving, the new generation's gone.
func (b *Baton) assertRolledBack(t *testing.T, old map[int]string, workers int) {
	t.Helper()
	for pid := range old {
		if !processAlive(pid) {
			t.Errorf("old worker %d died during a failed reload", pid)
		}
	}
	b.waitWorkers(t, workers)
	assertAllGeneration(t, servingGenerations(t, b.Addr(), workers), 1)
}

// waitReloading waits until b's first reload is in progress (the test's
// new workers boot for a while), and fails if it has already ended.
func waitReloading(t *testing.T, b *Baton) {
	t.Helper()
	b.waitStatus(t, "the reload to start", reloadTimeout, func(st control.Status) bool {
		if st.LastReload != nil {
			t.Fatalf("the reload ended before the test saw it in progress: %s", describeReload(st.LastReload))
		}
		return st.Reloading
	})
}

func steadyLoad(b *Baton) *load {
	return startLoad(loadOptions{addr: b.Addr(), concurrency: 8, maxDuration: 2 * time.Minute})
}

func TestReloadUnderLoadReplacesEveryWorkerWithoutAFailedRequest(t *testing.T) {
	t.Parallel()
	// 300 ms of "import" before the new workers take their listeners.
	d := newDeployment(t, workerConfig(4, "", "-boot-delay", "300ms"))
	b := startBaton(t, "run", "-c", d.path, "--log-level", "debug")
	old := servingGenerations(t, b.Addr(), 4)
	assertAllGeneration(t, old, 1)

	l := steadyLoad(b)
	for gen := 2; gen <= 4; gen++ {
		if r := b.reload(t, gen); !r.OK {
			t.Fatalf("reload %d: %s", gen, describeReload(&r))
		}
	}
	res := l.stop()
	assertNoFailures(t, res)

	b.waitWorkers(t, 4)
	now := servingGenerations(t, b.Addr(), 4)
	assertAllGeneration(t, now, 4)
	for pid := range old {
		if processAlive(pid) {
			t.Errorf("generation 1 worker %d is still alive after three reloads", pid)
		}
	}
	// drain_unlisten (the default) took the listener out of every retired
	// worker's epoll set before it was stopped.
	deaf := b.logs("retiring worker no longer accepts", func(r record) bool { return r.int("removed") >= 1 })
	if len(deaf) != 12 {
		t.Errorf("%d retired workers were made to stop accepting, want all 12", len(deaf))
	}
}

func TestBadDeployThatExitsAtBootKeepsTheOldGenerationServing(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(3, ""))
	b := startBaton(t, "run", "-c", d.path)
	old := servingGenerations(t, b.Addr(), 3)

	l := steadyLoad(b)
	d.write(workerConfig(3, "", "-boot-delay", "100ms", "-exit-at-start", "3"))
	r := b.reload(t, 2)
	res := l.stop()

	if r.OK {
		t.Fatalf("bad deploy: %s, want a failed reload", describeReload(&r))
	}
	if !strings.Contains(r.Reason, "exited during boot: exit status 3") {
		t.Errorf("reason = %q, want it to say the worker exited during boot with status 3", r.Reason)
	}
	// The worker's last stderr lines join the result once its stderr has
	// drained: in status, and in the log for whoever sent HUP.
	const lastWords = "testworker: failing at boot as asked"
	st := b.waitStatus(t, "the failed worker's stderr in last_reload", waitTimeout, func(st control.Status) bool {
		return st.LastReload != nil && st.LastReload.Generation == 2 && len(st.LastReload.Stderr) > 0
	})
	if !slices.ContainsFunc(st.LastReload.Stderr, func(l string) bool { return strings.Contains(l, lastWords) }) {
		t.Errorf("last_reload.stderr %q lacks the worker's last stderr line", st.LastReload.Stderr)
	}
	if rec := b.waitLog(t, "reload failed", func(r record) bool { return r.int("generation") == 2 }, waitTimeout); !strings.Contains(rec.line, lastWords) {
		t.Errorf("failure record lacks the worker's last stderr line: %s", rec)
	}
	assertNoFailures(t, res)
	b.assertRolledBack(t, old, 3)

	// The next HUP tries again, with the fixed code.
	d.write(workerConfig(3, ""))
	if r := b.reload(t, 3); !r.OK {
		t.Fatalf("reload after the fix: %s", describeReload(&r))
	}
	b.waitWorkers(t, 3)
	assertAllGeneration(t, servingGenerations(t, b.Addr(), 3), 3)
}

func TestBadDeployThatNeverGetsReadyIsRolledBackAfterBootTimeout(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, `boot_timeout = "1s"`))
	b := startBaton(t, "run", "-c", d.path)
	old := servingGenerations(t, b.Addr(), 2)

	l := steadyLoad(b)
	// Never takes its listeners: stuck in its "import".
	d.write(workerConfig(2, `boot_timeout = "1s"`, "-boot-delay", "1h"))
	r := b.reload(t, 2)
	res := l.stop()

	if r.OK || !strings.Contains(r.Reason, "not ready within boot_timeout (1s)") {
		t.Fatalf("never-ready deploy: %s, want a failure naming boot_timeout", describeReload(&r))
	}
	assertNoFailures(t, res)
	b.assertRolledBack(t, old, 2) // the stuck new workers are stopped
}

func TestBadConfigOnHUPKeepsServingWithTheOldConfig(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, ""))
	b := startBaton(t, "run", "-c", d.path)
	old := servingGenerations(t, b.Addr(), 2)

	d.write("workers = \"four\"\nwrokers = 3\n" + fmt.Sprintf("command = [%q]\n", testworkerBin))
	r := b.reload(t, 2)
	if r.OK || !strings.Contains(r.Reason, "the configuration is invalid") {
		t.Fatalf("bad config: %s", describeReload(&r))
	}
	// Whoever sent HUP reads every problem in the log.
	rec := b.waitLog(t, "reload failed", func(r record) bool { return r.int("generation") == 2 }, waitTimeout)
	for _, want := range []string{d.path + ":1: workers: expected an integer", `unknown key \"wrokers\"`} {
		if !strings.Contains(rec.line, want) {
			t.Errorf("failure record lacks %q: %s", want, rec)
		}
	}
	now := servingGenerations(t, b.Addr(), 2)
	for pid := range old {
		if _, ok := now[pid]; !ok {
			t.Errorf("old worker %d no longer serves after a bad config", pid)
		}
	}
	if n := len(workersOf(b.Pid)); n != 2 {
		t.Errorf("master has %d workers, want the old 2", n)
	}
}

func TestReloadThatChangesBindIsRefused(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(1, `bind = ["127.0.0.1:0"]`))
	b := launch(t, batonSpec{args: []string{"run", "-c", d.path}, noBind: true})
	b.waitStarted(t)
	d.write(workerConfig(1, `bind = ["127.0.0.1:0", "unix:`+filepath.Join(t.TempDir(), "x.sock")+`"]`))
	r := b.reload(t, 2)
	if r.OK || !strings.Contains(r.Reason, "settings that apply at start only changed (bind: ") {
		t.Fatalf("bind change: %s, want a refusal", describeReload(&r))
	}
	assertAllGeneration(t, servingGenerations(t, b.Addr(), 1), 1)
}

// Each readiness mode decides when the new generation takes over.
func TestReadinessModes(t *testing.T) {
	cases := []struct {
		name, ready string
		args        []string
		seenBy      string
		minBoot     time.Duration
	}{
		{"auto sees the Go worker take its listener", "auto", []string{"-boot-delay", "400ms"}, "auto", 400 * time.Millisecond},
		{"notify waits for READY=1", "notify", []string{"-boot-delay", "400ms", "-notify-ready"}, "notify", 400 * time.Millisecond},
		{"delay waits the given time", "delay:700ms", nil, "delay", 700 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := newDeployment(t, workerConfig(2, fmt.Sprintf("ready = %q", tc.ready), tc.args...))
			b := startBaton(t, "run", "-c", d.path)
			servingGenerations(t, b.Addr(), 2)
			l := steadyLoad(b)
			if r := b.reload(t, 2); !r.OK {
				t.Fatalf("reload: %s", describeReload(&r))
			}
			assertNoFailures(t, l.stop())
			b.waitWorkers(t, 2)
			for _, r := range b.logs("worker ready", func(r record) bool { return r.int("generation") == 2 }) {
				if r.str("seen_by") != tc.seenBy {
					t.Errorf("worker ready by %q, want %q: %s", r.str("seen_by"), tc.seenBy, r)
				}
				boot, err := time.ParseDuration(r.str("boot_time"))
				if err != nil || boot < tc.minBoot {
					t.Errorf("boot_time %q: ready before it could be (%v)", r.str("boot_time"), tc.minBoot)
				}
			}
		})
	}
}

func TestOldWorkerCrashDuringAReloadIsReplacedAndTheReloadCompletes(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(3, ""))
	b := startBaton(t, "run", "-c", d.path)
	old := servingGenerations(t, b.Addr(), 3)

	d.write(workerConfig(3, "", "-boot-delay", "1s"))
	b.signal(t, syscall.SIGHUP)
	waitReloading(t, b)
	victim := sortedKeys(old)[0]
	w, ok := withPid(b.mustStatus(t), victim)
	if !ok {
		t.Fatalf("the master does not list the worker %d that answered", victim)
	}
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Its slot still belongs to generation 1 until its successor is ready,
	// so generation 1 replaces it at once.
	b.waitStatus(t, fmt.Sprintf("generation 1 to replace the killed worker %d in slot %d", victim, w.Slot), reloadTimeout,
		func(st control.Status) bool {
			return slices.ContainsFunc(st.WorkerList, func(r control.Worker) bool {
				return r.Generation == 1 && r.Slot == w.Slot && r.Pid != victim
			})
		})
	if r := b.waitReloadEnd(t, 2); !r.OK {
		t.Fatalf("reload after an old worker crashed: %s", describeReload(&r))
	}
	b.waitWorkers(t, 3)
	assertAllGeneration(t, servingGenerations(t, b.Addr(), 3), 2)
}

func TestNewWorkerCrashDuringBootFailsTheReloadAndKeepsTheOldOnes(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, ""))
	b := startBaton(t, "run", "-c", d.path)
	old := servingGenerations(t, b.Addr(), 2)

	d.write(workerConfig(2, "", "-boot-delay", "2s"))
	b.signal(t, syscall.SIGHUP)
	var booting control.Worker
	b.waitStatus(t, "a worker of generation 2", reloadTimeout, func(st control.Status) bool {
		i := slices.IndexFunc(st.WorkerList, func(w control.Worker) bool { return w.Generation == 2 })
		if i >= 0 {
			booting = st.WorkerList[i]
		}
		return i >= 0
	})
	if err := syscall.Kill(booting.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	r := b.waitReloadEnd(t, 2)
	if r.OK || !strings.Contains(r.Reason, "exited during boot: killed by signal KILL") {
		t.Fatalf("reload: %s, want a failure naming the killed worker", describeReload(&r))
	}
	b.assertRolledBack(t, old, 2)
}

// Dev mode: editing a watched file reloads; a broken edit keeps the old
// workers serving, and fixing it reloads again.
func TestWatchReloadsOnChangesAndSurvivesBrokenEdits(t *testing.T) {
	t.Parallel()
	d := newDeployment(t, workerConfig(2, ""))
	b := startBaton(t, "run", "-c", d.path, "--watch", filepath.Dir(d.path))
	b.waitLog(t, "dev mode: watching for changes", nil, waitTimeout)
	servingGenerations(t, b.Addr(), 2)

	d.write(workerConfig(2, "", "-boot-delay", "100ms")) // an edit
	if r := b.waitReloadEnd(t, 2); !r.OK {
		t.Fatalf("reload after an edit: %s", describeReload(&r))
	}
	d.write(workerConfig(2, "", "-exit-at-start", "3")) // a broken edit
	if r := b.waitReloadEnd(t, 3); r.OK {
		t.Fatalf("reload after a broken edit: %s", describeReload(&r))
	}
	b.waitWorkers(t, 2)
	assertAllGeneration(t, servingGenerations(t, b.Addr(), 2), 2)
	d.write(workerConfig(2, "")) // the fix
	if r := b.waitReloadEnd(t, 4); !r.OK {
		t.Fatalf("reload after the fix: %s", describeReload(&r))
	}
	if st := b.mustStatus(t); st.Generation != 4 || st.Reloading {
		t.Errorf("generation %d, reloading %v after 3 edits: want 3 reloads, the last of generation 4", st.Generation, st.Reloading)
	}
}
