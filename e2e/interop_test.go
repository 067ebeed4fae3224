package e2e

import (
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Real third-party servers as workers: each takes its listener from fd 3 the
// way its documentation says, serves, and stops on TERM with nothing left.

const asgiApp = `import os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
`

const wsgiApp = `import os

def app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
`

const nodeServer = `require('http').createServer((q, s) => s.end(String(process.pid))).listen({fd: 3})`

// requireTool fails (never skips) the test when a program is missing.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run scripts/install-test-deps (%v)", name, err)
	}
	return path
}

func TestInterop(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		tool    string
		flags   []string // baton's
		command []string
		files   map[string]string
		// forks: the worker is itself a master that forks the process
		// that answers (gunicorn's arbiter and its sync worker).
		forks bool
	}{
		{
			name:    "uvicorn",
			tool:    "/usr/bin/uvicorn",
			command: []string{"/usr/bin/uvicorn", "--fd", "3", "app:app"},
			files:   map[string]string{"app.py": asgiApp},
		},
		{
			// gunicorn (20.1) takes the LISTEN_FDS sockets by itself;
			// given --bind fd://3 as well it would take fd 3 twice and
			// die with EBADF, hence --listen-env=false there.
			name:    "gunicorn --bind fd://3",
			tool:    "/usr/bin/gunicorn",
			flags:   []string{"--listen-env=false"},
			command: []string{"/usr/bin/gunicorn", "--bind", "fd://3", "app:app"},
			files:   map[string]string{"app.py": wsgiApp},
			forks:   true,
		},
		{
			name:    "gunicorn with LISTEN_FDS",
			tool:    "/usr/bin/gunicorn",
			command: []string{"/usr/bin/gunicorn", "app:app"},
			files:   map[string]string{"app.py": wsgiApp},
			forks:   true,
		},
		{
			name:    "node",
			tool:    "node",
			command: []string{"node", "-e", nodeServer},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			requireTool(t, tc.tool)
			appDir := t.TempDir()
			for name, content := range tc.files {
				writeFile(t, appDir, name, content, 0o644)
			}
			args := slices.Concat([]string{"run", "-w", "2", "--chdir", appDir}, tc.flags, []string{"--"}, tc.command)
			b := startBaton(t, args...)
			workers := workerPidsOf(b.waitListed(t, 2).WorkerList)

			// Requests wait in the backlog while the interpreters boot.
			res := startLoad(loadOptions{addr: b.Addr(), concurrency: 4, maxRequests: 200, maxDuration: 60 * time.Second, timeout: 20 * time.Second}).wait()
			t.Logf("load: %v", res)
			if res.Failures() > 0 || res.OK != 200 {
				t.Errorf("want 200 successful requests: %v", res)
			}
			answering := map[int]bool{}
			for pid := range res.Pids {
				answering[pid] = true
			}
			waitFor(t, waitTimeout, "both workers to answer", func() bool {
				if len(answering) >= 2 {
					return true
				}
				if r, err := get(b.Addr(), "/", 10*time.Second); err == nil {
					answering[pidFromBody(r.body)] = true
				}
				return false
			})

			// Who answers: the workers themselves, or for gunicorn the
			// processes they forked.
			var all []procStat
			for pid := range answering {
				p := statOf(t, pid)
				parentIsWorker := slices.Contains(workers, p.ppid)
				if tc.forks && !parentIsWorker {
					t.Errorf("pid %d answered; its parent %d is not a baton worker %v", pid, p.ppid, workers)
				}
				if !tc.forks && !slices.Contains(workers, pid) {
					t.Errorf("pid %d answered; it is not a baton worker %v", pid, workers)
				}
			}
			for _, w := range workers {
				all = append(all, statOf(t, w))
				for _, d := range descendants(w) {
					all = append(all, statOf(t, d))
				}
			}
			t.Logf("processes: %s", describeProcs(all))

			b.signal(t, syscall.SIGTERM)
			if code := b.waitExit(t, 40*time.Second); code != 0 {
				t.Errorf("exit code %d after TERM, want 0", code)
			}
			if left := waitProcsGone(all, 5*time.Second); len(left) > 0 {
				t.Errorf("left running after baton exited:\n%s", describeProcs(left))
			}
			b.assertNothingLeft(t)
			if out := b.Stderr(); strings.Contains(out, "Traceback") {
				t.Errorf("a Python traceback in the output:\n%s", lastLines(out, 60))
			}
		})
	}
}
