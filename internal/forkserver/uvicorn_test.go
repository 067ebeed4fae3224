package forkserver

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// asgiApp answers GET / with who imported it and who serves, and GET
// /block by blocking its event loop for 2 s between two notify messages.
const asgiApp = `import asyncio, os, socket, time
IMPORTED_BY = os.getpid()

def notify(text):
    addr = os.environ["NOTIFY_SOCKET"]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(text.encode(), addr)
    s.close()

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/block":
        notify("BLOCK_START=1")
        time.sleep(2)  # blocks the event loop, as a bad handler would
        notify("BLOCK_END=1")
    loop = asyncio.get_running_loop()
    body = ('{"imported_by": %d, "pid": %d, "loop": "%s"}' % (
        IMPORTED_BY, os.getpid(), type(loop).__module__)).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
`

type served struct {
	ImportedBy int    `json:"imported_by"`
	Pid        int    `json:"pid"`
	Loop       string `json:"loop"`
}

// get makes one request on a fresh connection (no retry, no keep-alive).
func get(t *testing.T, addr, path string) served {
	t.Helper()
	s, err := request(addr, path)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func request(addr, path string) (served, error) {
	var s served
	client := &http.Client{Timeout: patience, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return s, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		return s, fmt.Errorf("GET %s: %d %q %v", path, resp.StatusCode, body, err)
	}
	if err := json.Unmarshal(body, &s); err != nil {
		return s, fmt.Errorf("GET %s: %q: %w", path, body, err)
	}
	return s, nil
}

// runWorkers forks n workers with env and lets them run, their stderr
// read and thrown away; it returns their pids.
func (tp *template) runWorkers(n int, env []string) map[int]bool {
	tp.t.Helper()
	pids := map[int]bool{}
	for id := 1; id <= n; id++ {
		pending, pid := tp.fork(id, env)
		pids[pid] = true
		go io.Copy(io.Discard, pending.Stderr())
		tp.t.Cleanup(func() { pending.Stderr().Close() })
		if err := pending.Go(); err != nil {
			tp.t.Fatal(err)
		}
	}
	return pids
}

// TestTemplateUvicorn forks two workers running Debian's /usr/bin/uvicorn
// (a console script whose shebang is python3) on a listener at fd 3: both
// serve, with the application the template imported, and each exits 0 on
// SIGTERM (its signal dispositions are the interpreter's own again).
func TestTemplateUvicorn(t *testing.T) {
	t.Parallel()
	requireFile(t, "/usr/bin/uvicorn", "uvicorn")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"app.py": asgiApp})
	listener, addr := tcpListener(t)
	tp := startTemplate(t, templateSpec{
		dir:      dir,
		command:  []string{"/usr/bin/uvicorn", "--fd", "3", "--log-level", "warning", "app:app"},
		preload:  []string{"app"},
		listener: listener,
	})
	ready := tp.expect(TypeReady)
	if strings.Contains(tp.stderrText(), "every worker shares it") {
		t.Errorf("uvicorn's own modules left an fd open in the template: %s\nits fds: %s", tp.stderrText(), fdTable(tp.cmd.Process.Pid))
	}
	if !slices.Contains(ready.ServerModules, "uvicorn.main") {
		t.Errorf("ready = %+v; want uvicorn.main (the console script's entry point) pre-imported", ready)
	}
	// What uvicorn imports lazily in each worker (its loop and protocol
	// implementations) is imported once, in the template.
	for _, lazy := range []string{"uvicorn.protocols.http.auto", "uvicorn.loops.auto", "uvicorn.lifespan.on"} {
		if !slices.Contains(ready.ServerModules, lazy) {
			t.Errorf("ready.ServerModules = %v; want %s, which uvicorn loads lazily in each worker", ready.ServerModules, lazy)
		}
	}
	env := append(baseEnv(), "LISTEN_FDS=1", "BATON_MASTER_PID="+strconv.Itoa(os.Getpid()), "NOTIFY_SOCKET=/nonexistent")
	pids := tp.runWorkers(2, env)
	seen := map[int]bool{}
	for i := 0; i < 200 && len(seen) < 2; i++ {
		s := get(t, addr, "/")
		if s.ImportedBy != tp.cmd.Process.Pid || !pids[s.Pid] {
			t.Fatalf("served %+v; want the app imported by the template %d, served by a forked worker %v", s, tp.cmd.Process.Pid, pids)
		}
		seen[s.Pid] = true
	}
	if len(seen) < 2 {
		t.Errorf("only workers %v answered 200 requests; want both of %v", seen, pids)
	}
	for pid := range pids {
		unix.Kill(pid, unix.SIGTERM)
		if ws := tp.reap(pid); !ws.Exited() || ws.ExitStatus() != 0 {
			t.Errorf("uvicorn worker %d after SIGTERM: %v; want exit status 0", pid, ws)
		}
	}
}

// TestTemplateDaphneWorkersShareNoEventLoop: daphne's modules install
// Twisted's reactor, an epoll instance, when imported; imported in the
// template, its forked workers would all share that instance and fail to
// register their listener ("Listen failure: [Errno 17] File exists"). The
// template does not pre-import them, holds no epoll instance, and two
// forked daphne workers both serve.
func TestTemplateDaphneWorkersShareNoEventLoop(t *testing.T) {
	t.Parallel()
	requireFile(t, "/usr/bin/daphne", "daphne")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"app.py": asgiApp})
	listener, addr := tcpListener(t)
	tp := startTemplate(t, templateSpec{
		dir:      dir,
		command:  []string{"/usr/bin/daphne", "--fd", "3", "app:app"},
		preload:  []string{"app"},
		listener: listener,
	})
	ready := tp.expect(TypeReady)
	for _, mod := range ready.ServerModules {
		if strings.HasPrefix(mod, "daphne") || strings.HasPrefix(mod, "twisted") {
			t.Errorf("the template pre-imported %s (ServerModules %v)", mod, ready.ServerModules)
		}
	}
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", tp.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", tp.cmd.Process.Pid, e.Name())); strings.Contains(target, "eventpoll") {
			t.Errorf("the template holds an epoll instance (fd %s) its workers would share", e.Name())
		}
	}
	env := append(baseEnv(), "LISTEN_FDS=1", "BATON_MASTER_PID="+strconv.Itoa(os.Getpid()))
	pids := tp.runWorkers(2, env)
	seen := map[int]bool{}
	deadline := time.Now().Add(patience)
	for len(seen) < 2 && time.Now().Before(deadline) {
		for pid := range pids {
			if procState(t, pid) == "Z" {
				t.Fatalf("daphne worker %d exited; template stderr:\n%s", pid, tp.stderrText())
			}
		}
		if s, err := request(addr, "/"); err == nil && pids[s.Pid] {
			seen[s.Pid] = true
		} else {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if len(seen) < 2 {
		t.Errorf("daphne workers %v answered; want both of %v", seen, pids)
	}
	for pid := range pids {
		unix.Kill(pid, unix.SIGTERM)
		tp.reap(pid)
	}
}

// TestTemplateWatchdog: a worker with WATCHDOG_USEC pings WATCHDOG=1 from
// its event loop, every WATCHDOG_USEC/2, and not while a handler blocks
// the loop; with asyncio's loop, and with uvloop imported by the template
// before the worker (uvloop binds asyncio's hook when it is imported).
func TestTemplateWatchdog(t *testing.T) {
	t.Parallel()
	requireFile(t, "/usr/bin/uvicorn", "uvicorn")
	for _, tc := range []struct {
		loop, module string
		preload      []string
	}{
		{"asyncio", "asyncio.unix_events", []string{"app"}},
		{"uvloop", "uvloop", []string{"uvloop", "app"}},
	} {
		t.Run(tc.loop, func(t *testing.T) {
			t.Parallel()
			if tc.loop == "uvloop" {
				requireFile(t, "/usr/lib/python3/dist-packages/uvloop/__init__.py", "python3-uvloop")
			}
			dir := t.TempDir()
			writeFiles(t, dir, map[string]string{"app.py": asgiApp})
			notify := listenNotify(t, filepath.Join(dir, "notify"))
			listener, addr := tcpListener(t)
			tp := startTemplate(t, templateSpec{
				dir:      dir,
				command:  []string{"/usr/bin/uvicorn", "--fd", "3", "--loop", tc.loop, "--log-level", "warning", "app:app"},
				preload:  tc.preload,
				listener: listener,
			})
			tp.expect(TypeReady)
			env := append(baseEnv(), "LISTEN_FDS=1", "BATON_MASTER_PID="+strconv.Itoa(os.Getpid()),
				"NOTIFY_SOCKET="+filepath.Join(dir, "notify"), "WATCHDOG_USEC=400000")
			pending, pid := tp.fork(1, env)
			go io.Copy(io.Discard, pending.Stderr())
			t.Cleanup(func() { pending.Stderr().Close() })
			if err := pending.Go(); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				if m := notify.next(t); m != "WATCHDOG=1" {
					t.Fatalf("notify message %q before any request; want WATCHDOG=1", m)
				}
			}
			if s := get(t, addr, "/"); s.Loop != tc.module {
				t.Errorf("the worker's loop is from %s, want %s", s.Loop, tc.module)
			}
			blocked := make(chan error, 1)
			go func() {
				_, err := request(addr, "/block")
				blocked <- err
			}()
			for notify.next(t) != "BLOCK_START=1" {
			}
			// Datagrams from one thread arrive in order: anything between
			// these two was sent while the loop was blocked.
			if m := notify.next(t); m != "BLOCK_END=1" {
				t.Errorf("got %q while the handler blocked the loop for 2 s; want no ping (pings every 0.2 s)", m)
				for notify.next(t) != "BLOCK_END=1" {
				}
			}
			if err := <-blocked; err != nil {
				t.Error(err)
			}
			for i := 0; i < 2; i++ {
				if m := notify.next(t); m != "WATCHDOG=1" {
					t.Errorf("after the block: %q, want the pings to resume", m)
				}
			}
			unix.Kill(pid, unix.SIGTERM)
			tp.reap(pid)
		})
	}
}

// notifySocket is a test's NOTIFY_SOCKET.
type notifySocket struct {
	messages chan string
}

func listenNotify(t *testing.T, path string) *notifySocket {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	n := &notifySocket{messages: make(chan string, 1000)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				close(n.messages)
				return
			}
			n.messages <- strings.TrimSpace(string(buf[:k]))
		}
	}()
	return n
}

func (n *notifySocket) next(t *testing.T) string {
	t.Helper()
	select {
	case m, ok := <-n.messages:
		if !ok {
			t.Fatal("the notify socket closed")
		}
		return m
	case <-time.After(patience):
		t.Fatalf("no notify message in %v", patience)
	}
	return ""
}

// fdTable is what each fd of pid is, for a failure message.
func fdTable(pid int) string {
	entries, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	var out []string
	for _, e := range entries {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		out = append(out, e.Name()+"="+target)
	}
	return strings.Join(out, " ")
}
