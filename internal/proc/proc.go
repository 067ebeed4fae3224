// Package proc starts, signals and reaps worker processes.
//
// A worker is started as a re-execution of baton itself in its hidden shim
// mode (see Shim), which sets LISTEN_PID to its own pid and then execs the
// user's command, so the pid systemd's protocol asks for is the worker's own.
// The shim also makes sure that the listeners and the standard streams are
// the only descriptors the command inherits.
// Workers get the listeners as fds 3, 4, ... by raw fd numbers: no *os.File is
// involved, so nothing flips the shared sockets to blocking mode.
//
// Exit statuses are collected in exactly one place (Reap) with wait4(-1):
// the master must not use os/exec's Wait for anything, or the two would
// steal each other's children.
package proc

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/fdexec"
)

// ShimArg is the hidden first argument that makes baton act as the shim.
const ShimArg = "_exec"

// Spec describes one worker process to start.
type Spec struct {
	// Shim is the path of the baton binary to re-execute as the shim.
	Shim string
	// Path is the resolved executable; Args is the full argv (Args[0] is
	// what the program sees as its name).
	Path string
	Args []string
	Dir  string
	Env  []string // complete environment, without LISTEN_PID (the shim adds it)
	// Listeners are raw fds that become fds 3, 4, ... in the worker; no
	// other fd above 2 reaches it but Extra.
	Listeners []int
	// Extra are raw fds that follow the listeners (a preload template's
	// control socket): the command gets them, the listener guard does not
	// cover them.
	Extra []int
	// Stdout is the raw fd the worker writes its stdout to (usually 1).
	Stdout int
	// Stderr receives the worker's stderr, through a pipe that keeps its
	// last lines (see Tail).
	Stderr io.Writer
	// Credential, if set, runs the worker as that user and group with no
	// supplementary groups (the master stays root to bind and manage).
	Credential *syscall.Credential
	// CgroupFD, if InCgroup, is the directory fd of the cgroup the worker
	// is born in (clone3 with CLONE_INTO_CGROUP): none of its code runs
	// outside it.
	InCgroup bool
	CgroupFD int
}

// Process is a started worker.
type Process struct {
	Pid     int
	Started time.Time
	// Stderr holds the last lines the worker wrote to stderr.
	Stderr *Tail
	// pidfd refers to the worker for as long as the master holds it,
	// whatever process later gets its pid; -1 where the kernel gives none.
	pidfd int
	// stderrPipe is the read end of the worker's stderr pipe, which the
	// tail reads.
	stderrPipe *os.File
}

// devNull is opened once: workers read stdin from /dev/null, because a
// worker in its own process group that reads the terminal would be stopped
// with SIGTTIN.
var devNull = mustOpenDevNull()

func mustOpenDevNull() int {
	fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		panic(fmt.Sprintf("proc: open /dev/null: %v", err))
	}
	return fd
}

// Start forks and execs the shim for spec. The calling goroutine should be
// locked to its OS thread for the master's lifetime: Pdeathsig fires when the
// thread that forked the child exits, not the process (golang/go#27505).
func Start(spec Spec) (*Process, error) {
	// The shim learns how many listeners follow the standard streams, so
	// that it can keep those and no other descriptor.
	fdCount := strconv.Itoa(len(spec.Listeners))
	if len(spec.Extra) > 0 {
		fdCount += "+" + strconv.Itoa(len(spec.Extra))
	}
	argv := append([]string{"baton", ShimArg, fdCount, spec.Path}, spec.Args...)
	errRead, errWrite, err := stderrPipe()
	if err != nil {
		return nil, fmt.Errorf("start worker: stderr pipe: %w", err)
	}
	// The child has its own copy once forked; ours must go, or the tail
	// would never see EOF.
	defer errWrite.Close()
	files := []uintptr{uintptr(devNull), uintptr(spec.Stdout), errWrite.Fd()}
	for _, fd := range append(slices.Clip(spec.Listeners), spec.Extra...) {
		files = append(files, uintptr(fd))
	}
	pidfd := -1
	attr := &syscall.ProcAttr{
		Dir:   spec.Dir,
		Env:   spec.Env,
		Files: files,
		Sys: &syscall.SysProcAttr{
			// Its own process group, so the stop signal reaches the
			// worker's children too and a terminal's Ctrl-C does not.
			Setpgid: true,
			// A worker never outlives the master: kill -9 of the
			// master kills the worker instead of leaving it holding
			// the port.
			Pdeathsig:   syscall.SIGKILL,
			Credential:  spec.Credential,
			UseCgroupFD: spec.InCgroup,
			CgroupFD:    spec.CgroupFD,
			PidFD:       &pidfd,
		},
	}
	pid, err := syscall.ForkExec(spec.Shim, argv, attr)
	if err != nil {
		errRead.Close()
		return nil, fmt.Errorf("start worker %q: %w", spec.Path, err)
	}
	return &Process{Pid: pid, Started: time.Now(), Stderr: newTail(errRead, spec.Stderr), pidfd: pidfd, stderrPipe: errRead}, nil
}

// Adopt takes over a worker this process started before it re-executed
// itself (an in-place upgrade): pid is still its child, and stderrFD is
// the read end of the worker's stderr pipe, which survived the exec.
func Adopt(pid int, started time.Time, stderrFD int, stderr io.Writer) *Process {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		pidfd = -1 // a kernel without pidfd_open: signals by pid until reaped
	}
	unix.CloseOnExec(stderrFD)
	pipe := os.NewFile(uintptr(stderrFD), "worker-stderr")
	return &Process{Pid: pid, Started: started, Stderr: newTail(pipe, stderr), pidfd: pidfd, stderrPipe: pipe}
}

// AdoptForked takes over a worker that a preload template forked and
// that became this process's child (it is a child subreaper): pid, and
// the read end of the stderr pipe baton gave it. A pid that is gone
// already is an error: its exit may have been reaped as a stranger's.
func AdoptForked(pid int, stderrPipe *os.File, stderr io.Writer) (*Process, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	switch {
	case err == unix.ESRCH:
		return nil, fmt.Errorf("forked worker %d is gone", pid)
	case err != nil:
		pidfd = -1 // a kernel without pidfd_open: signals by pid until reaped
	}
	return &Process{Pid: pid, Started: time.Now(), Stderr: newTail(stderrPipe, stderr), pidfd: pidfd, stderrPipe: stderrPipe}, nil
}

// KeepStderrOnExec makes the read end of the worker's stderr pipe survive
// this process's exec (keep), or not, and returns its fd: an in-place
// upgrade hands it to the new image, so that the worker's writes to
// stderr never meet a closed pipe (a Go program dies of that).
func (p *Process) KeepStderrOnExec(keep bool) (int, error) {
	return fdexec.KeepConn(p.stderrPipe, keep)
}

// StderrLines is the first first and the last last lines the worker
// wrote on stderr (see Tail.Lines).
func (p *Process) StderrLines(first, last int) []string { return p.Stderr.Lines(first, last) }

// StderrClosed is closed once every process of the worker closed its
// stderr; callers bound the wait, since a grandchild may keep it open.
func (p *Process) StderrClosed() <-chan struct{} { return p.Stderr.Wait() }

// SignalGroup sends sig to the worker's whole process group. A group that
// is already gone is not an error. Call it only until the worker is
// reaped: until then its pid, and so its group's id, cannot be reused.
// Through the pidfd (Linux 6.9) even that cannot go wrong.
func (p *Process) SignalGroup(sig syscall.Signal) error {
	var err error
	if p.pidfd >= 0 {
		err = unix.PidfdSendSignal(p.pidfd, sig, nil, unix.PIDFD_SIGNAL_PROCESS_GROUP)
		if err != unix.EINVAL {
			return ignoreGone(err)
		}
	}
	return ignoreGone(unix.Kill(-p.Pid, sig))
}

func ignoreGone(err error) error {
	if err == unix.ESRCH {
		return nil
	}
	return err
}

// Release closes the pidfd once the worker was reaped.
func (p *Process) Release() {
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
}

// Exit is one reaped child.
type Exit struct {
	Pid    int
	Status unix.WaitStatus
}

// Reap collects every child that has exited, without blocking.
func Reap() []Exit {
	var exits []Exit
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return exits
		}
		exits = append(exits, Exit{Pid: pid, Status: ws})
	}
}

// Describe says how a process ended, in the words of a shell user.
func Describe(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		s := "killed by signal " + SignalName(ws.Signal())
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

// SignalName is the short name of sig as Gunicorn users write it: "TERM".
func SignalName(sig syscall.Signal) string {
	name := unix.SignalName(sig)
	if name == "" {
		return strconv.Itoa(int(sig))
	}
	return name[3:] // drop "SIG"
}

// masterPid is the pid of the master that started this shim, which it
// passes in BATON_MASTER_PID.
func masterPid() int {
	pid, _ := strconv.Atoi(os.Getenv(MasterPidEnv))
	return pid
}

// MasterPidEnv tells the shim its master's pid.
const MasterPidEnv = "BATON_MASTER_PID"

// Shim is the body of baton's hidden "_exec" mode: args are the number N of
// listeners the worker gets as fds 3, 4, ... ("N+M" when M more fds follow
// them), the resolved executable and its argv. It marks every fd from
// 3+N+M up close-on-exec, so that the command
// starts with the listeners and its standard streams and nothing else the
// master might hold; sets LISTEN_PID to its own pid, which execve keeps; and
// replaces itself with the command. It returns only on failure, with the
// exit code a shell would use (127 not found, 126 not executable).
//
// The command gets the soft RLIMIT_NOFILE the master was started with, not
// the one the Go runtime raised it to: the runtime gives it back to every
// process the master starts, and this process's own runtime restores it in
// the exec below. Neither the master nor the shim may call setrlimit for
// RLIMIT_NOFILE, which would stop that (golang/go#46279).
func Shim(args []string) int {
	n, extra := -1, 0
	if len(args) >= 3 {
		n, extra = parseFdCount(args[0])
	}
	if n < 0 {
		fmt.Fprintln(os.Stderr, "baton _exec: usage: baton _exec NLISTENERS[+NEXTRA] PATH ARGV0 [ARGS...] (internal, started by the master)")
		return 2
	}
	path, argv := args[1], args[2:]
	// The kernel keeps the parent-death signal per thread: the master set it
	// on this process's first thread, and execve from any other thread
	// would drop it, letting the worker outlive a killed master. So exec
	// from a locked thread that sets it again, and check that the master
	// did not die before it was set.
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "baton: cannot set the parent-death signal: %v\n", err)
		return 126
	}
	if os.Getppid() != masterPid() {
		return 126 // the master is gone already; start nothing
	}
	// Close-on-exec rather than closed: the Go runtime may hold fds of its
	// own until the exec, and this process goes on if the exec fails.
	if err := CloseOnExecFrom(3 + n + extra); err != nil {
		fmt.Fprintf(os.Stderr, "baton: cannot keep the master's file descriptors from %s: %v\n", path, err)
		return 126
	}
	// Not fatal: the master checks its listeners after every worker exit
	// and re-arms one a worker shut down.
	if err := guardListeners(n); err != nil {
		fmt.Fprintf(os.Stderr, "baton: %s runs without the listener guard (a shutdown(2) of its listener would reach every worker): %v\n", path, err)
	}
	if os.Getenv("LISTEN_FDS") != "" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	}
	err := unix.Exec(path, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "baton: cannot execute %s: %v\n", path, err)
	if err == unix.ENOENT {
		return 127
	}
	return 126
}

// parseFdCount reads the shim's "N" or "N+M"; n is -1 when it is neither.
func parseFdCount(arg string) (n, extra int) {
	listeners, more, hasExtra := strings.Cut(arg, "+")
	n, err := strconv.Atoi(listeners)
	if err != nil || n < 0 {
		return -1, 0
	}
	if hasExtra {
		extra, err = strconv.Atoi(more)
		if err != nil || extra < 0 {
			return -1, 0
		}
	}
	return n, extra
}
