package forkserver

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// appPy is the preloaded application: it records which process imported it.
const appPy = `import os
IMPORTED_BY = os.getpid()
`

// probePy is a worker entry point that reports what it finds, to the file
// named by its last argument, and exits with $PROBE_EXIT.
const probePy = `import gc, json, os, signal, sys
import app

def main():
    out = sys.argv[-1]
    sys.stderr.write("probe stderr from %d\n" % os.getpid())
    sys.stderr.flush()
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
            fds.append(int(name))
        except OSError:
            pass  # the directory listdir had open
    report = {
        "name": __name__, "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0),
        "env": dict(os.environ), "argv": sys.argv, "path0": sys.path[0],
        "app_imported_by": app.IMPORTED_BY, "gc": gc.isenabled(), "fds": sorted(fds),
        "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "stderr_is_pipe": os.path.realpath("/proc/self/fd/2").startswith("pipe:") or
                          os.readlink("/proc/self/fd/2").startswith("pipe:"),
        "main": main_module(),
    }
    with open(out + ".tmp", "w") as f:
        json.dump(report, f)
    os.rename(out + ".tmp", out)
    sys.exit(int(os.environ.get("PROBE_EXIT", "0")))

def main_module():
    """What the interpreter made of the program it runs: __main__'s dunders."""
    m = sys.modules["__main__"]
    spec = getattr(m, "__spec__", None)
    return {"file": getattr(m, "__file__", None), "package": getattr(m, "__package__", None),
            "spec": spec.name if spec else None, "cached": getattr(m, "__cached__", None),
            "loader": type(getattr(m, "__loader__", None)).__name__,
            "argv0_is_file": sys.argv[0] == getattr(m, "__file__", None),
            "dunders": sorted(k for k in vars(m) if k.startswith("__"))}

if __name__ == "__main__":
    main()
`

type probeReport struct {
	Name          string            `json:"name"`
	Pid           int               `json:"pid"`
	Ppid          int               `json:"ppid"`
	Pgid          int               `json:"pgid"`
	Env           map[string]string `json:"env"`
	Argv          []string          `json:"argv"`
	Path0         string            `json:"path0"`
	AppImportedBy int               `json:"app_imported_by"`
	GC            bool              `json:"gc"`
	FDs           []int             `json:"fds"`
	SigInt        bool              `json:"sigint"`
	SigTerm       bool              `json:"sigterm"`
	StderrIsPipe  bool              `json:"stderr_is_pipe"`
	Main          map[string]any    `json:"main"`
}

// TestTemplateForksWorkers runs each kind of entry point in a forked
// worker and checks the protocol's promises: ready lists the preloaded
// module; the worker is the test's (baton's) child in its own process
// group, runs nothing before go, gets exactly the environment sent plus
// LISTEN_PID, the listener and nothing of the template's, its own stderr
// pipe, the argv and sys.path[0] its interpreter would give it, and the
// application the template imported.
func TestTemplateForksWorkers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		command func(dir, out string) []string
		argv    func(dir, out string) []string // the sys.argv the program should see
		path0   func(dir string) string
	}{
		{
			name:    "module",
			command: func(dir, out string) []string { return []string{debianPython, "-u", "-m", "probe", "a b", out} },
			argv:    func(dir, out string) []string { return []string{filepath.Join(dir, "probe.py"), "a b", out} },
			path0:   func(dir string) string { return dir },
		},
		{
			name:    "script",
			command: func(dir, out string) []string { return []string{debianPython, "-X", "dev", "probe.py", "a b", out} },
			argv:    func(dir, out string) []string { return []string{"probe.py", "a b", out} },
			path0:   func(dir string) string { return dir },
		},
		{
			name: "shebang",
			command: func(dir, out string) []string {
				return []string{filepath.Join(dir, "bin", "probe-cli"), "a b", out}
			},
			argv:  func(dir, out string) []string { return []string{filepath.Join(dir, "bin", "probe-cli"), "a b", out} },
			path0: func(dir string) string { return filepath.Join(dir, "bin") },
		},
		{
			name: "code",
			command: func(dir, out string) []string {
				return []string{debianPython, "-c", "import probe; probe.main()", "a b", out}
			},
			argv:  func(dir, out string) []string { return []string{"-c", "a b", out} },
			path0: func(dir string) string { return "" },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"app.py": appPy, "probe.py": probePy})
			if err := os.Mkdir(filepath.Join(dir, "bin"), 0o755); err != nil {
				t.Fatal(err)
			}
			// The shebang script imports probe from its own directory.
			writeFiles(t, filepath.Join(dir, "bin"), map[string]string{
				"probe-cli": "#!/usr/bin/python3 -u\nimport sys\nsys.path.append(" + strconv.Quote(dir) + ")\nimport probe\nif __name__ == '__main__':\n    probe.main()\n",
			})
			out := filepath.Join(dir, "report.json")
			listener, _ := tcpListener(t)
			tp := startTemplate(t, templateSpec{dir: dir, command: tc.command(dir, out), preload: []string{"app"}, listener: listener})

			ready := tp.expect(TypeReady)
			if ready.Pid != tp.cmd.Process.Pid || !slices.Equal(ready.Preloaded, []string{"app"}) || ready.Python == "" {
				t.Fatalf("ready = %+v; want pid %d, preloaded [app], a python version", ready, tp.cmd.Process.Pid)
			}
			// What the same command makes of its program run as it is.
			direct := runDirect(t, dir, tc.command(dir, out+".direct"))
			if tc.name == "module" || tc.name == "script" {
				// The template read and compiled the program once: its
				// workers need the file no more.
				if err := os.Rename(filepath.Join(dir, "probe.py"), filepath.Join(dir, "probe.py.moved")); err != nil {
					t.Fatal(err)
				}
				os.RemoveAll(filepath.Join(dir, "__pycache__"))
			}
			env := append(baseEnv(), "LISTEN_FDS=1", "LISTEN_FDNAMES=web", "BATON_WORKER_ID=7",
				"BATON_MASTER_PID="+strconv.Itoa(os.Getpid()), "PROBE_EXIT=7", "ODD=a=b c")
			pending, pid := tp.fork(1, env)

			ppid, pgid := procStat(t, pid)
			if ppid != os.Getpid() {
				t.Errorf("the worker's parent is %d when forked is received; want the test process %d (the subreaper)", ppid, os.Getpid())
			}
			waitBlockedInRead(t, pid, out)
			if err := pending.Go(); err != nil {
				t.Fatal(err)
			}
			var rep probeReport
			if err := json.Unmarshal(waitFile(t, out), &rep); err != nil {
				t.Fatal(err)
			}
			ws := tp.reap(pid)
			if !ws.Exited() || ws.ExitStatus() != 7 {
				t.Errorf("worker exit: %v; want exit status 7 ($PROBE_EXIT via sys.exit)", ws)
			}
			stderr, _ := bufio.NewReader(pending.Stderr()).ReadString('\n')
			pending.Stderr().Close()
			if want := fmt.Sprintf("probe stderr from %d\n", pid); stderr != want {
				t.Errorf("stderr pipe gave %q, want %q", stderr, want)
			}

			if rep.Pid != pid || rep.Ppid != os.Getpid() || pgid != pid || rep.Pgid != pid {
				t.Errorf("worker pid %d ppid %d pgid %d (stat pgid %d); want pid %d, ppid %d (test), its own group", rep.Pid, rep.Ppid, rep.Pgid, pgid, pid, os.Getpid())
			}
			if rep.AppImportedBy != tp.cmd.Process.Pid {
				t.Errorf("app was imported by pid %d; want the template, %d", rep.AppImportedBy, tp.cmd.Process.Pid)
			}
			wantEnv := map[string]string{"LISTEN_PID": strconv.Itoa(pid)}
			for _, kv := range env {
				k, v, _ := strings.Cut(kv, "=")
				wantEnv[k] = v
			}
			if !mapsEqual(rep.Env, wantEnv) {
				t.Errorf("worker env:\n%v\nwant:\n%v", rep.Env, wantEnv)
			}
			if want := tc.argv(dir, out); !slices.Equal(rep.Argv, want) {
				t.Errorf("sys.argv = %q, want %q", rep.Argv, want)
			}
			if want := tc.path0(dir); rep.Path0 != want {
				t.Errorf("sys.path[0] = %q, want %q", rep.Path0, want)
			}
			if !slices.Equal(rep.FDs, []int{0, 1, 2, 3}) {
				t.Errorf("worker fds %v; want [0 1 2 3] (the listener, no control socket, no pipe of the template)", rep.FDs)
			}
			// The shebang script and the code call probe.main() as a module
			// (the script under its own __main__ guard).
			if wantName := map[bool]string{true: "__main__", false: "probe"}[tc.name == "module" || tc.name == "script"]; rep.Name != wantName {
				t.Errorf("probe's __name__ = %q, want %q", rep.Name, wantName)
			}
			if !mapsEqualAny(rep.Main, direct.Main) {
				t.Errorf("the worker's __main__ %v; run as it is, the command's is %v", rep.Main, direct.Main)
			}
			if !rep.GC || !rep.SigInt || !rep.SigTerm || !rep.StderrIsPipe {
				t.Errorf("worker state %+v; want gc on, Python's SIGINT handler, SIGTERM default, stderr a pipe", rep)
			}
		})
	}
}

// runDirect runs command as it is, in dir, and returns its probe report
// (the last argument of command names the report file).
func runDirect(t *testing.T, dir string, command []string) probeReport {
	t.Helper()
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Dir = dir
	cmd.Env = baseEnv()
	if out, err := cmd.CombinedOutput(); err != nil && cmd.ProcessState.ExitCode() != 0 {
		t.Fatalf("%q run directly: %v: %s", command, err, out)
	}
	var rep probeReport
	if err := json.Unmarshal(waitFile(t, command[len(command)-1]), &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

func mapsEqualAny(a, b map[string]any) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || fmt.Sprint(w) != fmt.Sprint(v) {
			return false
		}
	}
	return true
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// startProbeTemplate starts a ready template that preloads app.py and whose
// workers run probe.py (python3 -m probe), which writes its report to out.
func startProbeTemplate(t *testing.T) (tp *template, out string) {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"app.py": appPy, "probe.py": probePy})
	out = filepath.Join(dir, "report.json")
	tp = startTemplate(t, templateSpec{dir: dir, command: []string{debianPython, "-m", "probe", out}, preload: []string{"app"}})
	tp.expect(TypeReady)
	return tp, out
}

// TestTemplateAbort: a worker whose go pipe closes without a byte exits 0
// at once and runs nothing; the template forks the next one as usual.
func TestTemplateAbort(t *testing.T) {
	t.Parallel()
	tp, out := startProbeTemplate(t)
	env := append(baseEnv(), "BATON_MASTER_PID="+strconv.Itoa(os.Getpid()))
	pending, pid := tp.fork(1, env)
	waitBlockedInRead(t, pid, out)
	pending.Abort()
	if ws := tp.reap(pid); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("aborted worker: %v; want exit status 0", ws)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("the aborted worker ran the command")
	}
	second, pid2 := tp.fork(2, env)
	if err := second.Go(); err != nil {
		t.Fatal(err)
	}
	waitFile(t, out)
	if ws := tp.reap(pid2); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("second worker: %v; want exit status 0", ws)
	}
	second.Stderr().Close()
}

// TestTemplateWorkerOfAnotherMaster: a worker whose parent is not
// BATON_MASTER_PID (its master died between fork and go) starts nothing.
func TestTemplateWorkerOfAnotherMaster(t *testing.T) {
	t.Parallel()
	tp, out := startProbeTemplate(t)
	pending, pid := tp.fork(1, append(baseEnv(), "BATON_MASTER_PID=1"))
	if err := pending.Go(); err != nil {
		t.Fatal(err)
	}
	if ws := tp.reap(pid); !ws.Exited() || ws.ExitStatus() != 0 {
		t.Errorf("worker: %v; want exit status 0", ws)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("the worker ran the command although its parent is not BATON_MASTER_PID")
	}
	b, _ := bufio.NewReader(pending.Stderr()).ReadString('\n')
	pending.Stderr().Close()
	if !strings.Contains(b, "the master (pid 1) is gone") {
		t.Errorf("worker stderr %q; want it to say the master is gone", b)
	}
}

// TestTemplateImportError: an import error becomes an error message with
// the traceback (cut to fit a datagram when long), on stderr too, and the
// template exits 1.
func TestTemplateImportError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, module, source, wantError string
	}{
		{"missing", "broken", "import os\nimport no_such_module_baton\n", "ModuleNotFoundError: No module named 'no_such_module_baton'"},
		{"syntax", "broken", "def f(:\n    pass\n", "SyntaxError: invalid syntax"},
		{"huge", "broken", "raise RuntimeError('head' + 'x' * 300000 + 'tail')\n", "RuntimeError: headxxx"},
		{"sysexit", "broken", "import sys\nsys.exit(3)\n", "SystemExit: 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{tc.module + ".py": tc.source})
			tp := startTemplate(t, templateSpec{dir: dir, command: []string{debianPython, "-m", "http.server"}, preload: []string{tc.module}})
			m := tp.expect(TypeError)
			if !strings.HasPrefix(m.Error, tc.wantError) {
				t.Errorf("error = %.200q, want it to start with %q", m.Error, tc.wantError)
			}
			if !strings.HasPrefix(m.Traceback, "Traceback (most recent call last):") || !strings.Contains(m.Traceback, filepath.Join(dir, tc.module+".py")) && tc.name != "syntax" {
				t.Errorf("traceback = %.300q; want Python's traceback naming %s.py", m.Traceback, tc.module)
			}
			if code := tp.waitExit(); code != 1 {
				t.Errorf("template exit code %d, want 1", code)
			}
			if stderr := tp.stderrText(); !strings.Contains(stderr, tc.wantError) {
				t.Errorf("template stderr %.300q; want the traceback", stderr)
			}
			if tc.name == "huge" {
				size, _ := json.Marshal(m)
				if len(size) > MaxMessage || !strings.Contains(m.Error+m.Traceback, "characters left out") || !strings.HasSuffix(strings.TrimSpace(m.Traceback), "xxxtail") {
					t.Errorf("huge traceback: %d bytes, tail %q; want at most %d, cut in the middle, the tail kept", len(size), m.Traceback[max(0, len(m.Traceback)-80):], MaxMessage)
				}
			}
		})
	}
}

// TestTemplateExits: closing baton's end ends the template (exit 0); SIGINT
// does nothing to it; SIGTERM ends it.
func TestTemplateExits(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"app.py": appPy})
	t.Run("close", func(t *testing.T) {
		t.Parallel()
		tp := startTemplate(t, templateSpec{dir: dir, command: []string{debianPython, "-m", "http.server"}, preload: []string{"app"}})
		tp.expect(TypeReady)
		tp.conn.Close()
		if code := tp.waitExit(); code != 0 {
			t.Errorf("exit code %d after Close, want 0; stderr:\n%s", code, tp.stderrText())
		}
		if err := <-tp.received; err != nil {
			t.Errorf("Receive after Close: %v", err)
		}
	})
	t.Run("signals", func(t *testing.T) {
		t.Parallel()
		tp := startTemplate(t, templateSpec{dir: dir, command: []string{debianPython, "-m", "http.server"}, preload: []string{"app"}})
		tp.expect(TypeReady)
		unix.Kill(tp.cmd.Process.Pid, unix.SIGINT)
		pending, pid := tp.fork(1, append(baseEnv(), "BATON_MASTER_PID="+strconv.Itoa(os.Getpid())))
		// A worker waiting for go dies of SIGINT quietly (baton's quick
		// shutdown), with no KeyboardInterrupt traceback.
		waitBlockedInRead(t, pid, filepath.Join(t.TempDir(), "none"))
		unix.Kill(pid, unix.SIGINT)
		if ws := tp.reap(pid); !ws.Signaled() || ws.Signal() != unix.SIGINT {
			t.Errorf("worker waiting for go, after SIGINT: %v; want killed by SIGINT", ws)
		}
		pending.Stderr().SetReadDeadline(time.Now().Add(patience))
		if b, err := io.ReadAll(pending.Stderr()); len(b) != 0 || err != nil {
			t.Errorf("worker stderr %q (%v); want nothing", b, err)
		}
		pending.Abort()
		unix.Kill(tp.cmd.Process.Pid, unix.SIGTERM)
		if code := tp.waitExit(); code != 0 {
			t.Errorf("exit code %d after SIGTERM, want 0", code)
		}
		if err := <-tp.received; err != nil {
			t.Errorf("Receive after the template's exit: %v", err)
		}
	})
}

// TestTemplateWarnsAboutThreads: a preloaded module that starts a thread
// gets a warning on the template's stderr; forking still works.
func TestTemplateWarnsAboutThreads(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"threaded.py": "import threading, time\nthreading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"})
	tp := startTemplate(t, templateSpec{dir: dir, command: []string{debianPython, "-m", "http.server"}, preload: []string{"threaded"}})
	tp.expect(TypeReady)
	pending, pid := tp.fork(1, append(baseEnv(), "BATON_MASTER_PID="+strconv.Itoa(os.Getpid())))
	pending.Abort()
	tp.reap(pid)
	if stderr := tp.stderrText(); !strings.Contains(stderr, "warning: the template runs more than one thread") {
		t.Errorf("template stderr %q; want the thread warning", stderr)
	}
}

// TestTemplateWarnsAboutSharedSockets: a preloaded module that opens a
// socket at import (a database connection, say) gets a warning naming the
// fd, since every worker would share it; a module that opens none gets no
// warning.
func TestTemplateWarnsAboutSharedSockets(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, module string
		warns        bool
	}{
		{"a socket", "import socket\nCONNECTION = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n", true},
		{"nothing", "import json\nSETTINGS = json.loads('{}')\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"db.py": tc.module})
			tp := startTemplate(t, templateSpec{dir: dir, command: []string{debianPython, "-m", "http.server"}, preload: []string{"db"}})
			tp.expect(TypeReady)
			warned := strings.Contains(tp.stderrText(), "every worker shares it")
			if warned != tc.warns {
				t.Errorf("template stderr %q; want a shared-fd warning: %v", tp.stderrText(), tc.warns)
			}
			if tc.warns && !strings.Contains(tp.stderrText(), "socket:[") {
				t.Errorf("the warning does not name the socket: %q", tp.stderrText())
			}
		})
	}
}

// TestTemplateForksQueuedRequestsTogether: requests queued at once (a
// reload of many workers) are forked together, and still each worker holds
// only its own pipes: no other worker's stderr or go pipe, no report pipe
// of the template.
func TestTemplateForksQueuedRequestsTogether(t *testing.T) {
	t.Parallel()
	tp, out := startProbeTemplate(t)
	env := append(baseEnv(), "BATON_MASTER_PID="+strconv.Itoa(os.Getpid()))
	const n = 6
	pending := map[int]*Pending{}
	for id := 1; id <= n; id++ {
		p, err := tp.conn.Fork(id, env)
		if err != nil {
			t.Fatal(err)
		}
		pending[id] = p
	}
	pids := map[int]int{} // request id -> worker
	for range n {
		m := tp.expect(TypeForked)
		if _, dup := pids[m.ID]; dup || pending[m.ID] == nil || m.Pid <= 0 {
			t.Fatalf("forked %+v: unknown or repeated request", m)
		}
		pids[m.ID] = m.Pid
		tp.workers[m.Pid] = false
	}
	owner := map[string]int{} // pipe -> the worker holding it
	for id, pid := range pids {
		waitBlockedInRead(t, pid, out)
		var held []string
		entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
			if strings.HasPrefix(target, "pipe:") {
				held = append(held, target)
				if other, ok := owner[target]; ok {
					t.Errorf("workers %d and %d both hold %s", other, pid, target)
				}
				owner[target] = pid
			}
		}
		if len(held) != 2 {
			t.Errorf("worker %d (request %d) holds pipes %v; want 2, its stderr and its go pipe", pid, id, held)
		}
	}
	for id, pid := range pids {
		pending[id].Abort()
		if ws := tp.reap(pid); !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("aborted worker %d: %v; want exit status 0", pid, ws)
		}
	}
}
