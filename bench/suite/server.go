package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/bench/internal/httpload"
)

// logLine is one line a server wrote (stdout and stderr share one pipe, so
// their order is kept), with the time the benchmark read it.
type logLine struct {
	At   time.Time
	Text string
}

// batonEvent is one of baton's JSON log records.
type batonEvent struct {
	At     time.Time
	Msg    string
	Level  string
	Fields map[string]any
}

func (e batonEvent) str(key string) string {
	switch v := e.Fields[key].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case nil:
		return ""
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// server is one running server under test: Gunicorn's master, baton's,
// or bare workers under an idle bash, started in a process group of its
// own. After a binary upgrade the master is another process: master()
// follows it.
type server struct {
	spec      serverSpec
	port      int
	cmd       *exec.Cmd
	logPath   string
	appDir    string
	startedAt time.Time

	masterPID atomic.Int64  // the current master: cmd's process until an upgrade
	exited    chan struct{} // closed when cmd's process (the first master) has exited
	exitAt    time.Time
	exitText  string
	readerEnd chan struct{}

	mu     sync.Mutex
	lines  []logLine
	events []batonEvent
	notify chan struct{} // pinged on each new line
}

// serverEnv is the benchmark's environment without anything that would
// make a server think it was socket-activated or supervised.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "PYTHONDONTWRITEBYTECODE":
			continue
		}
		env = append(env, kv)
	}
	// Deploys replace app.py in place; keep no bytecode cache beside it.
	return append(env, "PYTHONDONTWRITEBYTECODE=1")
}

// serverSpec is what a run starts: which server, how many workers, and
// which app.
type serverSpec struct {
	kind    string // one of serverKinds
	workers int
	demo    bool    // baton with its bundled Go demo worker instead of the Python app (the soak)
	metrics int     // baton: serve /metrics on this port (0: off)
	app     appSpec // the ASGI app; the zero value is bench/app's app.py
}

// The servers the suite knows. The -preload kinds are the same masters
// with the app imported once and the workers forked from that process:
// Gunicorn's --preload (its master imports the app) and baton's --preload
// (a template process per generation imports it).
const (
	kindBare            = "bare"
	kindGunicorn        = "gunicorn"
	kindGunicornPreload = "gunicorn-preload"
	kindBaton           = "baton"
	kindBatonPreload    = "baton-preload"
)

var serverKinds = []string{kindBare, kindGunicorn, kindGunicornPreload, kindBaton, kindBatonPreload}

// family is the master a kind runs: "baton", "gunicorn" or "bare".
func family(kind string) string { return strings.TrimSuffix(kind, "-preload") }

// preloads reports whether kind imports the app once and forks workers.
func preloads(kind string) bool { return strings.HasSuffix(kind, "-preload") }

// appSpec is the ASGI app a server runs, as each server names it.
type appSpec struct {
	target string // module:attribute, for uvicorn and Gunicorn
	module string // what --preload imports
	// pythonM: baton's workers run `python3 -m uvicorn` rather than the
	// /usr/bin/uvicorn script.
	pythonM bool
	// getPath: the server is up once GET of this path answers 200 ("":
	// once a POST to / does, as the load sends).
	getPath string
}

func (a appSpec) orDefault() appSpec {
	if a.target == "" {
		return appSpec{target: "app:app", module: "app"}
	}
	return a
}

// serverArgv is the exact command line of each server (the same app, the
// same number of workers, the same graceful timeout). Both masters write
// a pidfile in the app directory: the upgrade finds the new master there.
func serverArgv(cfg *config, spec serverSpec, appDir string, port int) []string {
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	w := strconv.Itoa(spec.workers)
	app := spec.app.orDefault()
	switch family(spec.kind) {
	case kindGunicorn:
		argv := []string{cfg.gunicorn, "-k", "uvicorn.workers.UvicornWorker", "-w", w, "-b", addr,
			"--graceful-timeout", "30", "-p", filepath.Join(appDir, "gunicorn.pid")}
		if preloads(spec.kind) {
			argv = append(argv, "--preload")
		}
		return append(argv, app.target)
	case kindBaton:
		argv := []string{cfg.baton, "run", "-b", addr, "-w", w, "--log-format", "json",
			"--graceful-timeout", "30s", "--chdir", appDir, "--pid", filepath.Join(appDir, "baton.pid")}
		if spec.metrics != 0 {
			argv = append(argv, "--metrics-bind", fmt.Sprintf("127.0.0.1:%d", spec.metrics))
		}
		if preloads(spec.kind) {
			argv = append(argv, "--preload", app.module)
		}
		argv = append(argv, cfg.batonFlags...)
		if spec.demo {
			return append(argv, "--", cfg.baton, "_demo-worker")
		}
		argv = append(argv, "--")
		if app.pythonM {
			argv = append(argv, cfg.python, "-m", "uvicorn")
		} else {
			argv = append(argv, cfg.uvicorn)
		}
		// uvicorn's access log is off, as it is by default under Gunicorn, so
		// both servers do the same work per request.
		return append(argv, "--fd", "3", "--no-access-log", app.target)
	case kindBare:
		// The same uvicorn workers with no master: bash starts them on the
		// socket the benchmark bound (fd 3) and then only waits, as the
		// baseline for what a master costs.
		script := `trap 'kill -TERM $pids 2>/dev/null; wait' TERM INT; pids=; ` +
			`for i in $(seq ` + w + `); do "$0" --fd 3 --no-access-log ` + app.target + ` & pids="$pids $!"; done; wait`
		return []string{"/bin/bash", "-c", script, cfg.uvicorn}
	}
	panic("unknown server " + spec.kind)
}

// running are the servers under test now, for the interrupt handler.
var running struct {
	sync.Mutex
	all []*server
}

// stopOnInterrupt makes INT and TERM stop the server under test (and reap
// all it started) before the benchmark exits: servers run in process
// groups of their own, so a ^C on the terminal does not reach them.
func stopOnInterrupt() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-ch
		fmt.Fprintf(os.Stderr, "suite: %s: stopping the server under test\n", sig)
		running.Lock()
		for _, s := range running.all {
			if s.alive() {
				s.stop(5 * time.Second)
			}
		}
		os.Exit(130)
	}()
}

func startServer(cfg *config, spec serverSpec, appDir, logPath string) (*server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	argv := serverArgv(cfg, spec, appDir, port)
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	r, w, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = appDir
	cmd.Env = serverEnv()
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if spec.kind == kindBare {
		sock, err := bareListener(port)
		if err != nil {
			r.Close()
			w.Close()
			logFile.Close()
			return nil, err
		}
		defer sock.Close()
		cmd.ExtraFiles = []*os.File{sock}
	}
	fmt.Fprintf(logFile, "# %s\n", strings.Join(argv, " "))
	startedAt := time.Now()
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", spec.kind, err)
	}
	w.Close()
	s := &server{spec: spec, port: port, cmd: cmd, logPath: logPath, appDir: appDir, startedAt: startedAt,
		exited: make(chan struct{}), readerEnd: make(chan struct{}), notify: make(chan struct{}, 1)}
	s.masterPID.Store(int64(cmd.Process.Pid))
	running.Lock()
	running.all = append(running.all, s)
	running.Unlock()
	go s.read(r, logFile)
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.exitAt = time.Now()
		s.exitText = cmd.ProcessState.String()
		if err != nil && cmd.ProcessState == nil {
			s.exitText = err.Error()
		}
		s.mu.Unlock()
		close(s.exited)
	}()
	return s, nil
}

// bareListener binds the bare workers' socket as baton and Gunicorn bind
// theirs: TCP_NODELAY on (accepted sockets inherit it) and a 2048 backlog.
func bareListener(port int) (*os.File, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		})
		return cmpErr(err, serr)
	}}
	l, err := lc.Listen(context.Background(), "tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return nil, err
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		return nil, err
	}
	// Go listens with the kernel's maximum backlog; set Gunicorn's and
	// baton's default instead, so the three differ only in their master.
	if err := unix.Listen(int(f.Fd()), 2048); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *server) read(r io.ReadCloser, logFile *os.File) {
	defer close(s.readerEnd)
	defer r.Close()
	defer logFile.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		now := time.Now()
		text := sc.Text()
		fmt.Fprintf(logFile, "%s %s\n", now.Format("15:04:05.000"), text)
		s.mu.Lock()
		s.lines = append(s.lines, logLine{At: now, Text: text})
		if ev, ok := parseBatonLine(text); ok {
			ev.At = now
			s.events = append(s.events, ev)
		}
		s.mu.Unlock()
		select {
		case s.notify <- struct{}{}:
		default:
		}
	}
}

// parseBatonLine finds one of baton's JSON records in a line. Workers'
// stderr goes through baton's too, so a record may follow a worker's
// partial line: look for the record's start anywhere in the line.
func parseBatonLine(text string) (batonEvent, bool) {
	i := strings.Index(text, `{"time":`)
	if i < 0 {
		return batonEvent{}, false
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(text[i:]), &m); err != nil {
		return batonEvent{}, false
	}
	ev := batonEvent{Fields: m}
	ev.Msg, _ = m["msg"].(string)
	ev.Level, _ = m["level"].(string)
	return ev, ev.Msg != ""
}

func (s *server) snapshot() ([]logLine, []batonEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]logLine(nil), s.lines...), append([]batonEvent(nil), s.events...)
}

func (s *server) countLines(substr string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, l := range s.lines {
		if strings.Contains(l.Text, substr) {
			n++
		}
	}
	return n
}

// master is the pid of the current master.
func (s *server) master() int { return int(s.masterPID.Load()) }

// alive reports whether the current master runs.
func (s *server) alive() bool {
	pid := s.master()
	if pid == s.cmd.Process.Pid {
		select {
		case <-s.exited:
			return false
		default:
			return true
		}
	}
	return !processGone(pid)
}

// processGone reports whether pid has exited (gone, or a zombie: an
// adopted master is this process's child once its parent has exited).
func processGone(pid int) bool {
	p, ok := readStat(pid)
	return !ok || p.state == "Z"
}

func (s *server) url() string { return fmt.Sprintf("http://127.0.0.1:%d/", s.port) }

// probe reports whether the server answers its app's probe with 200 now.
func (s *server) probe() bool {
	if s.spec.app.getPath == "" {
		return probe(s.url())
	}
	_, err := getWorkerPID(httpload.NewClient(false, 2*time.Second), s.url()+s.spec.app.getPath)
	return err == nil
}

// readyMarker is the log line each server writes once per worker that
// is up: baton's "worker ready" records, uvicorn's startup line.
func (s *server) readyMarker() string {
	if family(s.spec.kind) == kindBaton {
		return `"msg":"worker ready"`
	}
	return "Application startup complete"
}

// waitReady polls until the server answers 200, then until every worker
// of the first generation has said it is up. It returns how long after
// the start the first 200 came (polled every 10 ms) and when all workers
// were up.
func (s *server) waitReady(limit time.Duration) (first200, allUp time.Duration, err error) {
	deadline := time.Now().Add(limit)
	for {
		if !s.alive() {
			return 0, 0, fmt.Errorf("%s exited while starting (%s); see %s", s.spec.kind, s.exitText, s.logPath)
		}
		if time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("%s did not answer within %s; see %s", s.spec.kind, limit, s.logPath)
		}
		if s.probe() {
			first200 = time.Since(s.startedAt)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.waitLines(s.readyMarker(), s.spec.workers, deadline); err != nil {
		return 0, 0, err
	}
	return first200, time.Since(s.startedAt), nil
}

// waitLines waits until the log holds n lines containing marker, while
// the master lives.
func (s *server) waitLines(marker string, n int, deadline time.Time) error {
	for s.countLines(marker) < n {
		if !s.alive() {
			return fmt.Errorf("%s master exited (%s); see %s", s.spec.kind, s.exitText, s.logPath)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d of %d workers up by the deadline; see %s", s.spec.kind, s.countLines(marker), n, s.logPath)
		}
		select {
		case <-s.notify:
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// signal sends sig to the current master and returns when it was sent.
func (s *server) signal(sig syscall.Signal) (time.Time, error) {
	if !s.alive() {
		return time.Time{}, fmt.Errorf("%s master already exited", s.spec.kind)
	}
	at := time.Now()
	return at, syscall.Kill(s.master(), sig)
}

// hup sends SIGHUP to the master and returns when it was sent.
func (s *server) hup() (time.Time, error) { return s.signal(syscall.SIGHUP) }

// stop sends TERM to the master, waits for it (and kills its group after
// grace), then kills and reaps whatever it left behind: members of its
// process group, and orphans re-parented to this process (a child
// subreaper). It returns what was left behind before that last step.
func (s *server) stop(grace time.Duration) (termed bool, leftovers []string) {
	pid := s.master()
	if s.alive() {
		termed = true
		_ = syscall.Kill(pid, syscall.SIGTERM)
		deadline := time.Now().Add(grace)
		for s.alive() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if s.alive() {
			leftovers = append(leftovers, fmt.Sprintf("master pid %d still running %s after TERM", pid, grace))
			_ = syscall.Kill(pid, syscall.SIGKILL)
			_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		}
	}
	<-s.exited // the first master, when the current one is another
	// Give orphans a moment to be re-parented before looking.
	time.Sleep(200 * time.Millisecond)
	leftovers = append(leftovers, sweep(s.cmd.Process.Pid)...)
	select {
	case <-s.readerEnd:
	case <-time.After(2 * time.Second):
	}
	return termed, leftovers
}

// becomeSubreaper makes orphaned descendants (say, a worker whose master
// died) children of this process, so that sweep can find and reap them.
func becomeSubreaper() error {
	return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
}

// sweep kills and reaps every process in process group pgid and every
// child of this process (the servers have been waited for, so any child is
// an orphan some server left), and describes each one it found alive.
func sweep(pgid int) []string {
	var found []string
	for round := 0; round < 20; round++ {
		procs := strays(pgid)
		if len(procs) == 0 {
			return found
		}
		for _, p := range procs {
			if p.state != "Z" {
				found = append(found, fmt.Sprintf("pid %d (%s, pgid %d)", p.pid, p.comm, p.pgid))
				_ = syscall.Kill(p.pid, syscall.SIGKILL)
			}
		}
		time.Sleep(100 * time.Millisecond)
		for _, p := range procs {
			if p.ppid == os.Getpid() {
				var ws unix.WaitStatus
				_, _ = unix.Wait4(p.pid, &ws, unix.WNOHANG, nil)
			}
		}
	}
	return append(found, "some processes could not be killed")
}

type procInfo struct {
	pid, ppid, pgid int
	comm, state     string
}

// strays lists processes in group pgid or whose parent is this process.
func strays(pgid int) []procInfo {
	self := os.Getpid()
	var out []procInfo
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		p, ok := readStat(pid)
		if !ok {
			continue
		}
		if p.pgid == pgid || p.ppid == self {
			out = append(out, p)
		}
	}
	return out
}

func readStat(pid int) (procInfo, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procInfo{}, false
	}
	text := string(b)
	open, closeIdx := strings.IndexByte(text, '('), strings.LastIndexByte(text, ')')
	if open < 0 || closeIdx < open {
		return procInfo{}, false
	}
	fields := strings.Fields(text[closeIdx+1:])
	if len(fields) < 3 {
		return procInfo{}, false
	}
	ppid, _ := strconv.Atoi(fields[1])
	pgid, _ := strconv.Atoi(fields[2])
	return procInfo{pid: pid, ppid: ppid, pgid: pgid, comm: text[open+1 : closeIdx], state: fields[0]}, true
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
