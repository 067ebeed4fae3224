package e2e

import (
	"strings"
	"testing"
	"time"
)

// Reloads with real third-party servers whose "import" takes a while: the
// new generation must be seen ready by ready = "auto" with no change to the
// app (from /proc: its epoll registration, or gunicorn's sync worker blocked
// in select), and no request may fail while the old one drains.

const importDelay = 700 * time.Millisecond

const slowASGIApp = `import os, time
time.sleep(0.7)  # a slow import, as a big Django or FastAPI app has

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
`

const slowWSGIApp = `import os, time
time.sleep(0.7)

def app(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
`

// A node server that boots slowly and closes gracefully on SIGTERM (node's
// default action would kill it with requests in flight).
const slowNodeServer = `setTimeout(() => {
  const s = require('http').createServer((q, r) => r.end(String(process.pid))).listen({fd: 3});
  process.on('SIGTERM', () => s.close(() => process.exit(0)));
}, 700)`

func TestAutoReadinessReloadsRealServersWithoutAFailedRequest(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		tool    string
		flags   []string
		command []string
		files   map[string]string
	}{
		{"uvicorn --fd 3", "/usr/bin/uvicorn", nil,
			[]string{"/usr/bin/uvicorn", "--fd", "3", "app:app"}, map[string]string{"app.py": slowASGIApp}},
		{"gunicorn --bind fd://3", "/usr/bin/gunicorn", []string{"--listen-env=false"},
			[]string{"/usr/bin/gunicorn", "--bind", "fd://3", "app:app"}, map[string]string{"app.py": slowWSGIApp}},
		{"gunicorn with LISTEN_FDS", "/usr/bin/gunicorn", nil,
			[]string{"/usr/bin/gunicorn", "app:app"}, map[string]string{"app.py": slowWSGIApp}},
		{"node listen fd 3", "node", nil,
			[]string{"node", "-e", slowNodeServer}, nil},
		{"Go net/http", testworkerBin, nil,
			[]string{testworkerBin, "-boot-delay", importDelay.String()}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			requireTool(t, tc.tool)
			appDir := t.TempDir()
			for name, content := range tc.files {
				writeFile(t, appDir, name, content, 0o644)
			}
			args := append([]string{"run", "-w", "2", "--chdir", appDir, "--graceful-timeout", "20s"}, tc.flags...)
			b := startBaton(t, append(append(args, "--"), tc.command...)...)
			b.waitReady(t, 2)

			l := steadyLoad(b)
			time.Sleep(200 * time.Millisecond)
			r := b.reload(t, 2)
			time.Sleep(300 * time.Millisecond) // the old generation drains under load
			res := l.stop()
			if !r.OK {
				t.Fatalf("reload: %s", describeReload(&r))
			}
			assertNoFailures(t, res)
			ready := b.logs("worker ready", func(r record) bool { return r.int("generation") == 2 })
			if len(ready) != 2 {
				t.Fatalf("%d new workers ready, want 2", len(ready))
			}
			for _, r := range ready {
				boot, err := time.ParseDuration(r.str("boot_time"))
				if r.str("seen_by") != "auto" || err != nil || boot < importDelay {
					t.Errorf("new worker ready after %s (seen by %s); the app imports for %v: %s",
						r.str("boot_time"), r.str("seen_by"), importDelay, r)
				}
			}
			if out := b.Stderr(); strings.Contains(out, "Traceback") {
				t.Errorf("a Python traceback in the output:\n%s", lastLines(out, 60))
			}
		})
	}
}
