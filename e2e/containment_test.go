package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The containment cases of issue 11, each in both modes: "auto" (on this
// machine, as root, a cgroup per worker; that it is cgroups is asserted,
// so a machine without them fails loudly rather than testing the fallback
// twice) and "off" (the fallback: subreaper and /proc).
var containmentModes = []string{"auto", "off"}

// statusOf is `baton status --json` of b, through its control socket.
func statusOf(t *testing.T, sock string) map[string]any {
	t.Helper()
	return statusJSON(t, sock)
}

// checkContainment asserts the mode the master reports.
func checkContainment(t *testing.T, sock, mode string) {
	t.Helper()
	got, _ := statusOf(t, sock)["containment"].(string)
	want := "cgroup /"
	if mode == "off" {
		want = "process tree"
	}
	if !strings.HasPrefix(got, want) {
		t.Fatalf("containment %q in cgroup mode %q, want %q...: on this machine baton runs as root with a writable cgroup v2 tree", got, mode, want)
	}
}

// withIdentity lists the live processes whose environment carries
// BATON_MASTER_PID=master: everything a master's workers started.
func withIdentity(master int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if strings.Contains(string(stat), ") Z ") {
			continue
		}
		for _, kv := range strings.Split(string(env), "\x00") {
			if kv == fmt.Sprintf("BATON_MASTER_PID=%d", master) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// A worker's child that calls setsid() and serves: it must not survive
// its worker's retirement (a reload) nor the master's stop, which would
// then be reported while old code still serves.
func TestSetsidEscapeDiesWithItsWorker(t *testing.T) {
	for _, mode := range containmentModes {
		t.Run("cgroup="+mode, func(t *testing.T) {
			t.Parallel()
			sock := filepath.Join(t.TempDir(), "baton.sock")
			b := startBaton(t, "run", "-w", "2", "--cgroup", mode, "--control", sock, "--ready", "delay:300ms",
				// The escape serves: LISTEN_PID names it, as a server
				// that takes its parent's sockets would.
				"--", "/bin/sh", "-c", fmt.Sprintf("setsid /bin/sh -c 'export LISTEN_PID=$$; exec %s' & exec sleep 3600", testworkerBin))
			b.waitLogs(t, "worker ready", nil, 2, waitTimeout)
			checkContainment(t, sock, mode)
			waitFor(t, waitTimeout, "the escaped workers to serve", func() bool {
				r, err := get(b.Addr(), "/", time.Second)
				return err == nil && r.status == 200
			})
			if r := cli(t, nil, "reload", "--control", sock); r.code != 0 {
				t.Fatalf("reload: exit %d: %s", r.code, r.stdout)
			}
			// Every answer comes from generation 2: the escapes of
			// generation 1 were killed with their workers.
			waitFor(t, waitTimeout, "generation 1's escapes to be gone", func() bool {
				for i := 0; i < 20; i++ {
					r, err := get(b.Addr(), "/", time.Second)
					if err != nil || !strings.Contains(string(r.body), `"generation":"2"`) {
						return false
					}
				}
				return true
			})
			if r := cli(t, nil, "stop", "--control", sock); r.code != 0 {
				t.Fatalf("stop: exit %d: %s", r.code, r.stderr)
			}
			b.waitExit(t, exitTimeout)
			if left := withIdentity(b.Pid); len(left) > 0 {
				t.Fatalf("after baton stop said stopped, processes of its workers still run: %v", left)
			}
			if !portFree(b.Addr()) {
				t.Fatal("the port still accepts after baton stop")
			}
		})
	}
}

// kill -9 of the master leaves the children of its workers (here the
// python server a shell wrapper started; gunicorn's workers likewise).
// With cgroups the next master on the same port kills them and serves;
// without, it names them (TestKilledMastersGrandchildIsNamed).
func TestRestartAfterKill9ReclaimsTheLeftoversWithCgroups(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidfile, sock := filepath.Join(dir, "baton.pid"), filepath.Join(dir, "baton.sock")
	addr := freeAddr(t)
	server := filepath.Join(dir, "srv.py")
	if err := os.WriteFile(server, []byte(pythonFDServer), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"run", "-b", addr, "-w", "2", "--pid", pidfile, "--control", sock, "--ready", "delay:500ms",
		"--", "/bin/sh", "-c", "python3 " + server + "; echo the server ended"}
	first := launch(t, batonSpec{args: args, noBind: true})
	first.waitLogs(t, "worker ready", nil, 2, waitTimeout)
	checkContainment(t, sock, "auto")
	waitFor(t, waitTimeout, "python to serve", func() bool {
		r, err := get(addr, "/", time.Second)
		return err == nil && r.status == 200
	})
	first.signal(t, syscall.SIGKILL)
	select {
	case <-first.done:
	case <-time.After(exitTimeout):
		t.Fatal("baton survived SIGKILL")
	}
	orphans := withIdentity(first.Pid)
	if len(orphans) == 0 {
		t.Fatal("nothing of the killed master's workers survived: the test no longer shows the problem")
	}
	if r, err := get(addr, "/", time.Second); err != nil || r.status != 200 {
		t.Fatalf("the orphaned python servers do not serve after kill -9 (%v): the test no longer shows the problem", err)
	}

	started := time.Now()
	second := launch(t, batonSpec{args: args, noBind: true})
	second.waitLogs(t, "worker ready", nil, 2, waitTimeout)
	second.waitLog(t, "killed the processes a previous master left in its worker's cgroup", nil, waitTimeout)
	if d := time.Since(started); d > 3*time.Second+500*time.Millisecond {
		t.Errorf("the new master took %v to serve, want about 3 s at most (500 ms of it is the readiness delay)", d)
	}
	if left := withIdentity(first.Pid); len(left) > 0 {
		t.Errorf("processes of the killed master's workers still run: %v", left)
	}
	for i := 0; i < 10; i++ {
		r, err := get(addr, "/", time.Second)
		if err != nil || !strings.Contains(string(r.body), fmt.Sprintf("master %d", second.Pid)) {
			t.Fatalf("answer %d: %q, %v; want one from the new master's workers", i, r.body, err)
		}
	}
}

// pythonFDServer serves on fd 3 and says which master started it.
const pythonFDServer = `import os, socket, http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = ("master %s pid %d\n" % (os.environ.get("BATON_MASTER_PID"), os.getpid())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
class S(socketserver.TCPServer):
    def server_bind(self): pass
    def server_activate(self): pass
srv = S(("", 0), H, bind_and_activate=False)
srv.socket = socket.socket(fileno=3)
srv.serve_forever()
`

// gunicorn's arbiter forks its own workers; with cgroups they are all in
// the baton worker's cgroup and a restart after kill -9 reclaims them.
func TestGunicornArbiterWorkersAreReclaimedAfterKill9(t *testing.T) {
	t.Parallel()
	gunicorn, err := exec.LookPath("gunicorn")
	if err != nil {
		t.Fatal("gunicorn is not installed: scripts/install-test-deps installs it")
	}
	dir := t.TempDir()
	app := filepath.Join(dir, "app.py")
	if err := os.WriteFile(app, []byte("def app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'ok']\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pidfile, sock := filepath.Join(dir, "baton.pid"), filepath.Join(dir, "baton.sock")
	addr := freeAddr(t)
	args := []string{"run", "-b", addr, "-w", "1", "--pid", pidfile, "--control", sock, "--chdir", dir,
		"--", gunicorn, "--workers", "2", "app:app"}
	first := launch(t, batonSpec{args: args, noBind: true})
	first.waitLogs(t, "worker ready", nil, 1, waitTimeout)
	checkContainment(t, sock, "auto")
	var procs float64
	waitFor(t, waitTimeout, "the arbiter and its two workers", func() bool {
		st := statusOf(t, sock)
		ws, _ := st["worker_list"].([]any)
		if len(ws) != 1 {
			return false
		}
		procs, _ = ws[0].(map[string]any)["processes"].(float64)
		return procs == 3
	})
	first.signal(t, syscall.SIGKILL)
	<-first.done
	second := launch(t, batonSpec{args: args, noBind: true})
	second.waitLogs(t, "worker ready", nil, 1, waitTimeout)
	if left := withIdentity(first.Pid); len(left) > 0 {
		t.Errorf("gunicorn processes of the killed master still run: %v", left)
	}
	r, err := get(addr, "/", 5*time.Second)
	if err != nil || r.status != 200 {
		t.Fatalf("the new master's gunicorn does not serve: %v", err)
	}
}

// status reports each worker's process count in both modes.
func TestStatusCountsEachWorkersProcesses(t *testing.T) {
	for _, mode := range containmentModes {
		t.Run("cgroup="+mode, func(t *testing.T) {
			t.Parallel()
			sock := filepath.Join(t.TempDir(), "baton.sock")
			b := startBaton(t, "run", "-w", "1", "--cgroup", mode, "--control", sock, "--ready", "delay:100ms",
				"--", "/bin/sh", "-c", fmt.Sprintf("sleep 3600 & exec %s", testworkerBin))
			b.waitLogs(t, "worker ready", nil, 1, waitTimeout)
			waitFor(t, waitTimeout, "2 processes in the worker (testworker, sleep)", func() bool {
				var st struct {
					Workers []struct {
						Procs int `json:"processes"`
					} `json:"worker_list"`
				}
				raw, _ := json.Marshal(statusOf(t, sock))
				json.Unmarshal(raw, &st)
				return len(st.Workers) == 1 && st.Workers[0].Procs == 2
			})
		})
	}
}

// In auto mode, where baton's cgroup is not its own to divide (here: a
// cgroup below the root that nobody delegated), baton says why and runs
// without cgroups; its workers are still contained, in the fallback way.
func TestAutoModeFallsBackWithAReasonWhereItsCgroupIsNotDelegated(t *testing.T) {
	t.Parallel()
	mount := cgroupMount()
	if mount == "" {
		t.Fatal("no cgroup v2 hierarchy: this machine cannot run the cgroup tests")
	}
	cg := filepath.Join(mount, fmt.Sprintf("e2e-not-delegated-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	defer syscall.Rmdir(cg)
	wrapper := filepath.Join(t.TempDir(), "baton-in-cgroup")
	script := fmt.Sprintf("#!/bin/sh\necho $$ > %s/cgroup.procs || exit 99\nexec %s \"$@\"\n", cg, batonBin)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "baton.sock")
	b := launch(t, batonSpec{bin: wrapper, args: []string{"run", "-w", "1", "--control", sock, "--", testworkerBin}})
	b.waitStarted(t)
	fallback := b.waitLog(t, `containment: without cgroups; a worker's processes are found in /proc (set cgroup = "off" to say so, or make a cgroup usable)`, nil, waitTimeout)
	if !strings.Contains(fallback.str("reason"), "is not delegated to baton") {
		t.Errorf("fallback reason %q, want that the cgroup is not delegated", fallback.str("reason"))
	}
	checkContainment(t, sock, "off")
	b.signal(t, syscall.SIGTERM)
	b.waitExit(t, exitTimeout)
}

// An explicit cgroup path that cannot be used stops the start (exit 2)
// with the reason: the operator asked for it.
func TestExplicitCgroupThatCannotBeUsedIsBadInput(t *testing.T) {
	t.Parallel()
	res := runToExit(t, batonSpec{args: []string{"run", "--cgroup", "/cgroup.procs/baton", "--", testworkerBin}})
	if res.code != 2 || !strings.Contains(res.stderr, "cannot create cgroup /cgroup.procs/baton") {
		t.Fatalf("exit %d, stderr %q; want exit 2 naming the cgroup", res.code, res.stderr)
	}
}

// gunicorn's arbiter forks its own workers: a reload and a stop must end
// them all, in both modes, and status counts the arbiter's tree.
func TestGunicornArbiterTreeEndsWithItsBatonWorker(t *testing.T) {
	gunicorn, err := exec.LookPath("gunicorn")
	if err != nil {
		t.Fatal("gunicorn is not installed: scripts/install-test-deps installs it")
	}
	for _, mode := range containmentModes {
		t.Run("cgroup="+mode, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			app := filepath.Join(dir, "app.py")
			if err := os.WriteFile(app, []byte("def app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [b'ok']\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			sock := filepath.Join(dir, "baton.sock")
			b := startBaton(t, "run", "-w", "1", "--cgroup", mode, "--control", sock, "--chdir", dir,
				"--", gunicorn, "--workers", "2", "app:app")
			checkContainment(t, sock, mode)
			arbiterTree := func(gen int) func() bool {
				return func() bool {
					var st struct {
						Workers []struct {
							Generation int `json:"generation"`
							State      string
							Procs      int `json:"processes"`
						} `json:"worker_list"`
					}
					raw, _ := json.Marshal(statusOf(t, sock))
					json.Unmarshal(raw, &st)
					return len(st.Workers) == 1 && st.Workers[0].Generation == gen && st.Workers[0].Procs == 3
				}
			}
			waitFor(t, waitTimeout, "gunicorn's arbiter and its two workers", arbiterTree(1))
			first := withIdentity(b.Pid)
			if r := cli(t, nil, "reload", "--control", sock); r.code != 0 {
				t.Fatalf("reload: exit %d: %s", r.code, r.stdout)
			}
			waitFor(t, waitTimeout, "generation 2's arbiter and workers, alone", arbiterTree(2))
			waitFor(t, waitTimeout, "generation 1's gunicorn processes to be gone", func() bool {
				for _, pid := range first {
					if syscall.Kill(pid, 0) == nil {
						if stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(stat), ") Z ") {
							return false
						}
					}
				}
				return true
			})
			if r := cli(t, nil, "stop", "--control", sock); r.code != 0 {
				t.Fatalf("stop: exit %d", r.code)
			}
			b.waitExit(t, exitTimeout)
			if left := withIdentity(b.Pid); len(left) > 0 {
				t.Fatalf("gunicorn processes left after baton stop: %v", left)
			}
		})
	}
}
