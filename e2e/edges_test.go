package e2e

// The rough edges a new user hit with real servers (issue 17): what the
// crash report keeps of a worker's stderr, dev mode's watch against
// baton's own output, the status state during a crash loop, and a worker
// that listens on a socket of its own instead of baton's.

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
)

// rubyCrash raises in the innermost of 39 nested calls: Ruby prints the
// message first, on line 1, and 39 lines of backtrace after it.
const rubyCrash = `def load_app(depth)
  raise "the database at db.internal:5432 refused the connection" if depth.zero?
  load_app(depth - 1)
end
load_app(38)
`

// A reload into a Ruby app that crashes at boot: `baton reload` shows
// the error's message (line 1 of 40), then how many lines were left out,
// then the last 20.
func TestReloadFailureShowsTheFirstAndLastStderrLinesOfARubyCrash(t *testing.T) {
	t.Parallel()
	ruby := requireTool(t, "ruby")
	d := newDeployment(t, workerConfig(1, ""))
	b := startBaton(t, "run", "-c", d.path)
	b.waitReady(t, 1)
	app := writeFile(t, t.TempDir(), "app.rb", rubyCrash, 0o644)
	d.write(fmt.Sprintf("workers = 1\nbind = [\"127.0.0.1:0\"]\ncommand = [%s, %s]\n", strconv.Quote(ruby), strconv.Quote(app)))

	res := b.cli(t, "reload")
	if res.code != 1 {
		t.Fatalf("baton reload exited %d, want 1 (a failed reload)", res.code)
	}
	var shown []string
	for _, l := range strings.Split(res.stderr, "\n") {
		if s, ok := strings.CutPrefix(l, "  | "); ok {
			shown = append(shown, s)
		}
	}
	if len(shown) != 31 {
		t.Fatalf("baton reload showed %d stderr lines, want 31 (10, a marker, 20):\n%s", len(shown), res.stderr)
	}
	if !strings.Contains(shown[0], "the database at db.internal:5432 refused the connection (RuntimeError)") {
		t.Errorf("the first line shown is %q, want Ruby's error message", shown[0])
	}
	if shown[10] != "... 10 lines omitted ..." {
		t.Errorf("line 11 shown is %q, want the marker of 10 lines left out", shown[10])
	}
	if !strings.Contains(shown[30], "in `<main>'") {
		t.Errorf("the last line shown is %q, want the backtrace's last frame (<main>)", shown[30])
	}
	if st := b.mustStatus(t); st.Generation != 1 || len(inState(st, "ready")) != 1 {
		t.Errorf("after the failed reload: generation %d, %d ready, want generation 1 serving", st.Generation, len(inState(st, "ready")))
	}
}

// ready = "notify" with gunicorn, whose arbiter sends READY=1 before its
// workers import the app: baton check and the start log warn, saying why
// and what to use instead; neither refuses it.
func TestReadyNotifyWithGunicornIsWarnedAbout(t *testing.T) {
	t.Parallel()
	gunicorn := requireTool(t, "gunicorn")
	app := t.TempDir()
	writeFile(t, app, "app.py", "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n", 0o644)
	args := []string{"--ready", "notify", "--chdir", app, "--", gunicorn, "app:app"} // LISTEN_FDS gives it fd 3

	check := runToExit(t, batonSpec{args: append([]string{"check"}, args...)})
	if check.code != 0 {
		t.Fatalf("baton check exited %d, want 0 (a warning is no error):\n%s", check.code, check.stderr)
	}
	for _, want := range []string{"baton: warning: --ready:", "READY=1 before its workers have imported the app", `use ready = "auto"`} {
		if !strings.Contains(check.stderr, want) {
			t.Errorf("baton check's stderr lacks %q:\n%s", want, check.stderr)
		}
	}

	b := startBaton(t, append([]string{"run"}, args...)...)
	b.waitReady(t, 1)
	var warning record
	for _, l := range strings.Split(b.Stderr(), "\n") {
		if r, ok := parseRecord(l); ok && strings.HasPrefix(r.msg(), `configuration: --ready: "notify" with gunicorn: `) {
			warning = r
		}
	}
	if warning.fields == nil || warning.str("level") != "WARN" || !strings.Contains(warning.msg(), `use ready = "auto"`) {
		t.Errorf("no WARN record about ready = notify with gunicorn in the start log (found %q):\n%s", warning, lastLines(b.Stderr(), 30))
	}
	b.signal(t, syscall.SIGTERM)
	if code := b.waitExit(t, exitTimeout); code != 0 {
		t.Errorf("exit code %d after TERM", code)
	}
	b.assertNothingLeft(t)
}

// `baton run --watch . > out 2>&1`: every log line baton and its workers
// write lands in the watched directory. Those writes reload nothing (a new
// user saw 16 reloads in 8 s with no edit); an edit reloads exactly once.
// Also with log_file in the watched directory, and the workers' output in
// another file there.
func TestWatchIgnoresBatonsOwnOutputInTheWatchedDirectory(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		output  string // stdout and stderr, in the watched directory
		logFile string // log_file, in the watched directory, if set
	}{
		{name: "stdout and stderr to a file", output: "baton.out"},
		{name: "log_file and output", output: "workers.out", logFile: "baton-log.txt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			app := writeFile(t, dir, "app.py", "VERSION = 1\n", 0o644)
			args := []string{"run", "-w", "2", "--watch", dir}
			if tc.logFile != "" {
				args = append(args, "--log-file", filepath.Join(dir, tc.logFile))
			}
			// The workers write to stderr as they boot: each reload
			// writes to the output file through them too.
			args = append(args, "--", "/bin/sh", "-c", `echo "booting generation $BATON_GENERATION" >&2; exec "$0"`, testworkerBin)
			b := launch(t, batonSpec{args: args, output: filepath.Join(dir, tc.output)})
			b.waitStarted(t)
			b.waitReady(t, 2)

			// Quiet for longer than a new user needed to see 16 reloads' worth.
			time.Sleep(5 * time.Second)
			st := b.mustStatus(t)
			if st.Generation != 1 || st.Reloading {
				t.Fatalf("generation %d (reloading %v) after 5 s without an edit: %d reloads caused by baton's own output",
					st.Generation, st.Reloading, st.Generation-1)
			}
			assertFileGrew(t, filepath.Join(dir, tc.output), "booting generation 1")
			if tc.logFile != "" {
				assertFileGrew(t, filepath.Join(dir, tc.logFile), `"msg":"worker ready"`)
			}

			if err := os.WriteFile(app, []byte("VERSION = 2\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if r := b.waitReloadEnd(t, 2); !r.OK {
				t.Fatalf("reload after an edit: %s", describeReload(&r))
			}
			time.Sleep(3 * time.Second)
			if st := b.mustStatus(t); st.Generation != 2 || st.Reloading {
				t.Errorf("generation %d (reloading %v) 3 s after one edit's reload: want exactly one reload", st.Generation, st.Reloading)
			}
			assertFileGrew(t, filepath.Join(dir, tc.output), "booting generation 2")
			b.signal(t, syscall.SIGTERM)
			if code := b.waitExit(t, exitTimeout); code != 0 {
				t.Errorf("exit code %d after TERM", code)
			}
			b.assertNothingLeft(t)
		})
	}
}

// assertFileGrew checks that baton's output did land in the watched
// directory: else the test would pass without testing anything.
func assertFileGrew(t *testing.T, path, want string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(data), want) {
		t.Fatalf("%s does not hold %q (%v): the test's premise, output in the watched directory, fails", path, want, err)
	}
}

// puma with a -b that is not baton's bind closes the socket it inherited
// and binds its own: one worker serves on that port, where nobody sends
// requests, and the other crash-loops with EADDRINUSE. baton shows the
// socket in status, logs it, and the crash report says who holds the
// address and what to do.
func TestPumaWithAMismatchedBindIsReportedAsAForeignListener(t *testing.T) {
	t.Parallel()
	puma := requireTool(t, "puma")
	app := t.TempDir()
	writeFile(t, app, "config.ru", `run lambda { |env| [200, {"Content-Type" => "text/plain"}, [Process.pid.to_s]] }`+"\n", 0o644)
	own := freePort(t)
	b := startBaton(t, "run", "-w", "2", "--ready", "notify", "--boot-timeout", "30s", "--chdir", app,
		"--", puma, "-b", "tcp://"+own, "config.ru")

	st := b.waitStatus(t, "a worker listening on "+own+" and the other slot crash-looping with a hint", 60*time.Second, func(st control.Status) bool {
		held := 0
		for _, w := range st.WorkerList {
			if len(w.ForeignListeners) == 1 && w.ForeignListeners[0] == own {
				held++
			}
		}
		return held == 1 && len(st.Degraded) == 1 && strings.Contains(st.Degraded[0], "listens on "+own+" itself")
	})
	if st.State != control.StateDegraded || st.ReadyWorkers != 1 {
		t.Errorf("state %q with %d ready, want degraded with 1 (one serves on its own port, one crash-loops)", st.State, st.ReadyWorkers)
	}
	for _, want := range []string{"crashes in a row: the worker in slot", "baton's listener is fd 3 (bind0, " + b.Addr() + ")", "puma: -b must match the bind"} {
		if !strings.Contains(st.Degraded[0], want) {
			t.Errorf("status' degraded entry %q lacks %q", st.Degraded[0], want)
		}
	}
	if recs := b.logs("worker listens on sockets baton did not pass", func(r record) bool { return strings.Contains(r.line, own) }); len(recs) == 0 {
		t.Errorf("no log record of the worker listening on %s", own)
	}
	hinted := b.logs("last stderr lines of the worker that exited", func(r record) bool {
		return strings.Contains(r.str("hint"), "listens on "+own+" itself") && strings.Contains(r.line, "EADDRINUSE")
	})
	if len(hinted) == 0 {
		t.Errorf("no crash report with EADDRINUSE says who listens on %s", own)
	}
	out := b.cli(t, "status")
	for _, want := range []string{"state    degraded, 1 ready", "foreign listeners: " + own} {
		if !strings.Contains(out.stdout, want) {
			t.Errorf("baton status lacks %q:\n%s", want, out.stdout)
		}
	}
	b.signal(t, syscall.SIGTERM)
	if code := b.waitExit(t, 40*time.Second); code != 0 {
		t.Errorf("exit code %d after TERM, want 0", code)
	}
	b.assertNothingLeft(t)
}

// freePort is a loopback address no socket listens on now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
