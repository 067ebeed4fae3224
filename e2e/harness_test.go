// Package e2e tests baton end to end: the real binary, real worker
// processes, real sockets, real signals and real load on 127.0.0.1.
//
// TestMain builds ./cmd/baton (with -race when the tests are built with
// -race; or takes the binary named by $BATON_E2E_BATON) and the test server
// in testdata/testworker once per run. Every test
// starts its own baton on port 0 in its own temp dir; the cleanup of every
// baton kills what is left of it and fails the test when a process it
// started survives.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/baton-pm/baton/internal/control"
	"golang.org/x/sys/unix"
)

// Paths of the binaries TestMain builds.
var (
	batonBin      string
	testworkerBin string
)

// Timeouts are generous so that a slow CI machine does not flake; the
// conditions they bound are normally met in milliseconds.
const (
	startTimeout = 20 * time.Second // baton up, workers started
	waitTimeout  = 15 * time.Second // one awaited event
	exitTimeout  = 15 * time.Second // baton exits after a signal or bad input
	pollInterval = 10 * time.Millisecond
)

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	// Every baton a test starts has a control socket of its own (see
	// launch); none may use the one shared by every baton on the machine.
	checkShared, err := watchSharedControlSocket()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "baton-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// The name matters: baton recognises a live master in a pidfile by a
	// binary called baton.
	batonBin = filepath.Join(dir, "baton")
	testworkerBin = filepath.Join(dir, "testworker")
	var wg sync.WaitGroup
	errs := make([]error, 2)
	if prebuilt := os.Getenv("BATON_E2E_BATON"); prebuilt != "" {
		// A baton binary built elsewhere (say, with other flags); it is
		// copied so that its name is baton.
		errs[0] = copyFile(prebuilt, batonBin)
	} else {
		wg.Go(func() { errs[0] = goBuild(root, batonBin, "./cmd/baton", raceEnabled) })
	}
	wg.Go(func() { errs[1] = goBuild(root, testworkerBin, "./e2e/testdata/testworker", false) })
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building the binaries under test failed:", err)
		return 1
	}
	before := batonCgroups()
	code := m.Run()
	removeEmptyCgroups(before)
	if err := checkShared(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: FAIL:", err)
		return 1
	}
	return code
}

// sharedControlSocket is where a baton with no control socket configured,
// no pidfile and no $XDG_RUNTIME_DIR puts it (control.DefaultPath): for
// root /run/baton/baton.sock, shared by every baton on the machine, so two
// tests, or a test and a real baton, would collide there.
func sharedControlSocket() string {
	return privateControlSocket(os.Getuid(), "")
}

// privateControlSocket is control.DefaultPath's last resort for uid, with
// tmpdir as $TMPDIR ("": the test's own): /run/baton/baton.sock for root,
// $TMPDIR/baton-UID/baton.sock for anyone else.
func privateControlSocket(uid int, tmpdir string) string {
	if uid == 0 {
		return "/run/baton/baton.sock"
	}
	if tmpdir == "" {
		tmpdir = os.TempDir()
	}
	return filepath.Join(tmpdir, fmt.Sprintf("baton-%d", uid), "baton.sock")
}

// watchSharedControlSocket watches the shared control socket's directory
// for the whole run (cleanEnv removes $XDG_RUNTIME_DIR, so a baton or
// client that is given no path ends up there). Baton removes its socket
// when it exits, so looking at the end of the run would not do. Whenever
// the socket is created, the watcher looks up which process listens on it:
// check reports one that descends from this test binary. Another process
// (a real baton, another checkout's test run) may create it meanwhile;
// that is only mentioned.
func watchSharedControlSocket() (check func() error, err error) {
	path := sharedControlSocket()
	dir, name := filepath.Dir(path), filepath.Base(path)
	// Baton creates its private directory when it is missing; create it
	// as baton would (mode 0700), so that there is something to watch.
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return nil, fmt.Errorf("creating %s to watch it: %w", dir, err)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	var (
		mu           sync.Mutex
		ours, others []string
		overflow     bool
	)
	// The reader blocks in read(2) until the test binary exits.
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if err != nil {
				if err == unix.EINTR {
					continue
				}
				return
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				evName := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
				off += unix.SizeofInotifyEvent + int(ev.Len)
				if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
					mu.Lock()
					overflow = true
					mu.Unlock()
				}
				if evName != name {
					continue
				}
				mine, foreign := socketOwners(path)
				mu.Lock()
				ours = append(ours, mine...)
				others = append(others, foreign...)
				mu.Unlock()
			}
		}
	}()
	return func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(others) > 0 {
			fmt.Fprintf(os.Stderr, "e2e: note: %s was created during the run by processes outside the tests: %s\n",
				path, strings.Join(others, "; "))
		}
		if overflow {
			fmt.Fprintf(os.Stderr, "e2e: note: events of %s were lost; a test may have used %s unnoticed\n", dir, path)
		}
		if len(ours) > 0 {
			return fmt.Errorf("a baton started by the tests listened on the machine's shared control socket %s: %s; "+
				"give every baton --control or --pid in a temp dir (launch does unless told otherwise)", path, strings.Join(ours, "; "))
		}
		return nil
	}, nil
}

// socketOwners describes the processes listening on the unix socket at
// path: those descending from this test binary, and the others.
func socketOwners(path string) (ours, others []string) {
	data, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		return nil, nil
	}
	inodes := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 8 && f[7] == path {
			inodes["socket:["+f[6]+"]"] = true
		}
	}
	if len(inodes) == 0 {
		return nil, []string{"gone before it could be looked up"}
	}
	procs := allProcs()
	for pid := range procs {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); inodes[link] {
				desc := fmt.Sprintf("pid %d: %s", pid, cmdline(pid))
				if descendsFrom(procs, pid, os.Getpid()) {
					ours = append(ours, desc)
				} else {
					others = append(others, desc)
				}
				break
			}
		}
	}
	return ours, others
}

// descendsFrom tells whether pid has ancestor among its parents.
func descendsFrom(procs map[int]procStat, pid, ancestor int) bool {
	for range 64 {
		p, ok := procs[pid]
		if !ok || p.ppid <= 1 {
			return false
		}
		if p.ppid == ancestor {
			return true
		}
		pid = p.ppid
	}
	return false
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o755)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the baton module")
	}
	return filepath.Dir(gomod), nil
}

func goBuild(root, out, pkg string, race bool) error {
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	args = append(args, pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, output)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Log records

// record is one JSON log line: slog's time, level, msg and the attributes.
type record struct {
	fields map[string]any
	line   string
}

func (r record) msg() string { return r.str("msg") }

// str returns a field as text, whatever its JSON type.
func (r record) str(key string) string {
	switch v := r.fields[key].(type) {
	case nil:
		return ""
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	default:
		return fmt.Sprint(v)
	}
}

// int returns a numeric field (or a numeric string), -1 when it is not one.
func (r record) int(key string) int {
	n, err := strconv.Atoi(r.str(key))
	if err != nil {
		return -1
	}
	return n
}

// time is the record's time stamp.
func (r record) time(t testing.TB) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, r.str("time"))
	if err != nil {
		t.Fatalf("record %s: bad time: %v", r, err)
	}
	return ts
}

func (r record) String() string { return r.line }

// parseRecord parses a JSON log line; ok is false for any other line (a
// worker's own output, a race report, text logs).
func parseRecord(line string) (record, bool) {
	if !strings.HasPrefix(line, "{") {
		return record{}, false
	}
	var fields map[string]any
	if err := json.Unmarshal([]byte(line), &fields); err != nil {
		return record{}, false
	}
	if _, ok := fields["msg"]; !ok {
		return record{}, false
	}
	return record{fields: fields, line: line}, true
}

// lineLog collects the lines of one output stream and lets tests wait for
// records in it.
type lineLog struct {
	mu      sync.Mutex
	lines   []string
	records []record
	changed chan struct{} // closed and replaced whenever a line arrives
}

func newLineLog() *lineLog { return &lineLog{changed: make(chan struct{})} }

func (l *lineLog) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	if r, ok := parseRecord(line); ok {
		l.records = append(l.records, r)
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *lineLog) text() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// find returns every record with msg for which match (nil: any) is true.
func (l *lineLog) find(msg string, match func(record) bool) []record {
	found, _ := l.findAndWatch(msg, match)
	return found
}

func (l *lineLog) findAndWatch(msg string, match func(record) bool) ([]record, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var found []record
	for _, r := range l.records {
		if r.msg() == msg && (match == nil || match(r)) {
			found = append(found, r)
		}
	}
	return found, l.changed
}

// readLines copies r into l line by line until EOF, calling onRecord for
// each record before it becomes visible to waiters.
func readLines(r io.Reader, l *lineLog, onRecord func(record)) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		line = strings.TrimRight(line, "\r\n")
		if line != "" || err == nil {
			if rec, ok := parseRecord(line); ok && onRecord != nil {
				onRecord(rec)
			}
			l.add(line)
		}
		if err != nil {
			return
		}
	}
}

// ---------------------------------------------------------------------------
// Baton under test

// batonSpec says how to start baton.
type batonSpec struct {
	args       []string   // the subcommand and its arguments
	noBind     bool       // do not add -b 127.0.0.1:0 (the test binds itself)
	textLogs   bool       // do not add --log-format json
	extraFiles []*os.File // become fds 3, 4, ... of baton
	env        []string   // added to baton's environment
	bin        string     // the baton binary; default: the one TestMain built
	// cred runs baton as another user (nil: as the test); bin must then
	// be a copy that user can execute (executableByAll). The test's temp
	// dir, baton's working directory, is made reachable by that user.
	cred *syscall.Credential
	// output, if set, is a file baton's stdout and stderr are redirected
	// to (appended), as a shell's "> FILE 2>&1" does, instead of pipes
	// the harness reads; the harness reads the file when the test ends.
	output string
	// defaultControl: do not give baton a control socket of its own; the
	// test checks where baton puts it by itself, and points the pidfile or
	// $XDG_RUNTIME_DIR (in env) into a temp dir for that.
	defaultControl bool
}

// Baton is one running (or exited) baton process.
type Baton struct {
	t   testing.TB
	Pid int
	Dir string // the test's temp dir, baton's working directory
	// Control is baton's control socket, which the status and client
	// helpers use: its own in Dir unless the test chose one.
	Control string

	cmd    *exec.Cmd
	stderr *lineLog
	stdout *lineLog
	done   chan struct{} // closed when the process has exited
	state  *os.ProcessState

	readers sync.WaitGroup
	pipes   []*os.File // read ends of stdout and stderr
	output  string     // the file stdout and stderr go to instead, if any

	// Listeners from the "listening" records, in order: name -> addr.
	listenerNames []string
	listenerAddrs map[string]string

	procs tracker
}

// startBaton starts baton with args (the subcommand first), adding
// --log-format json and -b 127.0.0.1:0 unless args already bind, and waits
// until the master has started.
func startBaton(t testing.TB, args ...string) *Baton {
	t.Helper()
	b := launch(t, batonSpec{args: args})
	b.waitStarted(t)
	return b
}

// launch starts baton as spec says and returns at once.
func launch(t testing.TB, spec batonSpec) *Baton {
	t.Helper()
	b := &Baton{
		t:             t,
		Dir:           t.TempDir(),
		stderr:        newLineLog(),
		stdout:        newLineLog(),
		done:          make(chan struct{}),
		listenerAddrs: map[string]string{},
	}
	b.procs.init()
	bin := batonBin
	if spec.bin != "" {
		bin = spec.bin
	}
	args, ctl, err := withTestFlags(spec, b.Dir)
	if err != nil {
		t.Fatal(err)
	}
	b.Control = ctl
	cmd := exec.Command(bin, args...)
	cmd.Dir = b.Dir
	cmd.Env = append(cleanEnv(), spec.env...)
	cmd.ExtraFiles = spec.extraFiles
	// Its own process group, so signals meant for baton never reach the
	// test binary; and it dies with the test binary (a test timeout).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if spec.cred != nil {
		cmd.SysProcAttr.Credential = spec.cred
		for _, d := range []string{filepath.Dir(b.Dir), b.Dir} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	if spec.output != "" {
		b.startWithOutputFile(t, cmd, spec.output)
	} else {
		b.startWithPipes(t, cmd)
	}
	go func() {
		_ = cmd.Wait()
		b.state = cmd.ProcessState
		close(b.done)
	}()
	t.Cleanup(b.cleanup)
	return b
}

// startWithPipes starts baton with its stdout and stderr on pipes the
// harness reads line by line.
func (b *Baton) startWithPipes(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// *os.File outputs: exec starts no copying goroutines, so Wait returns
	// when baton exits even while a worker still holds the pipes.
	cmd.Stdout, cmd.Stderr = outW, errW
	t.Logf("starting %s", strings.Join(cmd.Args, " "))
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		t.Fatalf("starting baton: %v", err)
	}
	b.cmd = cmd
	b.Pid = cmd.Process.Pid
	b.pipes = []*os.File{outR, errR}
	b.procs.add(b.Pid)
	watchDescendants(b)
	b.readers.Go(func() { readLines(outR, b.stdout, nil) })
	b.readers.Go(func() { readLines(errR, b.stderr, b.onRecord) })
}

// startWithOutputFile starts baton with its stdout and stderr appended to
// path; the file becomes baton's stderr log when the test ends (cleanup).
func (b *Baton) startWithOutputFile(t testing.TB, cmd *exec.Cmd, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	t.Logf("starting %s > %s 2>&1", strings.Join(cmd.Args, " "), path)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting baton: %v", err)
	}
	b.cmd = cmd
	b.Pid = cmd.Process.Pid
	b.output = path
	b.procs.add(b.Pid)
	watchDescendants(b)
}

// withTestFlags adds what every test wants to run and demo: JSON logs
// (which the harness parses), port 0 (no two tests share a port) and a
// control socket in dir (no two batons share one; root's default,
// /run/baton/baton.sock, is the machine's), unless the test chose otherwise. It
// returns the arguments and the control socket baton will listen on.
func withTestFlags(spec batonSpec, dir string) (args []string, ctl string, err error) {
	args = spec.args
	if len(args) == 0 || (args[0] != "run" && args[0] != "demo") {
		return args, "", nil
	}
	flags := args[1:]
	if i := slices.Index(flags, "--"); i >= 0 {
		flags = flags[:i]
	}
	var extra []string
	if !spec.textLogs && !hasFlag(flags, "--log-format") {
		extra = append(extra, "--log-format", "json")
	}
	// A config file, when given, says where to listen.
	if !spec.noBind && !hasFlag(flags, "-b", "--bind", "-c", "--config") {
		extra = append(extra, "-b", "127.0.0.1:0")
	}
	ctl, chosen := chosenControl(flags)
	switch {
	case chosen && ctl == sharedControlSocket():
		return nil, "", fmt.Errorf("the test gives baton the machine's shared control socket %s", ctl)
	case chosen:
	case spec.defaultControl:
		uid := os.Getuid()
		if spec.cred != nil {
			uid = int(spec.cred.Uid)
		}
		var shared bool
		ctl, shared = defaultControlIn(spec.env, uid)
		if shared {
			return nil, "", fmt.Errorf("defaultControl without a pidfile, XDG_RUNTIME_DIR or (not as root) TMPDIR: baton would use the machine's %s", ctl)
		}
	default:
		ctl = filepath.Join(dir, "baton.sock")
		if len(ctl) > 100 { // a unix socket path has at most 107 bytes
			short, err := os.MkdirTemp("", "baton-ctl-")
			if err != nil {
				return nil, "", err
			}
			ctl = filepath.Join(short, "baton.sock")
		}
		extra = append(extra, "--control", ctl)
	}
	return slices.Concat(args[:1], extra, args[1:]), ctl, nil
}

// chosenControl is the control socket the flags (and the config file they
// name) give baton, as cmd/baton's controlPath resolves it: control, else
// beside the pidfile; flags win over the file.
func chosenControl(flags []string) (ctl string, chosen bool) {
	ctl, hasCtl := flagValue(flags, "--control")
	pid, hasPid := flagValue(flags, "--pid")
	if cfg, ok := flagValue(flags, "-c", "--config"); ok && (!hasCtl || !hasPid) {
		data, _ := os.ReadFile(cfg) // a missing file is baton's to report
		keys := configStrings(string(data))
		if v, ok := keys["control"]; ok && !hasCtl {
			ctl, hasCtl = v, true
		}
		if v, ok := keys["pid"]; ok && !hasPid {
			pid, hasPid = v, true
		}
	}
	switch {
	case hasCtl && ctl != "":
		return ctl, true
	case hasPid && pid != "":
		return control.DefaultPath(pid), true
	}
	return "", false
}

// configStrings reads the top-level key = "string" lines of a TOML config,
// enough for the test configs' control and pid.
func configStrings(toml string) map[string]string {
	keys := map[string]string{}
	for _, line := range strings.Split(toml, "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") {
			break // a table: no more top-level keys
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if s, err := strconv.Unquote(strings.TrimSpace(v)); err == nil {
			keys[strings.TrimSpace(k)] = s
		}
	}
	return keys
}

// defaultControlIn is where baton running as uid puts its control socket
// with nothing configured and env (on top of cleanEnv's) as its
// environment; shared is true when that is the machine's socket for uid,
// which no test may use.
func defaultControlIn(env []string, uid int) (path string, shared bool) {
	if dir := envValue(env, "XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "baton.sock"), false
	}
	if tmp := envValue(env, "TMPDIR"); tmp != "" && uid != 0 {
		return privateControlSocket(uid, tmp), false
	}
	return privateControlSocket(uid, ""), true
}

// envValue is the value of the last name=... in env.
func envValue(env []string, name string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(env[i], name+"="); ok {
			return v
		}
	}
	return ""
}

// flagValue is the value of the last of the flags called names in args:
// "--name V", "--name=V", or "-xV" for a one-letter name.
func flagValue(args []string, names ...string) (value string, ok bool) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		for _, n := range names {
			switch {
			case a == n && i+1 < len(args):
				value, ok = args[i+1], true
			case strings.HasPrefix(a, n+"="):
				value, ok = a[len(n)+1:], true
			case len(n) == 2 && len(a) > 2 && strings.HasPrefix(a, n) && a[2] != '=':
				value, ok = a[2:], true
			default:
				continue
			}
			if a == n {
				i++
			}
			break
		}
	}
	return value, ok
}

func hasFlag(args []string, names ...string) bool {
	for _, a := range args {
		for _, n := range names {
			if a == n || strings.HasPrefix(a, n+"=") || (len(n) == 2 && strings.HasPrefix(a, n)) {
				return true
			}
		}
	}
	return false
}

// cleanEnv is the test's environment without anything that would make
// baton think it runs under systemd, and with a -race baton's exit as
// quick as a normal one's.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID":
			continue
		case "XDG_RUNTIME_DIR":
			// Else a baton or client given no control socket would use
			// the session's; without it, they use the shared one, which
			// TestMain watches.
			continue
		}
		env = append(env, kv)
	}
	if os.Getenv("GORACE") == "" {
		// A -race binary otherwise sleeps a second at exit.
		env = append(env, "GORACE=atexit_sleep_ms=0")
	}
	return env
}

// onRecord runs in the stderr reader before the record is visible to
// waiters, so every worker a test has seen is already tracked.
func (b *Baton) onRecord(r record) {
	if r.msg() == "worker started" {
		if pid := r.int("pid"); pid > 0 {
			b.procs.add(pid)
		}
	}
}

// trackDescendants adds every process below the master to the tracker.
func (b *Baton) trackDescendants() {
	if !b.exited() {
		for _, pid := range descendants(b.Pid) {
			b.procs.add(pid)
		}
	}
}

// The descendant watcher: while any baton of the test run is running, one
// goroutine scans /proc every 100ms and tracks what each master runs, so that
// a process that escaped its worker's process group and outlives the master
// is still known at cleanup.
var watcher struct {
	mu      sync.Mutex
	batons  map[*Baton]bool
	running bool
}

func watchDescendants(b *Baton) {
	watcher.mu.Lock()
	defer watcher.mu.Unlock()
	if watcher.batons == nil {
		watcher.batons = map[*Baton]bool{}
	}
	watcher.batons[b] = true
	if !watcher.running {
		watcher.running = true
		go runWatcher()
	}
}

func runWatcher() {
	for {
		time.Sleep(100 * time.Millisecond)
		watcher.mu.Lock()
		var live []*Baton
		for b := range watcher.batons {
			if b.exited() {
				delete(watcher.batons, b)
			} else {
				live = append(live, b)
			}
		}
		if len(live) == 0 {
			watcher.running = false
			watcher.mu.Unlock()
			return
		}
		watcher.mu.Unlock()
		byParent := map[int][]int{}
		for _, p := range allProcs() {
			if !p.zombie() {
				byParent[p.ppid] = append(byParent[p.ppid], p.pid)
			}
		}
		for _, b := range live {
			for _, pid := range descendantsIn(byParent, b.Pid) {
				b.procs.add(pid)
			}
		}
	}
}

// waitStarted waits until the master answers on its control socket (it
// opens it once its listeners are bound, just before its loop starts) and
// reads the listeners' real addresses from its status.
func (b *Baton) waitStarted(t testing.TB) {
	t.Helper()
	st := b.waitStatus(t, "the master to answer on its control socket", startTimeout, func(control.Status) bool { return true })
	if st.Pid != b.Pid {
		t.Errorf("the master on %s says pid %d, the process is %d", b.Control, st.Pid, b.Pid)
	}
	for _, l := range st.Listeners {
		b.listenerNames = append(b.listenerNames, l.Name)
		b.listenerAddrs[l.Name] = l.Addr
	}
	if len(b.listenerNames) == 0 {
		t.Fatalf("the master's status lists no listener: %+v", st)
	}
}

// Addr is the address of the first listener ("127.0.0.1:PORT").
func (b *Baton) Addr() string { return b.listenerAddrs[b.listenerNames[0]] }

// ListenerAddr is the address the listener called name is bound to.
func (b *Baton) ListenerAddr(t testing.TB, name string) string {
	t.Helper()
	addr, ok := b.listenerAddrs[name]
	if !ok {
		t.Fatalf("no listener %q; have %v", name, b.listenerAddrs)
	}
	return addr
}

// logs returns the records so far with msg for which match is true.
func (b *Baton) logs(msg string, match func(record) bool) []record {
	return b.stderr.find(msg, match)
}

// waitLog waits for the first record with msg for which match (nil: any)
// is true, and fails the test if none comes within timeout.
func (b *Baton) waitLog(t testing.TB, msg string, match func(record) bool, timeout time.Duration) record {
	t.Helper()
	return b.waitLogs(t, msg, match, 1, timeout)[0]
}

// waitLogs waits until n records with msg match and returns them all.
func (b *Baton) waitLogs(t testing.TB, msg string, match func(record) bool, n int, timeout time.Duration) []record {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	done := b.done
	for {
		found, changed := b.stderr.findAndWatch(msg, match)
		if len(found) >= n {
			return found
		}
		select {
		case <-changed:
		case <-done:
			// No more records from baton; give the reader a moment
			// to drain the pipe, then give up.
			done = nil
			deadline.Reset(time.Second)
		case <-deadline.C:
			exited := ""
			if b.exited() {
				exited = fmt.Sprintf(" (baton exited: %v)", b.state)
			}
			t.Fatalf("waited %v for %d %q record(s), got %d%s; baton's stderr:\n%s",
				timeout, n, msg, len(found), exited, b.stderr.text())
		}
	}
}

// signal sends sig to the master (not its group).
func (b *Baton) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	// Whatever runs now may outlive the master if baton gets this wrong.
	b.trackDescendants()
	if err := syscall.Kill(b.Pid, sig); err != nil {
		t.Fatalf("kill -%v %d: %v", sig, b.Pid, err)
	}
}

func (b *Baton) exited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// waitExit waits for baton to exit and returns its exit code; it fails the
// test if baton is still running after timeout or was killed by a signal.
func (b *Baton) waitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(timeout):
		t.Fatalf("baton (pid %d) still running %v later; its stderr:\n%s", b.Pid, timeout, b.stderr.text())
	}
	if ws, ok := b.state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		t.Fatalf("baton was killed by signal %v; its stderr:\n%s", ws.Signal(), b.stderr.text())
	}
	return b.state.ExitCode()
}

// waitOutputClosed waits until every writer of baton's stdout and stderr
// has closed them (so all output has been read), at most timeout.
func (b *Baton) waitOutputClosed(timeout time.Duration) bool {
	closed := make(chan struct{})
	go func() { b.readers.Wait(); close(closed) }()
	select {
	case <-closed:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Stderr and Stdout return everything baton (and its workers) wrote so far.
func (b *Baton) Stderr() string { return b.stderr.text() }
func (b *Baton) Stdout() string { return b.stdout.text() }

// assertNothingLeft fails the test unless every process baton started is
// gone within a few seconds (baton itself must have exited).
func (b *Baton) assertNothingLeft(t testing.TB) {
	t.Helper()
	if !b.exited() {
		t.Fatalf("assertNothingLeft: baton %d is still running", b.Pid)
	}
	if left := b.procs.waitGone(5 * time.Second); len(left) > 0 {
		t.Errorf("processes left behind after baton exited:\n%s", describeProcs(left))
	}
}

// cleanup kills whatever is left of baton and fails the test when a process
// it started survives: first whatever the test did not stop (kill -9 of the
// master must take its workers with it), then anything at all.
func (b *Baton) cleanup() {
	t := b.t
	if !b.exited() {
		// Remember everything the master runs, then kill -9 it: its
		// workers must die with it (Pdeathsig).
		b.trackDescendants()
		workers := aliveChildrenOf(b.Pid)
		_ = syscall.Kill(b.Pid, syscall.SIGKILL)
		select {
		case <-b.done:
		case <-time.After(10 * time.Second):
			t.Errorf("baton %d survived SIGKILL for 10s", b.Pid)
		}
		if survivors := waitProcsGone(workers, 5*time.Second); len(survivors) > 0 {
			t.Errorf("workers survived kill -9 of the master %d:\n%s", b.Pid, describeProcs(survivors))
		}
	} else if left := b.procs.waitGone(5 * time.Second); len(left) > 0 {
		t.Errorf("processes left behind after baton exited:\n%s", describeProcs(left))
	}
	// Now kill anything still there (grandchildren have no Pdeathsig).
	b.procs.killAll()
	if left := b.procs.waitGone(10 * time.Second); len(left) > 0 {
		t.Errorf("processes still alive after SIGKILL:\n%s", describeProcs(left))
	}
	// The pipes close once every writer is gone; don't hang if one is not.
	b.waitOutputClosed(2 * time.Second)
	for _, p := range b.pipes {
		p.Close() // unblocks a reader still waiting
	}
	b.readers.Wait()
	if b.output != "" {
		if data, err := os.ReadFile(b.output); err == nil {
			readLines(strings.NewReader(string(data)), b.stderr, nil)
		}
	}
	b.checkOutputForCrashes(t)
	if t.Failed() {
		t.Logf("baton %d stderr:\n%s", b.Pid, lastLines(b.stderr.text(), 300))
	}
}

// checkOutputForCrashes fails the test on a data race report from the
// -race baton, or a Go panic or fatal error in baton or a worker.
func (b *Baton) checkOutputForCrashes(t testing.TB) {
	lines := strings.Split(b.stderr.text(), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "WARNING: DATA RACE") || strings.HasPrefix(l, "panic: ") || strings.HasPrefix(l, "fatal error: ") {
			end := min(i+60, len(lines))
			t.Errorf("crash report in baton's stderr:\n%s", strings.Join(lines[i:end], "\n"))
			return
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("[... %d lines before]", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// ---------------------------------------------------------------------------
// Running baton for its exit status only

// runResult is what a short baton run (check, version, bad input) did.
type runResult struct {
	code   int
	stdout string
	stderr string
	b      *Baton
}

// runToExit starts baton as spec says and waits for it to exit on its own.
func runToExit(t testing.TB, spec batonSpec) runResult {
	t.Helper()
	b := launch(t, spec)
	code := b.waitExit(t, exitTimeout)
	// Nothing else holds the pipes when baton started no worker.
	b.waitOutputClosed(2 * time.Second)
	return runResult{code: code, stdout: b.Stdout(), stderr: b.Stderr(), b: b}
}

// ---------------------------------------------------------------------------
// The master's status, as `baton status --json` and /status report it

// statusPoll is how often waitStatus asks: each answer costs the master a
// scan of /proc (the workers' RSS), so not as often as pollInterval.
const statusPoll = 25 * time.Millisecond

// status asks b's master for its status over the control socket.
func (b *Baton) status() (control.Status, error) {
	if b.Control == "" {
		return control.Status{}, errors.New("the harness does not know this baton's control socket")
	}
	c, err := control.Dial(b.Control)
	if err != nil {
		return control.Status{}, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Call(ctx, control.Request{Cmd: control.CmdStatus}, nil)
	if err != nil {
		return control.Status{}, err
	}
	if resp.Status == nil {
		return control.Status{}, errors.New("a status reply without a status")
	}
	return *resp.Status, nil
}

// mustStatus is b's status now; it fails the test if there is none.
func (b *Baton) mustStatus(t testing.TB) control.Status {
	t.Helper()
	st, err := b.status()
	if err != nil {
		t.Fatalf("status of baton %d: %v", b.Pid, err)
	}
	return st
}

// waitStatus polls b's status until cond is true of it and returns that
// status; it fails the test, saying what it waited for and showing the
// last status, if that does not happen within timeout.
func (b *Baton) waitStatus(t testing.TB, what string, timeout time.Duration, cond func(control.Status) bool) control.Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last control.Status
	var lastErr error
	seen := false
	for {
		st, err := b.status()
		if err == nil {
			if cond(st) {
				return st
			}
			last, seen = st, true
		}
		lastErr = err
		exited := b.exited()
		if exited || time.Now().After(deadline) {
			why := fmt.Sprintf("waited %v", timeout)
			if exited {
				why = fmt.Sprintf("baton exited (%v)", b.state)
			}
			lastStatus := "none"
			if seen {
				js, _ := json.MarshalIndent(last, "", "  ")
				lastStatus = string(js)
			}
			t.Fatalf("%s for %s; last error: %v; last status: %s\nbaton's stderr:\n%s",
				why, what, lastErr, lastStatus, lastLines(b.stderr.text(), 100))
		}
		time.Sleep(statusPoll)
	}
}

// waitReady waits until the master lists n workers, all of them ready,
// and returns that status.
func (b *Baton) waitReady(t testing.TB, n int) control.Status {
	t.Helper()
	return b.waitStatus(t, fmt.Sprintf("%d ready workers", n), startTimeout, func(st control.Status) bool {
		return len(st.WorkerList) == n && len(inState(st, "ready")) == n
	})
}

// waitListed waits until the master lists n workers, in whatever state
// (a worker that never listens is never ready), and returns that status.
func (b *Baton) waitListed(t testing.TB, n int) control.Status {
	t.Helper()
	return b.waitStatus(t, fmt.Sprintf("%d workers", n), startTimeout, func(st control.Status) bool {
		return len(st.WorkerList) == n
	})
}

// inState is st's workers in state ("starting", "ready", "draining").
func inState(st control.Status, state string) []control.Worker {
	var ws []control.Worker
	for _, w := range st.WorkerList {
		if w.State == state {
			ws = append(ws, w)
		}
	}
	return ws
}

// workerPidsOf is the pids of ws, sorted.
func workerPidsOf(ws []control.Worker) []int {
	pids := make([]int, 0, len(ws))
	for _, w := range ws {
		pids = append(pids, w.Pid)
	}
	slices.Sort(pids)
	return pids
}

// inSlot is the worker serving slot in st: of the newest generation there,
// not draining; ok is false when there is none (between a crash and the
// restart).
func inSlot(st control.Status, slot int) (w control.Worker, ok bool) {
	for _, c := range st.WorkerList {
		if c.Slot != slot || c.State == "draining" {
			continue
		}
		if !ok || c.Generation > w.Generation || (c.Generation == w.Generation && c.Started.After(w.Started)) {
			w, ok = c, true
		}
	}
	return w, ok
}

// withPid is the worker with pid in st.
func withPid(st control.Status, pid int) (control.Worker, bool) {
	for _, w := range st.WorkerList {
		if w.Pid == pid {
			return w, true
		}
	}
	return control.Worker{}, false
}

// workerPid waits for a worker in slot and returns its pid (the newest
// one, see inSlot).
func (b *Baton) workerPid(t testing.TB, slot int) int {
	t.Helper()
	var w control.Worker
	b.waitStatus(t, fmt.Sprintf("a worker in slot %d", slot), waitTimeout, func(st control.Status) bool {
		var ok bool
		w, ok = inSlot(st, slot)
		return ok
	})
	return w.Pid
}

// waitSlot waits until the worker serving slot (see inSlot) is one for
// which cond is true, and returns it.
func (b *Baton) waitSlot(t testing.TB, slot int, what string, cond func(control.Worker) bool) control.Worker {
	t.Helper()
	var w control.Worker
	b.waitStatus(t, fmt.Sprintf("%s in slot %d", what, slot), waitTimeout, func(st control.Status) bool {
		var ok bool
		w, ok = inSlot(st, slot)
		return ok && cond(w)
	})
	return w
}

// reload sends HUP and waits for that reload, of generation gen, to end;
// it returns how it ended (status's last_reload).
func (b *Baton) reload(t testing.TB, gen int) control.ReloadResult {
	t.Helper()
	before := b.mustStatus(t).LastReload
	b.signal(t, syscall.SIGHUP)
	return b.waitReloadAfter(t, gen, before)
}

// waitReloadEnd waits for the reload of generation gen to end and returns
// how it ended.
func (b *Baton) waitReloadEnd(t testing.TB, gen int) control.ReloadResult {
	t.Helper()
	return b.waitReloadAfter(t, gen, nil)
}

// waitReloadAfter waits for a reload of generation gen other than before
// (a config that was refused leaves its generation number free for the
// next reload) to end.
func (b *Baton) waitReloadAfter(t testing.TB, gen int, before *control.ReloadResult) control.ReloadResult {
	t.Helper()
	st := b.waitStatus(t, fmt.Sprintf("the end of the reload of generation %d", gen), reloadTimeout, func(st control.Status) bool {
		r := st.LastReload
		if r == nil || (before != nil && r.Started.Equal(before.Started)) {
			return false
		}
		if r.Generation > gen {
			t.Fatalf("the reload of generation %d ended and a later one (%d) too before the status showed it: %s",
				gen, r.Generation, describeReload(r))
		}
		return r.Generation == gen
	})
	return *st.LastReload
}

// describeReload shows a reload's result in a failure message.
func describeReload(r *control.ReloadResult) string {
	if r == nil {
		return "no reload"
	}
	js, _ := json.Marshal(r)
	return string(js)
}

// cgroupMount is where the cgroup v2 hierarchy is: baton's trees are
// at its top, as the tests run baton from the root cgroup.
func cgroupMount() string {
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err == nil {
				return dir
			}
		}
	}
	return ""
}

// batonCgroups lists the baton trees at the top of the hierarchy.
func batonCgroups() map[string]bool {
	found := map[string]bool{}
	mount := cgroupMount()
	if mount == "" {
		return found
	}
	entries, _ := os.ReadDir(mount)
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "baton-") {
			found[e.Name()] = true
		}
	}
	return found
}

// removeEmptyCgroups removes the trees the tests' batons left (those
// killed with SIGKILL cannot remove theirs), when no process is in them.
func removeEmptyCgroups(before map[string]bool) {
	mount := cgroupMount()
	for name := range batonCgroups() {
		if before[name] {
			continue
		}
		tree := filepath.Join(mount, name)
		subs, _ := os.ReadDir(tree)
		for _, sub := range subs {
			if sub.IsDir() {
				syscall.Rmdir(filepath.Join(tree, sub.Name()))
			}
		}
		if err := syscall.Rmdir(tree); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: cgroup %s left behind: %v\n", tree, err)
		}
	}
}
