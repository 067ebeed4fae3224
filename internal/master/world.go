package master

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-pm/baton/internal/cgroup"
	"github.com/baton-pm/baton/internal/proc"
	"github.com/baton-pm/baton/internal/procinfo"
	"github.com/baton-pm/baton/internal/readiness"
	"github.com/baton-pm/baton/internal/sdnotify"
	"github.com/baton-pm/baton/internal/unlisten"
	"golang.org/x/sys/unix"
)

// The master acts on the operating system, and learns from it, only
// through the small interfaces of its world below. osWorld is the real
// thing; the unit tests give the master a fake world and run its rules in
// testing/synctest's bubble, where its timers run on a fake clock, so a
// reload with a 60-second boot timeout is checked in microseconds and no
// process is started.

// world is everything the master does to, or reads from, the system.
type world struct {
	procs   processes
	inspect inspector
	notify  notifier
	systemd systemdLink
}

// processes starts, signals and reaps the master's child processes.
type processes interface {
	// StartWorker starts a worker as spec says.
	StartWorker(spec proc.Spec) (pid int, p process, err error)
	// UnlistenInThread removes every registration of group, a group
	// unlisten.Plan made, from a thread of the master's own with a private
	// file table (unlisten.RemoveInThread); it blocks for that long.
	// errors.Is(err, unlisten.ErrNoPrivateTable) when no such thread can be
	// had: StartUnlisten must do it.
	UnlistenInThread(group []unlisten.Target) (notRemoved int, failures []error, err error)
	// StartUnlisten starts one helper process that removes every
	// registration of group (see package unlisten).
	StartUnlisten(group []unlisten.Target) (pid int, err error)
	// StartMaster starts a new master for an upgrade: the same binary
	// path, arguments and directory, env, and the listeners as fds 3,
	// 4, ... It delivers the new master's one "ready PID VERSION" line on
	// ready, which is closed if the new master never writes it.
	StartMaster(spec masterSpec) (pid int, ready <-chan string, err error)
	// StartPreflight starts the binary at path to check that it can take
	// this master over in place (ReexecCheckArg); its one line of answer
	// comes on out once it exits (reaped as a helper).
	StartPreflight(path string, args []string, dir string, stateVersion int) (pid int, out <-chan string, err error)
	// Exec replaces this process's image; it returns only on failure.
	Exec(path string, args, env []string) error
	// Adopt takes over a worker the previous image of this master started.
	Adopt(w reexecWorker) (process, error)
	// Kill signals a new master StartMaster started and that was not
	// reaped yet; any other pid is never signalled.
	Kill(pid int, sig syscall.Signal) error
	// Reap collects every child that has exited, without blocking.
	Reap() []proc.Exit
	// SetGroupNice sets the nice value of process group pgid.
	SetGroupNice(pgid, nice int) error
	// StartTemplate starts a preload template for workers spec
	// describes: the command's Python interpreter running the fork
	// server, which imports preload and then forks on request (package
	// forkserver).
	StartTemplate(spec proc.Spec, preload []string) (pid int, p process, conn templateConn, err error)
	// AdoptForked takes over the worker a template forked for req, now
	// the master's child: with cgroups it moves it into a cgroup of its
	// own first. The worker runs no code of its own until req.Go.
	AdoptForked(pid int, req forkRequest) (process, error)
	// Close removes what starting templates left on disk, when the
	// master exits.
	Close()
}

// templateConn is the master's end of a template's control socket.
type templateConn interface {
	// Receive calls handle with each message until the template closes
	// the socket; it runs on a goroutine of its own.
	Receive(handle func(templateMsg))
	// Fork asks for a worker with env as its whole environment.
	Fork(id int, env []string) (forkRequest, error)
	// Close closes the socket: the template exits once it sees that.
	Close() error
}

// forkRequest is one worker asked of a template.
type forkRequest interface {
	// Go lets the forked worker run.
	Go() error
	// Abort makes the forked worker exit without running anything (if it
	// was forked at all).
	Abort()
}

// process is one started worker.
type process interface {
	// SignalGroup signals the worker's process group, while the worker
	// runs (until it is reaped); a group that is gone is not an error.
	SignalGroup(sig syscall.Signal) error
	// KillTree sends SIGKILL to everything left of the worker: its
	// cgroup, or without cgroups its process group, their descendants and
	// the orphans of it the master adopted, but for the processes in
	// skip (the master's other children). Once the worker was reaped
	// (reaped), its pid may name another process, so without cgroups only
	// the orphans are looked for. It may take milliseconds: call it off
	// the master's goroutine. It returns how many it found.
	KillTree(skip map[int]bool, reaped bool) int
	// Usage is the worker's memory and process count (off the loop).
	Usage() usage
	// Release lets go of the worker once it was reaped and its tree
	// killed: its pidfd, its cgroup (off the loop: it waits for the
	// cgroup to empty).
	Release()
	// StderrLines is the first first and the last last lines the worker
	// wrote on stderr, with a line saying how many were left out between.
	StderrLines(first, last int) []string
	// StderrClosed is closed once every process of the worker closed its
	// stderr.
	StderrClosed() <-chan struct{}
	// KeepStderrOnExec makes the read end of the worker's stderr pipe
	// survive an exec (or not again) and returns its fd.
	KeepStderrOnExec(keep bool) (int, error)
	// Cgroup is the worker's cgroup path, "" without cgroups.
	Cgroup() string
	// Identity is the worker's NOTIFY_SOCKET, which all its processes
	// inherit.
	Identity() string
	// Belongs reports whether pid is one of the worker's processes: with
	// cgroups, one in its cgroup; without, the worker, a process of its
	// process group, a descendant of either, or of an orphan of it the
	// master adopted. It reads /proc: call it off the master's goroutine.
	Belongs(pid int) bool
}

// usage is what a worker uses: memory (its cgroup's memory.current, or
// the resident memory of its processes) and how many processes it has.
type usage struct {
	Memory uint64
	Procs  int
}

// masterSpec is how to start an upgrade's new master.
type masterSpec struct {
	Path      string
	Args      []string
	Dir       string
	Env       []string
	Listeners []int // raw fds, in order
}

// inspector reads what the master learns about processes from /proc. Its
// calls may take milliseconds per process, so the master makes them off
// its goroutine.
type inspector interface {
	// Waiting reports whether a process of pid's tree waits for
	// connections on a listener (ready = "auto").
	Waiting(pid int) bool
	// Registrations lists the epoll registrations of the listeners in
	// pid's tree (drain_unlisten).
	Registrations(pid int) []readiness.Registration
	// ForeignListeners lists, for each of pids, the TCP addresses its
	// tree listens on that are not the master's listeners (foreign.go);
	// pids with none are left out.
	ForeignListeners(pids []int) map[int][]string
}

// notifier opens the workers' notify sockets, as files in a directory of
// the master's own (see package sdnotify).
type notifier interface {
	// Open opens a socket for a worker that runs as owner, or as baton's
	// own user when owner is nil.
	Open(owner *sdnotify.Owner) (notifySocket, error)
	// Close removes the directory and what is left in it, when the
	// master exits.
	Close()
	// Adopt takes over the socket at path that survived this process's
	// exec as fd (an in-place upgrade).
	Adopt(fd int, path string) (notifySocket, error)
}

// notifySocket is one worker's NOTIFY_SOCKET (see package sdnotify).
type notifySocket interface {
	Addr() string
	// Receive calls handle for each message from a process of the worker
	// (belongs(sender pid)), reject for each from anyone else, until the
	// socket is closed. It runs, and calls belongs, on a goroutine of its
	// own.
	Receive(belongs func(pid int) bool, handle, reject func(sdnotify.Message))
	Close() error
	// KeepOnExec makes the socket survive this process's exec (or not
	// again) and returns its fd.
	KeepOnExec(keep bool) (int, error)
}

// systemdLink is the service manager baton runs under, if any.
type systemdLink interface {
	Send(assignments ...string) (bool, error)
	Reloading(status string) (bool, error)
	WatchdogInterval() time.Duration
}

// osWorld is the real world; its inspector is set once the listeners
// are open (it looks for their socket inodes), and its processes learn
// their cgroup tree once it is set up.
func osWorld() world {
	return world{
		procs:   &osProcesses{},
		notify:  &osNotifier{},
		systemd: sdnotify.Systemd{},
	}
}

// osNotifier makes its directory when the first worker starts; it is
// used on the master's goroutine only.
type osNotifier struct{ dir *sdnotify.Dir }

func (n *osNotifier) Open(owner *sdnotify.Owner) (notifySocket, error) {
	if n.dir == nil {
		d, err := sdnotify.NewDir()
		if err != nil {
			return nil, err
		}
		n.dir = d
	}
	s, err := n.dir.Listen(owner)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (n *osNotifier) Adopt(fd int, path string) (notifySocket, error) {
	if n.dir == nil {
		// The same pid finds its own directory, with the sockets in it.
		d, err := sdnotify.NewDir()
		if err != nil {
			return nil, err
		}
		n.dir = d
	}
	return sdnotify.Adopt(fd, path)
}

func (n *osNotifier) Close() {
	if n.dir != nil {
		n.dir.Close()
		n.dir = nil
	}
}

// notifyOwner is the owner of the notify socket of a worker run as c.
func notifyOwner(c *syscall.Credential) *sdnotify.Owner {
	if c == nil {
		return nil
	}
	return &sdnotify.Owner{Uid: c.Uid, Gid: c.Gid, Groups: c.Groups}
}

// osProcesses is processes for real: fork, exec, kill and wait4, with
// each worker in a cgroup of its own when tree is set.
type osProcesses struct {
	tree *cgroup.Tree
	// masters are the pidfds of the new masters upgrades started, by pid,
	// until they are reaped; used on the master's goroutine only.
	masters map[int]int
	// forkServerPath is the fork server, once a template needed it
	// (world_template.go).
	forkServerPath string
}

func (o *osProcesses) StartWorker(spec proc.Spec) (int, process, error) {
	w := &osWorker{id: procinfo.Identity{MasterPid: os.Getpid(), NotifySocket: envValue(spec.Env, "NOTIFY_SOCKET")}}
	if o.tree != nil {
		g, err := o.tree.NewGroup()
		if err != nil {
			return 0, nil, err
		}
		w.group = g
		spec.InCgroup, spec.CgroupFD = true, g.FD()
	}
	p, err := proc.Start(spec)
	if err != nil {
		if w.group != nil {
			w.group.Remove()
		}
		return 0, nil, err
	}
	w.Process = p
	return p.Pid, w, nil
}

func envValue(env []string, name string) string {
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v
		}
	}
	return ""
}

// osWorker is a real worker, in its cgroup or not.
type osWorker struct {
	*proc.Process
	group *cgroup.Group // nil without cgroups
	id    procinfo.Identity
	// forked: a preload template forked it (Usage counts its private
	// memory).
	forked bool
}

// killRounds bounds the search for processes that forked while the
// tree was being killed (without cgroups; cgroup.kill needs one write).
const killRounds = 3

func (w *osWorker) KillTree(skip map[int]bool, reaped bool) int {
	if w.group != nil {
		n := w.group.Procs()
		if n > 0 {
			w.group.Kill()
		}
		return n
	}
	leader := w.Pid
	if reaped {
		leader = 0
	}
	found := 0
	for range killRounds {
		tree := procinfo.WorkerTree(leader, w.id, skip)
		if len(tree) == 0 {
			break
		}
		found += procinfo.Kill(tree)
	}
	return found
}

func (w *osWorker) Cgroup() string {
	if w.group == nil {
		return ""
	}
	return w.group.Path()
}

func (w *osWorker) Identity() string { return w.id.NotifySocket }

func (w *osWorker) Belongs(pid int) bool {
	switch {
	case pid <= 0:
		return false
	case pid == w.Pid:
		return true
	case w.group != nil:
		return procinfo.InCgroup(pid, w.group.Path())
	default:
		return procinfo.InWorker(pid, w.Pid, w.id)
	}
}

// Usage is the worker's memory: its cgroup's, else its processes'
// resident memory, or, for a worker forked from a template, their private
// memory. A cgroup is charged only for the pages its processes fault in,
// so a forked worker's cgroup already leaves out the pages it shares with
// its template; its RSS would count them all (45 MiB for a Django worker
// whose own pages are 16 MiB), and max_worker_memory would replace every
// worker of a limit set to what one costs.
func (w *osWorker) Usage() usage {
	if w.group != nil {
		u := usage{Procs: w.group.Procs()}
		if mem, ok := w.group.MemoryCurrent(); ok {
			u.Memory = mem
		} else if w.forked {
			u.Memory = procinfo.Private(w.group.Pids())
		} else {
			u.Memory = procinfo.RSS(w.group.Pids())
		}
		return u
	}
	if w.forked {
		private, procs := procinfo.GroupPrivate(w.Pid)
		return usage{Memory: private, Procs: procs}
	}
	rss, procs := procinfo.Group(w.Pid)
	return usage{Memory: rss, Procs: procs}
}

// groupEmptyWait bounds the wait for a killed worker's cgroup to empty
// before it is removed.
const groupEmptyWait = 5 * time.Second

func (w *osWorker) Release() {
	w.Process.Release()
	if w.group != nil {
		w.group.WaitEmpty(groupEmptyWait)
		w.group.Remove()
	}
}

func (*osProcesses) UnlistenInThread(group []unlisten.Target) (int, []error, error) {
	return unlisten.RemoveInThread(group)
}

func (*osProcesses) StartUnlisten(group []unlisten.Target) (int, error) {
	return unlisten.Start("/proc/self/exe", group)
}

// upgradePipeEnv names the fd the new master writes "ready PID VERSION" to.
const upgradePipeEnv = "BATON_UPGRADE_PIPE"

func (o *osProcesses) StartPreflight(path string, args []string, dir string, stateVersion int) (int, <-chan string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, nil, err
	}
	defer w.Close()
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		r.Close()
		return 0, nil, err
	}
	defer devNull.Close()
	argv := append([]string{"baton", ReexecCheckArg, strconv.Itoa(stateVersion)}, args[1:]...)
	pid, err := syscall.ForkExec(path, argv, &syscall.ProcAttr{Dir: dir, Env: os.Environ(),
		Files: []uintptr{devNull.Fd(), w.Fd(), w.Fd()}, Sys: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}})
	if err != nil {
		r.Close()
		return 0, nil, fmt.Errorf("cannot start the new binary %s: %w", path, err)
	}
	out := make(chan string, 1)
	go func() {
		defer r.Close()
		data, _ := io.ReadAll(io.LimitReader(r, 4096))
		out <- strings.TrimSpace(string(data))
	}()
	return pid, out, nil
}

func (*osProcesses) Exec(path string, args, env []string) error {
	return syscall.Exec(path, args, env)
}

func (o *osProcesses) Adopt(rec reexecWorker) (process, error) {
	w := &osWorker{id: procinfo.Identity{MasterPid: os.Getpid(), NotifySocket: rec.NotifySocket}}
	if rec.Cgroup != "" {
		if o.tree == nil {
			return nil, fmt.Errorf("it is in cgroup %s, and this image has no cgroup tree", rec.Cgroup)
		}
		g, err := o.tree.OpenGroup(rec.Cgroup)
		if err != nil {
			return nil, err
		}
		w.group = g
	}
	w.Process = proc.Adopt(rec.Pid, rec.Started, rec.StderrFD, os.Stderr)
	return w, nil
}

func (o *osProcesses) StartMaster(spec masterSpec) (int, <-chan string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, nil, fmt.Errorf("upgrade: %w", err)
	}
	defer w.Close()
	files := []uintptr{0, 1, 2}
	for _, fd := range spec.Listeners {
		files = append(files, uintptr(fd))
	}
	env := append(spec.Env, upgradePipeEnv+"="+strconv.Itoa(len(files)))
	files = append(files, w.Fd())
	pidfd := -1
	pid, err := syscall.ForkExec(spec.Path, spec.Args, &syscall.ProcAttr{Dir: spec.Dir, Env: env, Files: files,
		Sys: &syscall.SysProcAttr{PidFD: &pidfd}})
	if err != nil {
		r.Close()
		return 0, nil, fmt.Errorf("upgrade: cannot start %s: %w", spec.Path, err)
	}
	if pidfd >= 0 {
		if o.masters == nil {
			o.masters = map[int]int{}
		}
		o.masters[pid] = pidfd
	}
	ready := make(chan string, 1)
	go func() {
		defer r.Close()
		defer close(ready)
		if line, err := bufio.NewReader(r).ReadString('\n'); err == nil {
			ready <- line
		}
	}()
	return pid, ready, nil
}

// Kill signals a new master through the pidfd opened when it was
// started; a process it did not start, or one reaped since, is never
// signalled.
func (o *osProcesses) Kill(pid int, sig syscall.Signal) error {
	fd, ok := o.masters[pid]
	if !ok {
		return unix.ESRCH
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}

// Reap reaps, and lets go of the pidfds of the new masters reaped.
func (o *osProcesses) Reap() []proc.Exit {
	exits := proc.Reap()
	for _, e := range exits {
		if fd, ok := o.masters[e.Pid]; ok {
			unix.Close(fd)
			delete(o.masters, e.Pid)
		}
	}
	return exits
}

func (*osProcesses) SetGroupNice(pgid, nice int) error {
	return unix.Setpriority(unix.PRIO_PGRP, pgid, nice)
}

// procInspector reads /proc.
type procInspector struct{ probe *readiness.Probe }

func (i procInspector) Waiting(pid int) bool { return i.probe.Waiting(pid) }

func (i procInspector) Registrations(pid int) []readiness.Registration {
	return i.probe.Registrations(pid)
}

func (i procInspector) ForeignListeners(pids []int) map[int][]string {
	return i.probe.ForeignListeners(pids)
}

// StartTemplate, AdoptForked and Close: see world_template.go.
