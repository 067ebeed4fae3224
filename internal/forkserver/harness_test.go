package forkserver

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test process plays baton: a child subreaper, so that the workers the
// template double-forks become its children (nothing else in this package's
// tests starts processes that could leave orphans behind); and, as baton
// does when it starts, it keeps the descriptors it inherited (from a shell,
// say) from reaching the processes it starts, so that a test sees exactly
// the descriptors a template and its workers get from baton.
func TestMain(m *testing.M) {
	if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
		fmt.Fprintf(os.Stderr, "forkserver tests: close_range: %v\n", err)
		os.Exit(1)
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "forkserver tests: cannot become a child subreaper: %v\n", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// Generous: the machine is shared, and Python imports are slow under load.
const patience = 60 * time.Second

// debianPython is the interpreter of Debian's uvicorn and gunicorn scripts.
const debianPython = "/usr/bin/python3"

func requireFile(t *testing.T, path, pkg string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s is missing: install the Debian package %s (scripts/install-test-deps): %v", path, pkg, err)
	}
}

// template is a running fork server and baton's end of its control socket.
type template struct {
	t        *testing.T
	cmd      *exec.Cmd
	conn     *Conn
	messages chan Message
	received chan error // Receive's result
	stderr   string     // file with the template's stderr
	exited   chan error // cmd.Wait's result
	workers  map[int]bool
}

type templateSpec struct {
	dir      string   // the template's (and the workers') cwd
	command  []string // the worker command
	preload  []string
	listener *os.File // becomes fd 3, if set
}

// startTemplate starts the fork server as baton would: the interpreter and
// flags Interpreter finds for the command, fds 0-2, the listener at 3, the
// control socket after it, its own process group.
func startTemplate(t *testing.T, spec templateSpec) *template {
	t.Helper()
	requireFile(t, debianPython, "python3")
	path := spec.command[0]
	if !strings.Contains(path, "/") {
		var err error
		if path, err = exec.LookPath(path); err != nil {
			t.Fatalf("%s: %v", spec.command[0], err)
		}
	}
	interp, entry, err := InterpreterIn(path, spec.command, "/usr/bin:/bin")
	if err != nil {
		t.Fatalf("Interpreter(%v): %v", spec.command, err)
	}
	script, err := Install(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	conn, child, err := NewPair()
	if err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	if spec.listener != nil {
		files = append(files, spec.listener)
	}
	files = append(files, child)
	logs := t.TempDir()
	stdout, stderr := createFile(t, logs, "stdout"), createFile(t, logs, "stderr")
	cmd := &exec.Cmd{
		Path:        interp,
		Args:        TemplateArgs(interp, entry.Flags, script, spec.preload, spec.command),
		Dir:         spec.dir,
		Env:         append(baseEnv(), fmt.Sprintf("%s=%d", ControlFDEnv, 2+len(files))),
		Stdin:       nil,
		Stdout:      stdout,
		Stderr:      stderr,
		ExtraFiles:  files,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the template %v: %v", cmd.Args, err)
	}
	child.Close()
	stdout.Close()
	stderr.Close()
	tp := &template{
		t: t, cmd: cmd, conn: conn, stderr: stderr.Name(), workers: map[int]bool{},
		messages: make(chan Message, 100), received: make(chan error, 1), exited: make(chan error, 1),
	}
	go func() {
		tp.received <- conn.Receive(func(m Message) { tp.messages <- m })
		close(tp.messages)
	}()
	go func() { tp.exited <- cmd.Wait() }()
	t.Cleanup(tp.cleanup)
	return tp
}

func baseEnv() []string {
	return []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"}
}

func createFile(t *testing.T, dir, name string) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// cleanup kills and reaps every worker and the template, and fails the
// test if one of them cannot be reaped.
func (tp *template) cleanup() {
	for pid, reaped := range tp.workers {
		if !reaped {
			unix.Kill(pid, unix.SIGKILL)
			tp.reap(pid)
		}
	}
	tp.conn.Close()
	tp.cmd.Process.Kill()
	select {
	case <-tp.exited:
	case <-time.After(patience):
		tp.t.Errorf("the template (pid %d) was not reaped", tp.cmd.Process.Pid)
	}
}

// next returns the next message, failing the test on a timeout or when
// the stream ends.
func (tp *template) next() Message {
	tp.t.Helper()
	select {
	case m, ok := <-tp.messages:
		if !ok {
			tp.t.Fatalf("the control socket closed (Receive: %v); template stderr:\n%s", <-tp.received, tp.stderrText())
		}
		return m
	case <-time.After(patience):
		tp.t.Fatalf("no message from the template in %v; its stderr:\n%s", patience, tp.stderrText())
	}
	panic("unreachable")
}

func (tp *template) expect(typ string) Message {
	tp.t.Helper()
	m := tp.next()
	if m.Type != typ {
		tp.t.Fatalf("got %+v, want a %q message; template stderr:\n%s", m, typ, tp.stderrText())
	}
	return m
}

func (tp *template) stderrText() string {
	b, _ := os.ReadFile(tp.stderr)
	return string(b)
}

// fork asks for a worker and returns it with its pid, once the template
// says it forked it.
func (tp *template) fork(id int, env []string) (*Pending, int) {
	tp.t.Helper()
	p, err := tp.conn.Fork(id, env)
	if err != nil {
		tp.t.Fatal(err)
	}
	m := tp.expect(TypeForked)
	if m.ID != id || m.Pid <= 0 {
		tp.t.Fatalf("forked message %+v for request %d", m, id)
	}
	tp.workers[m.Pid] = false
	return p, m.Pid
}

// reap waits for the worker pid, a child of the test process, to exit.
func (tp *template) reap(pid int) unix.WaitStatus {
	tp.t.Helper()
	deadline := time.Now().Add(patience)
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if got == pid {
			tp.workers[pid] = true
			return ws
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			tp.t.Errorf("wait4(%d): %v (is it not a child of the test process?)", pid, err)
			tp.workers[pid] = true
			return ws
		}
		if time.Now().After(deadline) {
			tp.t.Fatalf("worker %d did not exit in %v", pid, patience)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitExit waits for the template to exit and returns its exit code.
func (tp *template) waitExit() int {
	tp.t.Helper()
	select {
	case err := <-tp.exited:
		tp.exited <- err // for cleanup
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			tp.t.Fatal(err)
		}
		return 0
	case <-time.After(patience):
		tp.t.Fatalf("the template did not exit in %v", patience)
	}
	panic("unreachable")
}

// procStat returns a process's parent and process group from /proc.
func procStat(t *testing.T, pid int) (ppid, pgid int) {
	t.Helper()
	fields := statFields(t, pid)
	ppid, _ = strconv.Atoi(fields[1])
	pgid, _ = strconv.Atoi(fields[2])
	return ppid, pgid
}

// procState is a process's state letter: "S" sleeping, "Z" exited, ...
func procState(t *testing.T, pid int) string {
	t.Helper()
	return statFields(t, pid)[0]
}

// statFields are /proc/PID/stat's fields after "pid (comm)": state, ppid,
// pgrp, ... (comm may hold spaces).
func statFields(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
}

// waitBlockedInRead waits until pid sleeps in read(2): a forked worker
// waiting for go. If the file ranEarly appears meanwhile, the worker ran
// the command without go.
func waitBlockedInRead(t *testing.T, pid int, ranEarly string) {
	t.Helper()
	deadline := time.Now().Add(patience)
	var last string
	for time.Now().Before(deadline) {
		if _, err := os.Stat(ranEarly); err == nil {
			t.Fatalf("worker %d ran the command before go (%s appeared)", pid, ranEarly)
		}
		if procState(t, pid) == "Z" {
			t.Fatalf("worker %d exited before go", pid)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid))
		if err != nil {
			t.Fatalf("worker %d: %v", pid, err)
		}
		last = strings.TrimSpace(string(b))
		if nr, _, _ := strings.Cut(last, " "); nr == strconv.Itoa(unix.SYS_READ) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("worker %d never blocked in read(2) (waiting for go); /proc/%d/syscall: %s", pid, pid, last)
}

// waitFile waits for path to exist and returns its content.
func waitFile(t *testing.T, path string) []byte {
	t.Helper()
	deadline := time.Now().Add(patience)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil {
			return b
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not appear in %v", path, patience)
	return nil
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, text := range files {
		mode := os.FileMode(0o644)
		if strings.HasPrefix(text, "#!") {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), mode); err != nil {
			t.Fatal(err)
		}
	}
}

// tcpListener is a listening socket on 127.0.0.1 at a free port.
func tcpListener(t *testing.T) (*os.File, string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "listener")
	t.Cleanup(func() { f.Close() })
	return f, fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
}
