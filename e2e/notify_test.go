package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// Workers' notify sockets: files only the worker's user can open, and
// messages heard only from the worker's own processes.

const refusedNotify = "refused notify messages from a process that is not the worker's"

var (
	nobodyCred = &syscall.Credential{Uid: 65534, Gid: 65534}
	daemonCred = &syscall.Credential{Uid: 1, Gid: 1}
)

// notifySocketOf is the NOTIFY_SOCKET in process pid's environment.
// A worker shows in status once forked, and may still be between its
// execs (shim, shell, program) when it is read, when its environ reads
// empty for a moment: it is read again until it has the variable, for a
// while.
func notifySocketOf(t *testing.T, pid int) string {
	t.Helper()
	var env []byte
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var err error
		if env, err = os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err != nil {
			t.Fatal(err)
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("NOTIFY_SOCKET=")); ok {
				return string(v)
			}
		}
	}
	t.Fatalf("worker %d has no NOTIFY_SOCKET; its environment: %q", pid, env)
	return ""
}

// notifyAs runs systemd-notify as cred (nil: as the test) to socket, from
// outside any worker, and returns its error and output.
func notifyAs(t *testing.T, cred *syscall.Credential, socket string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(requireTool(t, "systemd-notify"), args...)
	cmd.Env = append(cleanEnv(), "NOTIFY_SOCKET="+socket)
	cmd.Dir = "/"
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// A stranger running as the workers' user (nobody) sends READY=1 to the
// sockets of a reload's new workers, which sleep instead of booting: it
// can reach them (same user), but its messages are refused, logged and
// counted, so the reload fails on its boot timeout and the old workers
// keep serving. Another user (daemon) cannot even connect.
func TestNotifyStrangerCannotReadyAReload(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Fatal("this test runs workers and strangers as nobody and daemon: it needs root")
	}
	worker := executableByAll(t, testworkerBin)
	slow := filepath.Join(filepath.Dir(worker), "slow") // generation 2 sleeps while it exists
	script := fmt.Sprintf("if [ -e %s ]; then exec sleep 1000; fi; exec %s -notify-ready", slow, worker)
	b := startBaton(t, "run", "-w", "2", "--user", "nobody", "--ready", "notify", "--boot-timeout", "5s",
		"--", "/bin/sh", "-c", script)
	b.waitReady(t, 2)
	old := servingGenerations(t, b.Addr(), 2)
	l := steadyLoad(b)

	if err := os.WriteFile(slow, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	b.signal(t, syscall.SIGHUP)
	waitReloading(t, b)
	st := b.waitStatus(t, "2 new workers", waitTimeout, func(st control.Status) bool {
		n := 0
		for _, w := range st.WorkerList {
			if w.Generation == 2 {
				n++
			}
		}
		return n == 2
	})
	var sockets []string
	for _, w := range st.WorkerList {
		if w.Generation != 2 {
			continue
		}
		sock := notifySocketOf(t, w.Pid)
		sockets = append(sockets, sock)
		var fi syscall.Stat_t
		if err := syscall.Lstat(sock, &fi); err != nil {
			t.Fatalf("worker %d's NOTIFY_SOCKET %q is no file: %v", w.Pid, sock, err)
		}
		if fi.Mode&syscall.S_IFMT != syscall.S_IFSOCK || fi.Uid != 65534 || fi.Mode&0o777 != 0o600 {
			t.Errorf("%s: mode %o, uid %d; want a socket of nobody's, 0600", sock, fi.Mode, fi.Uid)
		}
		if err := syscall.Lstat(filepath.Dir(sock), &fi); err != nil || fi.Uid != 0 || fi.Mode&0o777 != 0o711 {
			t.Errorf("%s: mode %o, uid %d (%v); want root's, 0711 (enter, not list)", filepath.Dir(sock), fi.Mode, fi.Uid, err)
		}

		// daemon cannot connect at all.
		if out, err := notifyAs(t, daemonCred, sock, "--ready"); err == nil || !strings.Contains(out, "ermission denied") {
			t.Errorf("systemd-notify --ready as daemon to %s: %v, %q; want permission denied", sock, err, out)
		}
		// nobody can, being the workers' user, and is not heard.
		for range 3 {
			if out, err := notifyAs(t, nobodyCred, sock, "--ready", "--status=forged"); err != nil {
				t.Fatalf("systemd-notify --ready as nobody to %s: %v: %s", sock, err, out)
			}
		}
	}
	r := b.waitReloadEnd(t, 2)
	if r.OK || !strings.Contains(r.Reason, "boot_timeout") {
		t.Fatalf("reload %s; want a failure on the boot timeout: the stranger's READY=1 must not count", describeReload(&r))
	}
	b.assertRolledBack(t, old, 2)
	assertNoFailures(t, l.stop())

	refused := b.logs(refusedNotify, func(r record) bool { return r.str("generation") == "2" })
	slots := map[string]bool{}
	for _, r := range refused {
		slots[r.str("slot")] = true
		if r.str("sender_uid") != "65534" {
			t.Errorf("refusal %s: want the stranger's uid 65534", r)
		}
	}
	if len(slots) != 2 {
		t.Errorf("refusals logged for slots %v, want both new workers'", slots)
	}
	for _, r := range b.logs("worker ready", nil) {
		if r.str("generation") == "2" {
			t.Errorf("a new worker was marked ready: %s", r)
		}
	}
	for _, sock := range sockets {
		if _, err := os.Lstat(sock); !os.IsNotExist(err) {
			t.Errorf("%s is still there after its worker was stopped (%v)", sock, err)
		}
	}
}

// floodScript sends datagrams to a unix socket for a while, as fast as
// the receiver takes them, and prints how many it sent.
const floodScript = `import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
end = time.time() + float(sys.argv[2])
n = 0
while time.time() < end:
    s.sendto(b"READY=1\nSTATUS=flood", sys.argv[1])
    n += 1
print(n)
`

// A flood of datagrams from a stranger (root, so it can connect to a root
// worker's socket) gives at most one log line a second for that worker,
// with the count since the last one, and every message in /metrics.
func TestNotifyFloodIsLoggedOncePerSecond(t *testing.T) {
	t.Parallel()
	python := requireTool(t, "python3")
	b := startBaton(t, "run", "-w", "2", "--ready", "notify", "--metrics-bind", "127.0.0.1:0", "--", testworkerBin, "-notify-ready")
	metrics := b.waitLog(t, "metrics endpoint listening", nil, waitTimeout).str("addr")
	st := b.waitReady(t, 2)
	target := st.WorkerList[0].Pid
	sock := notifySocketOf(t, target)

	const seconds = 3
	start := time.Now()
	out, err := exec.Command(python, "-c", floodScript, sock, strconv.Itoa(seconds)).CombinedOutput()
	if err != nil {
		t.Fatalf("flood: %v: %s", err, out)
	}
	elapsed := time.Since(start)
	sent, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || sent < 100 {
		t.Fatalf("flood sent %q datagrams; want a flood", out)
	}
	var counter float64
	waitFor(t, waitTimeout, fmt.Sprintf("baton_notify_rejected_total to reach %d", sent), func() bool {
		f := scrape(t, "http://"+metrics+"/metrics")["baton_notify_rejected_total"]
		if f == nil || len(f.GetMetric()) == 0 {
			return false
		}
		counter = f.GetMetric()[0].GetCounter().GetValue()
		return counter >= float64(sent)
	})
	if counter != float64(sent) {
		t.Errorf("baton_notify_rejected_total = %v, %d were sent", counter, sent)
	}

	lines := b.logs(refusedNotify, nil)
	counted := 0
	for i, r := range lines {
		if r.int("pid") != target {
			t.Errorf("refusal for another worker than the flooded one (%d): %s", target, r)
		}
		counted += r.int("count")
		if i > 0 {
			if gap := r.time(t).Sub(lines[i-1].time(t)); gap < 900*time.Millisecond {
				t.Errorf("refusal lines %v apart, want about a second at least:\n%s\n%s", gap, lines[i-1], r)
			}
		}
	}
	t.Logf("%d datagrams in %v: %d log lines, counter %v", sent, elapsed.Round(time.Millisecond), len(lines), counter)
	if max := int(elapsed/time.Second) + 2; len(lines) > max {
		t.Errorf("%d log lines for %v of flood, want at most %d", len(lines), elapsed, max)
	}
	if counted != sent {
		t.Errorf("the log lines count %d refused messages, %d were sent", counted, sent)
	}
	for _, w := range b.mustStatus(t).WorkerList {
		if w.Status == "flood" {
			t.Errorf("worker %d took the stranger's STATUS=", w.Pid)
		}
	}
	servingGenerations(t, b.Addr(), 2)
}

// puma with Debian's ruby-sd-notify, whose client only connects to a
// path: it takes baton's listener through systemd socket activation,
// tells baton it is ready, and serves.
func TestNotifyPumaWithSdNotifyGem(t *testing.T) {
	t.Parallel()
	puma := requireTool(t, "puma")
	if out, err := exec.Command(requireTool(t, "ruby"), "-e", `require "sd_notify"`).CombinedOutput(); err != nil {
		t.Fatalf("ruby's sd_notify is not installed (Debian ruby-sd-notify): run scripts/install-test-deps: %v: %s", err, out)
	}
	app := t.TempDir()
	writeFile(t, app, "config.ru", `run lambda { |env| [200, {"Content-Type" => "text/plain"}, [Process.pid.to_s]] }`+"\n", 0o644)
	b := startBaton(t, "run", "-w", "2", "--ready", "notify", "--boot-timeout", "30s", "--chdir", app,
		"--", puma, "--bind-to-activated-sockets", "only", "config.ru")
	st := b.waitReady(t, 2)
	for _, r := range b.logs("worker ready", nil) {
		if r.str("seen_by") != "notify" {
			t.Errorf("worker ready %s, want seen by notify", r)
		}
	}
	res := startLoad(loadOptions{addr: b.Addr(), concurrency: 4, maxRequests: 200, maxDuration: 60 * time.Second, timeout: 20 * time.Second}).wait()
	t.Logf("load: %v", res)
	if res.Failures() > 0 || res.OK != 200 {
		t.Errorf("want 200 successful requests: %v", res)
	}
	for pid := range res.Pids {
		if _, ok := withPid(st, pid); !ok {
			t.Errorf("pid %d answered; it is not a baton worker", pid)
		}
	}
	if strings.Contains(b.Stderr(), "NotifyError") || strings.Contains(b.Stdout(), "NotifyError") {
		t.Errorf("sd_notify failed:\n%s", lastLines(b.Stderr(), 40))
	}
	if len(b.logs("worker exited", nil)) > 0 {
		t.Errorf("a worker exited while serving:\n%s", lastLines(b.Stderr(), 40))
	}
	b.signal(t, syscall.SIGTERM)
	if code := b.waitExit(t, 40*time.Second); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
	b.assertNothingLeft(t)
}
