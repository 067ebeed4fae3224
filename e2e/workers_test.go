package e2e

import (
	"encoding/json"
	"fmt"
	"net"
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

// TestWorkersShareOnePort: four workers inherit one listener, each with the
// LISTEN_* protocol right and its own slot, and requests on fresh
// connections reach all of them.
func TestWorkersShareOnePort(t *testing.T) {
	t.Parallel()
	b := startBaton(t, "run", "-w", "4", "--", testworkerBin)
	if st := b.waitListed(t, 4); st.Workers != 4 {
		t.Errorf("status says workers=%d, want 4", st.Workers)
	}

	workers := collectWorkers(t, b.Addr(), 4, waitTimeout)
	ids := map[string]bool{}
	for pid, w := range workers {
		if !w.ListenPidMatched {
			t.Errorf("worker %d: LISTEN_PID is not its own pid", pid)
		}
		if w.ListenFDs != "1" || w.ListenFDNames != "bind0" {
			t.Errorf("worker %d: LISTEN_FDS=%q LISTEN_FDNAMES=%q, want 1 and bind0", pid, w.ListenFDs, w.ListenFDNames)
		}
		if w.Generation != "1" {
			t.Errorf("worker %d: BATON_GENERATION=%q, want 1", pid, w.Generation)
		}
		if w.PPid != b.Pid {
			t.Errorf("worker %d: parent is %d, want the master %d", pid, w.PPid, b.Pid)
		}
		ids[string(w.WorkerID)] = true
	}
	for _, id := range []string{"1", "2", "3", "4"} {
		if !ids[id] {
			t.Errorf("no worker with BATON_WORKER_ID=%s among %v", id, ids)
		}
	}
	listed := workerPidsOf(b.mustStatus(t).WorkerList)
	if answered := sortedKeys(workers); !slices.Equal(answered, listed) {
		t.Errorf("pids that answered %v, the master's workers %v", answered, listed)
	}
}

// TestTCPAndUnixListeners: with two named binds, every worker serves both,
// the names come through in LISTEN_FDNAMES in bind order, the unix socket
// gets --unix-mode and is removed on shutdown.
func TestTCPAndUnixListeners(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "admin.sock")
	b := startBaton(t, "run", "-w", "4", "-b", "web=127.0.0.1:0", "-b", "admin=unix:"+sock,
		"--unix-mode", "0600", "--", testworkerBin)
	if want := []string{"web", "admin"}; !slices.Equal(b.listenerNames, want) {
		t.Fatalf("listeners %v, want %v", b.listenerNames, want)
	}
	if got := b.ListenerAddr(t, "admin"); got != "unix:"+sock {
		t.Errorf("admin listens on %q, want %q", got, "unix:"+sock)
	}
	info, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode()&os.ModeSocket == 0 || info.Mode().Perm() != 0o600 {
		t.Errorf("socket file mode %v, want a socket with 0600", info.Mode())
	}
	listed := b.waitListed(t, 4)

	var pidSets [][]int
	for _, name := range []string{"web", "admin"} {
		workers := collectWorkers(t, b.ListenerAddr(t, name), 4, waitTimeout)
		for pid, w := range workers {
			if w.Listener != name {
				t.Errorf("worker %d on listener %s says the request came through %q", pid, name, w.Listener)
			}
			if w.ListenFDNames != "web:admin" || w.ListenFDs != "2" {
				t.Errorf("worker %d: LISTEN_FDS=%q LISTEN_FDNAMES=%q, want 2 and web:admin", pid, w.ListenFDs, w.ListenFDNames)
			}
		}
		pidSets = append(pidSets, sortedKeys(workers))
	}
	all := workerPidsOf(listed.WorkerList)
	for i, name := range []string{"web", "admin"} {
		if !slices.Equal(pidSets[i], all) {
			t.Errorf("workers answering on %s: %v, want every worker %v", name, pidSets[i], all)
		}
	}

	b.signal(t, syscall.SIGTERM)
	if code := b.waitExit(t, exitTimeout); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("unix socket %s still there after shutdown (err %v)", sock, err)
	}
	b.assertNothingLeft(t)
}

// inheritedListener opens a TCP listener in the test and returns it as a
// file for baton's fd 3, and its address.
func inheritedListener(t *testing.T) (*os.File, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // f keeps the socket open and listening
	t.Cleanup(func() { f.Close() })
	return f, addr
}

// TestInheritedListenerFD: baton takes a listening socket it inherited as
// fd 3 (-b fd://3) and its workers serve it.
func TestInheritedListenerFD(t *testing.T) {
	t.Parallel()
	f, addr := inheritedListener(t)
	b := launch(t, batonSpec{
		args:       []string{"run", "-w", "2", "-b", "fd://3", "--", testworkerBin},
		extraFiles: []*os.File{f},
	})
	f.Close() // only baton holds it now
	b.waitStarted(t)
	if b.Addr() != addr {
		t.Errorf("baton says it listens on %q, the inherited socket is %s", b.Addr(), addr)
	}
	workers := collectWorkers(t, addr, 2, waitTimeout)
	for pid, w := range workers {
		if !w.ListenPidMatched || w.ListenFDs != "1" || w.ListenFDNames != "bind0" {
			t.Errorf("worker %d: %+v, want LISTEN_PID matched, LISTEN_FDS=1, LISTEN_FDNAMES=bind0", pid, w)
		}
	}
}

// nonblockReply is the test worker's GET /nonblock.
type nonblockReply struct {
	FD3 struct {
		AtStart bool `json:"at_start"`
		Now     bool `json:"now"`
	} `json:"fd3_nonblocking"`
}

// TestListenerStaysNonblocking: the shared socket is in non-blocking mode
// when a worker starts and stays so (exec'ing a worker through
// (*os.File).Fd would clear O_NONBLOCK for every process holding it), for
// a socket baton opened and for one it inherited in blocking mode.
func TestListenerStaysNonblocking(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		inherited bool
	}{
		{name: "tcp"},
		{name: "fd", inherited: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			spec := batonSpec{args: []string{"run", "-w", "2", "--", testworkerBin}}
			if tc.inherited {
				// (*TCPListener).File returns the socket in blocking mode.
				f, _ := inheritedListener(t)
				spec.args = []string{"run", "-w", "2", "-b", "fd://3", "--", testworkerBin}
				spec.extraFiles = []*os.File{f}
			}
			b := launch(t, spec)
			b.waitStarted(t)
			b.waitListed(t, 2)
			for i := range 8 {
				r, err := get(b.Addr(), "/nonblock", 10*time.Second)
				if err != nil || r.status != 200 {
					t.Fatalf("GET /nonblock #%d: %v status %d %s", i, err, r.status, r.body)
				}
				var nb nonblockReply
				if err := json.Unmarshal(r.body, &nb); err != nil {
					t.Fatalf("GET /nonblock: %v in %q", err, r.body)
				}
				if !nb.FD3.AtStart || !nb.FD3.Now {
					t.Errorf("fd 3 non-blocking at start: %v, now: %v; want both true (%s)", nb.FD3.AtStart, nb.FD3.Now, r.body)
				}
			}
		})
	}
}

// TestKilledWorkerIsReplacedUnderLoad: kill -9 of one worker of four under
// continuous load: a new worker takes its slot and serves, and no request
// fails but the few the dead worker had in flight.
func TestKilledWorkerIsReplacedUnderLoad(t *testing.T) {
	t.Parallel()
	const concurrency = 8
	b := startBaton(t, "run", "-w", "4", "--", testworkerBin)
	b.waitListed(t, 4)
	collectWorkers(t, b.Addr(), 4, waitTimeout)
	victim := b.workerPid(t, 2)

	l := startLoad(loadOptions{addr: b.Addr(), concurrency: concurrency, maxDuration: 60 * time.Second})
	t.Cleanup(func() { l.stop() })
	waitFor(t, waitTimeout, "the load to reach every worker", func() bool {
		s := l.snapshot()
		return s.OK >= 200 && s.Pids[victim] > 0
	})
	beforeKill := l.snapshot()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	exit := b.waitLog(t, "worker exited", func(r record) bool { return r.int("pid") == victim }, waitTimeout)
	if exit.int("slot") != 2 || exit.str("status") != "killed by signal KILL" || exit.str("expected") != "false" {
		t.Errorf("exit record %s, want slot 2, killed by signal KILL, expected false", exit)
	}
	// Restarted in its slot, and counted.
	replacement := b.waitSlot(t, 2, "a restarted worker", func(w control.Worker) bool {
		return w.Pid != victim && w.Restarts == 1
	}).Pid
	waitFor(t, waitTimeout, fmt.Sprintf("the replacement worker %d to answer", replacement), func() bool {
		return l.snapshot().Pids[replacement] > 0
	})
	atReplacement := l.snapshot()
	waitFor(t, waitTimeout, "more requests after the replacement", func() bool {
		return l.snapshot().OK >= atReplacement.OK+200
	})
	res := l.stop()
	t.Logf("before the kill: %v", beforeKill)
	t.Logf("in all: %v", res)

	if res.OK <= beforeKill.OK {
		t.Errorf("no request succeeded after the kill")
	}
	if res.Refused+res.Timeout+res.Non2xx+res.Other > 0 {
		t.Errorf("failures other than the killed worker's connections: %v", res)
	}
	if lost := res.Reset + res.EOF; lost > concurrency {
		t.Errorf("%d requests lost (reset or EOF), more than the %d a worker can have in flight: %v", lost, concurrency, res)
	}
	if res.Pids[victim] > beforeKill.Pids[victim] {
		t.Logf("note: the killed worker answered %d requests between the snapshot and the kill", res.Pids[victim]-beforeKill.Pids[victim])
	}
}

// TestCleanExitIsReplaced: a worker that exits with status 0 on its own is
// an unexpected exit too, and is replaced in its slot.
func TestCleanExitIsReplaced(t *testing.T) {
	t.Parallel()
	b := startBaton(t, "run", "-w", "1", "--", testworkerBin)
	first := b.workerPid(t, 1)
	if info, err := fetchInfo(b.Addr()); err != nil || info.Pid != first {
		t.Fatalf("GET /: %+v, %v; want worker %d", info, err, first)
	}
	_, _ = get(b.Addr(), "/exit?code=0", 10*time.Second) // the worker may exit before replying
	exit := b.waitLog(t, "worker exited", func(r record) bool { return r.int("pid") == first }, waitTimeout)
	if exit.str("status") != "exit status 0" || exit.str("expected") != "false" {
		t.Errorf("exit record %s, want exit status 0, expected false", exit)
	}
	second := b.waitSlot(t, 1, "a restarted worker", func(w control.Worker) bool {
		return w.Pid != first && w.Restarts == 1
	}).Pid
	info, err := fetchInfo(b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if info.Pid != second || info.WorkerID != "1" {
		t.Errorf("answered by pid %d worker %s, want the replacement %d in slot 1", info.Pid, info.WorkerID, second)
	}
}

// TestCrashLoopBackoff: a worker that fails at start is restarted after
// 100ms, 200ms, 400ms, 800ms..., and TERM during the backoff exits at once.
func TestCrashLoopBackoff(t *testing.T) {
	t.Parallel()
	b := startBaton(t, "run", "-w", "1", "--", testworkerBin, "-exit-at-start", "3")
	restarts := b.waitLogs(t, "restarting worker", nil, 4, waitTimeout)
	starts := b.waitLogs(t, "worker started", nil, 4, waitTimeout)
	for i, r := range restarts[:4] {
		want := (100 * time.Millisecond) << i
		got, err := time.ParseDuration(r.str("delay"))
		if err != nil || got != want || r.int("failures") != i+1 || r.int("slot") != 1 {
			t.Errorf("restart #%d: %s; want slot 1, delay %v, failures %d", i+1, r, want, i+1)
		}
		// The delay is kept, not just logged.
		if i+1 < len(starts) {
			if waited := starts[i+1].time(t).Sub(r.time(t)); waited < want-10*time.Millisecond {
				t.Errorf("restart #%d started %v after it was scheduled, want %v", i+1, waited, want)
			}
		}
	}
	for _, r := range b.logs("worker exited", nil) {
		if r.str("status") != "exit status 3" || r.str("expected") != "false" || r.int("slot") != 1 {
			t.Errorf("exit record %s, want slot 1, exit status 3, expected false", r)
		}
		if _, err := time.ParseDuration(r.str("uptime")); err != nil {
			t.Errorf("exit record %s: uptime is not a duration", r)
		}
	}
	start := time.Now()
	b.signal(t, syscall.SIGTERM)
	if code := b.waitExit(t, exitTimeout); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("TERM during a crash loop took %v to exit, want well under 3s", took)
	}
	b.assertNothingLeft(t)
}

// TestBindForms: each address form baton accepts listens where it says and
// reaches the workers.
func TestBindForms(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, bind string
		listener   string // the name in LISTEN_FDNAMES
	}{
		{name: "ipv4", bind: "127.0.0.1:0", listener: "bind0"},
		{name: "ipv6", bind: "[::1]:0", listener: "bind0"},
		{name: "host name", bind: "localhost:0", listener: "bind0"},
		{name: "all interfaces", bind: ":0", listener: "bind0"},
		{name: "named", bind: "api=127.0.0.1:0", listener: "api"},
		{name: "unix", bind: "unix:SOCK", listener: "bind0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bind := tc.bind
			if bind == "unix:SOCK" {
				bind = "unix:" + filepath.Join(t.TempDir(), "app.sock")
			}
			b := startBaton(t, "run", "-b", bind, "--", testworkerBin)
			addr := b.ListenerAddr(t, tc.listener)
			t.Logf("-b %s listens on %s", bind, addr)
			info, err := fetchInfo(addr)
			if err != nil {
				t.Fatal(err)
			}
			if info.Listener != tc.listener || info.ListenFDNames != tc.listener {
				t.Errorf("worker says listener %q, LISTEN_FDNAMES=%q; want %q", info.Listener, info.ListenFDNames, tc.listener)
			}
		})
	}
}

// TestWorkerEnvironmentAndOutput: workers run in --chdir with baton's
// environment and the -e variables (which win), and their stdout and stderr
// come out on baton's.
func TestWorkerEnvironmentAndOutput(t *testing.T) {
	t.Parallel()
	workdir := t.TempDir()
	script := `echo "out: GREETING=$GREETING INHERITED=$INHERITED PWD=$(pwd) WORKER=$BATON_WORKER_ID"; echo "err: to stderr" >&2; exec "$0"`
	b := launch(t, batonSpec{
		args: []string{"run", "-w", "2", "--chdir", workdir, "-e", "GREETING=hello world",
			"--", "/bin/sh", "-c", script, testworkerBin},
		env: []string{"INHERITED=from baton", "GREETING=overridden"},
	})
	b.waitStarted(t)
	collectWorkers(t, b.Addr(), 2, waitTimeout)
	for _, id := range []string{"1", "2"} {
		want := fmt.Sprintf("out: GREETING=hello world INHERITED=from baton PWD=%s WORKER=%s", workdir, id)
		waitFor(t, waitTimeout, fmt.Sprintf("%q on baton's stdout", want), func() bool {
			return slices.Contains(strings.Split(b.Stdout(), "\n"), want)
		})
	}
	waitFor(t, waitTimeout, "the workers' stderr on baton's", func() bool {
		n := 0
		for _, line := range strings.Split(b.Stderr(), "\n") {
			if line == "err: to stderr" {
				n++
			}
		}
		return n == 2
	})
}

// TestTextLogFormat: without --log-format, baton logs slog's text format.
func TestTextLogFormat(t *testing.T) {
	t.Parallel()
	b := launch(t, batonSpec{args: []string{"run", "--", testworkerBin}, textLogs: true})
	for _, want := range []string{`level=INFO msg=listening name=bind0 addr=127.0.0.1:`, `msg="master started"`, `msg="worker started" slot=1`} {
		waitFor(t, waitTimeout, fmt.Sprintf("%s in baton's stderr", want), func() bool {
			return strings.Contains(b.Stderr(), want)
		})
	}
	if len(b.logs("master started", nil)) > 0 {
		t.Errorf("JSON records without --log-format json:\n%s", b.Stderr())
	}
}

// The worker watchdog (timeout): a worker that pinged and then fell silent
// is killed and replaced; one that never pings is left alone.
func TestWorkerWatchdog(t *testing.T) {
	t.Parallel()
	t.Run("silent after pinging is replaced", func(t *testing.T) {
		t.Parallel()
		b := startBaton(t, "run", "-w", "1", "--timeout", "500ms", "--graceful-timeout", "2s", "--",
			testworkerBin, "-watchdog-for", "700ms")
		first := b.workerPid(t, 1)
		missed := b.waitLog(t, "worker missed its watchdog; killing and replacing it", nil, waitTimeout)
		if missed.int("pid") != first {
			t.Errorf("watchdog record %s, want pid %d", missed, first)
		}
		b.waitSlot(t, 1, "a restarted worker", func(w control.Worker) bool { return w.Pid != first && w.Restarts >= 1 })
		if processAlive(first) {
			t.Errorf("the hung worker %d is still alive", first)
		}
		servingGenerations(t, b.Addr(), 1)
	})
	t.Run("never pinging is not watched", func(t *testing.T) {
		t.Parallel()
		b := startBaton(t, "run", "-w", "1", "--timeout", "200ms", "--", testworkerBin)
		pid := b.waitReady(t, 1).WorkerList[0].Pid
		time.Sleep(1500 * time.Millisecond) // seven timeouts
		if w, ok := inSlot(b.mustStatus(t), 1); !ok || w.Pid != pid || w.Restarts != 0 || !processAlive(pid) {
			t.Errorf("a worker that never pinged was killed: worker %d alive %v, slot 1 now %+v", pid, processAlive(pid), w)
		}
	})
	t.Run("WATCHDOG_USEC is in the worker's environment", func(t *testing.T) {
		t.Parallel()
		sh, err := exec.LookPath("sh")
		if err != nil {
			t.Fatal(err)
		}
		b := startBaton(t, "run", "-w", "1", "--timeout", "1.5s", "--ready", "delay:0s", "--",
			sh, "-c", `echo "watchdog_usec=$WATCHDOG_USEC"; exec sleep 60`)
		waitFor(t, waitTimeout, "the worker's output", func() bool { return strings.Contains(b.Stdout(), "watchdog_usec=1500000") })
	})
}

// user: baton stays root and runs the workers as another user with no
// supplementary groups; their notify messages still count, and the reload
// drains them like any other.
func TestWorkersRunAsAnotherUser(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("this test needs root to start workers as nobody")
	}
	sock := filepath.Join(t.TempDir(), "app.sock")
	b := startBaton(t, "run", "-w", "2", "--user", "nobody", "--unix-owner", "nobody", "--ready", "notify",
		"-b", "127.0.0.1:0", "-b", "unix:"+sock, "--", executableByAll(t, testworkerBin), "-notify-ready")
	b.waitReady(t, 2) // READY=1 from uid 65534 was accepted
	for _, pid := range workersOf(b.Pid) {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"Uid:\t65534\t65534\t65534\t65534", "Gid:\t65534\t65534\t65534\t65534"} {
			if !strings.Contains(string(status), want) {
				t.Errorf("worker %d: /proc status lacks %q", pid, want)
			}
		}
		for _, line := range strings.Split(string(status), "\n") {
			if groups, ok := strings.CutPrefix(line, "Groups:"); ok && strings.TrimSpace(groups) != "" {
				t.Errorf("worker %d has supplementary groups %q, want none", pid, groups)
			}
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(sock, &st); err != nil || st.Uid != 65534 {
		t.Errorf("unix socket owner uid %d (%v), want 65534", st.Uid, err)
	}
	l := steadyLoad(b)
	if r := b.reload(t, 2); !r.OK {
		t.Fatalf("reload: %s", describeReload(&r))
	}
	assertNoFailures(t, l.stop())
}

func TestUserNeedsRoot(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs baton as nobody and needs root")
	}
	r := cli(t, &syscall.Credential{Uid: 65534, Gid: 65534}, "run", "-b", "127.0.0.1:0", "--user", "root", "--", "/bin/true")
	if r.code != 2 || !strings.Contains(r.stderr, "needs baton to run as root (it runs as uid 65534)") {
		t.Errorf("--user as nobody: exit %d, stderr %q", r.code, r.stderr)
	}
}

// Memory and age limits replace a worker successor first, so under load
// not a request fails and the worker count never drops.
func TestWorkerLimitsReplaceSuccessorFirst(t *testing.T) {
	t.Parallel()
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		b := startBaton(t, "run", "-w", "2", "--max-worker-memory", "80MiB", "--", testworkerBin)
		b.waitReady(t, 2)
		l := steadyLoad(b)
		r, err := get(b.Addr(), "/grow?mb=150", 20*time.Second)
		if err != nil || r.status != 200 {
			t.Fatalf("grow: %v %d", err, r.status)
		}
		grown := b.waitLog(t, "replacing worker", func(r record) bool { return r.str("reason") == "memory" }, waitTimeout)
		if mem := grown.int("memory"); mem <= 80<<20 {
			t.Errorf("replaced at memory %d, not above the limit", mem)
		}
		exited := b.waitLog(t, "worker exited", func(r record) bool { return r.int("pid") == grown.int("pid") }, waitTimeout)
		if exited.str("expected") != "true" {
			t.Errorf("the replaced worker's exit: %s", exited)
		}
		// Its successor was ready before it was retired.
		if len(b.logs("worker ready", nil)) < 3 {
			t.Errorf("the old worker exited before its successor was ready")
		}
		b.waitWorkers(t, 2)
		assertNoFailures(t, l.stop())
	})
	t.Run("age with jitter", func(t *testing.T) {
		t.Parallel()
		b := startBaton(t, "run", "-w", "3", "--max-worker-age", "1s", "--max-worker-age-jitter", "1s", "--", testworkerBin)
		l := steadyLoad(b)
		replaced := b.waitLogs(t, "replacing worker", func(r record) bool { return r.str("reason") == "age" }, 3, waitTimeout)
		res := l.stop()
		ages := map[string]bool{}
		for _, r := range replaced[:3] {
			d, err := time.ParseDuration(r.str("after"))
			if err != nil || d < time.Second || d >= 2*time.Second {
				t.Errorf("replaced after %q, want within [1s, 2s)", r.str("after"))
			}
			ages[r.str("after")] = true
		}
		if len(ages) != 3 {
			t.Errorf("ages %v: the jitter did not spread the replacements", ages)
		}
		assertNoFailures(t, res)
		if n := len(workersOf(b.Pid)); n < 3 {
			t.Errorf("%d workers during age replacements, want at least 3", n)
		}
	})
}
