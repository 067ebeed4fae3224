package master

// The test bed runs the master's real loop (supervise) against a fake
// world inside a testing/synctest bubble: no process is started, no /proc
// is read, and timers run on the bubble's fake clock, so a rule about a
// 60-second boot timeout is checked in microseconds. A test drives the
// master the way the system would, with signals, worker exits, notify
// messages and the passing of time, and reads the outcome through the
// master's own status and reload results, as `baton status` would.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/baton-pm/baton/internal/control"
	"github.com/baton-pm/baton/internal/listener"
	"github.com/baton-pm/baton/internal/proc"
	"github.com/baton-pm/baton/internal/readiness"
	"github.com/baton-pm/baton/internal/sdnotify"
	"github.com/baton-pm/baton/internal/unlisten"
	"golang.org/x/sys/unix"
)

// fakeWorld is the master's world, recorded and steered by a test.
type fakeWorld struct {
	mu      sync.Mutex
	sigs    chan os.Signal // the master's signals: exits send SIGCHLD
	nextPid int
	procs   map[int]*fakeProc // every process ever started, by pid
	unreap  []proc.Exit       // exited, not reaped yet
	notify  map[string]*fakeNotify
	// inspector answers, by pid.
	waiting map[int]bool
	rss     map[int]uint64
	regs    map[int][]readiness.Registration
	foreign map[int][]string // what each worker listens on of its own
	// foreignScans counts ForeignListeners calls.
	foreignScans int
	rssRead      int // Usage calls
	nice         map[int]int
	systemd      []string // every assignment sent, in order
	// startErr, if set, fails the next StartWorker.
	startErr error
	// kills are the signals sent with Kill (to new masters), in order.
	kills []kill
	// execs are the environments of the master's attempts to execute a
	// new image; execErr is what each returns.
	execs   [][]string
	execErr error
	// templates are the preload templates' control sockets, by pid.
	templates map[int]*fakeTemplate
	// inThread are the groups of registrations removed from a thread of
	// the master's own, in order; noPrivateTable makes that refused, as a
	// sandbox that filters unshare does.
	inThread       [][]unlisten.Target
	noPrivateTable bool
}

type kill struct {
	pid int
	sig syscall.Signal
}

// fakeProc is one started process.
type fakeProc struct {
	w       *fakeWorld
	pid     int
	kind    string // "worker", "unlisten" or "master"
	spec    proc.Spec
	started time.Time
	// stubborn ignores every signal but SIGKILL.
	stubborn bool
	signals  []syscall.Signal
	exited   bool
	stderr   []string
	closed   chan struct{}     // stderr closed
	ready    chan string       // a new master's report line
	group    []unlisten.Target // an unlisten helper's registrations
	// treeKills counts KillTree calls; released once Release was called.
	treeKills  int
	released   bool
	keptOnExec bool // its stderr pipe survives an exec
}

func newFakeWorld() *fakeWorld {
	return &fakeWorld{
		sigs:    make(chan os.Signal, 256),
		nextPid: 1000,
		procs:   map[int]*fakeProc{},
		notify:  map[string]*fakeNotify{},
		waiting: map[int]bool{},
		rss:     map[int]uint64{},
		regs:    map[int][]readiness.Registration{},
		foreign: map[int][]string{},
		nice:    map[int]int{},
	}
}

func (f *fakeWorld) world() world {
	return world{procs: f, inspect: f, notify: fakeNotifier{f}, systemd: f}
}

func (f *fakeWorld) newProc(kind string) *fakeProc {
	f.nextPid++
	p := &fakeProc{w: f, pid: f.nextPid, kind: kind, started: time.Now(), closed: make(chan struct{})}
	f.procs[p.pid] = p
	return p
}

func (f *fakeWorld) StartWorker(spec proc.Spec) (int, process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.startErr; err != nil {
		f.startErr = nil
		return 0, nil, err
	}
	p := f.newProc("worker")
	p.spec = spec
	return p.pid, p, nil
}

// UnlistenInThread removes every registration of group, unless
// noPrivateTable.
func (f *fakeWorld) UnlistenInThread(group []unlisten.Target) (int, []error, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.noPrivateTable {
		return 0, nil, fmt.Errorf("%w: operation not permitted", unlisten.ErrNoPrivateTable)
	}
	f.inThread = append(f.inThread, slices.Clone(group))
	return 0, nil, nil
}

// StartUnlisten starts a helper that does its work and exits 0 at once.
func (f *fakeWorld) StartUnlisten(group []unlisten.Target) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.newProc("unlisten")
	p.group = slices.Clone(group)
	p.exitLocked(0)
	return p.pid, nil
}

func (f *fakeWorld) StartMaster(spec masterSpec) (int, <-chan string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.newProc("master")
	p.ready = make(chan string, 1)
	return p.pid, p.ready, nil
}

// StartPreflight starts a check of the new binary; the test ends it with
// preflightAnswer.
func (f *fakeWorld) StartPreflight(path string, args []string, dir string, stateVersion int) (int, <-chan string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := f.newProc("preflight")
	p.ready = make(chan string, 1)
	return p.pid, p.ready, nil
}

// Exec fails as the test said: the master's image is never replaced here.
func (f *fakeWorld) Exec(path string, args, env []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.execs = append(f.execs, env)
	return f.execErr
}

func (f *fakeWorld) Adopt(rec reexecWorker) (process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := &fakeProc{w: f, pid: rec.Pid, kind: "worker", started: rec.Started, closed: make(chan struct{})}
	f.procs[p.pid] = p
	return p, nil
}

func (f *fakeWorld) Kill(pid int, sig syscall.Signal) error {
	f.mu.Lock()
	f.kills = append(f.kills, kill{pid, sig})
	p := f.procs[pid]
	f.mu.Unlock()
	if p == nil {
		return unix.ESRCH
	}
	return p.SignalGroup(sig)
}

func (f *fakeWorld) Reap() []proc.Exit {
	f.mu.Lock()
	defer f.mu.Unlock()
	exits := f.unreap
	f.unreap = nil
	return exits
}

func (f *fakeWorld) SetGroupNice(pgid, nice int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nice[pgid] = nice
	return nil
}

func (f *fakeWorld) Waiting(pid int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.waiting[pid]
}

func (f *fakeWorld) Registrations(pid int) []readiness.Registration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.regs[pid]
}

func (f *fakeWorld) ForeignListeners(pids []int) map[int][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.foreignScans++
	found := map[int][]string{}
	for _, pid := range pids {
		if addrs := f.foreign[pid]; len(addrs) > 0 {
			found[pid] = slices.Clone(addrs)
		}
	}
	return found
}

func (f *fakeWorld) Send(assignments ...string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.systemd = append(f.systemd, assignments...)
	return true, nil
}

func (f *fakeWorld) Reloading(status string) (bool, error) {
	return f.Send("RELOADING=1", "STATUS="+status)
}

func (f *fakeWorld) WatchdogInterval() time.Duration { return 0 }

// SignalGroup records sig; the process exits on SIGKILL, and on any
// other signal unless it is stubborn.
func (p *fakeProc) SignalGroup(sig syscall.Signal) error {
	p.w.mu.Lock()
	defer p.w.mu.Unlock()
	if p.exited {
		return nil
	}
	p.signals = append(p.signals, sig)
	if sig == syscall.SIGKILL || !p.stubborn {
		p.exitLocked(unix.WaitStatus(sig))
	}
	return nil
}

// exitLocked ends p with status ws and tells the master with SIGCHLD.
func (p *fakeProc) exitLocked(ws unix.WaitStatus) {
	p.exited = true
	close(p.closed)
	if p.ready != nil {
		close(p.ready) // as the pipe of a real new master reaches EOF
	}
	p.w.unreap = append(p.w.unreap, proc.Exit{Pid: p.pid, Status: ws})
	select {
	case p.w.sigs <- syscall.SIGCHLD:
	default: // one is pending already
	}
}

// KillTree kills the process, if it still runs, and counts the call.
func (p *fakeProc) KillTree(skip map[int]bool, reaped bool) int {
	p.w.mu.Lock()
	defer p.w.mu.Unlock()
	p.treeKills++
	if p.exited {
		return 0
	}
	p.signals = append(p.signals, syscall.SIGKILL)
	p.exitLocked(unix.WaitStatus(syscall.SIGKILL))
	return 1
}

// KeepStderrOnExec counts the calls; the fd is made up.
func (p *fakeProc) KeepStderrOnExec(keep bool) (int, error) {
	p.w.mu.Lock()
	defer p.w.mu.Unlock()
	p.keptOnExec = keep
	return 100 + p.pid%100, nil
}

func (p *fakeProc) Cgroup() string   { return "" }
func (p *fakeProc) Identity() string { return p.env("NOTIFY_SOCKET") }

// Usage is the memory the test set for the process.
func (p *fakeProc) Usage() usage {
	p.w.mu.Lock()
	defer p.w.mu.Unlock()
	p.w.rssRead++
	return usage{Memory: p.w.rss[p.pid], Procs: 1}
}

func (p *fakeProc) Release() {
	p.w.mu.Lock()
	defer p.w.mu.Unlock()
	p.released = true
}

// StderrLines keeps the first and the last lines as proc.Tail does.
func (p *fakeProc) StderrLines(first, last int) []string {
	p.w.mu.Lock()
	defer p.w.mu.Unlock()
	if len(p.stderr) <= first+last {
		return slices.Clone(p.stderr)
	}
	out := slices.Clone(p.stderr[:first])
	out = append(out, fmt.Sprintf("... %d lines omitted ...", len(p.stderr)-first-last))
	return append(out, p.stderr[len(p.stderr)-last:]...)
}

func (p *fakeProc) StderrClosed() <-chan struct{} { return p.closed }

// Belongs: a worker's only process is itself.
func (p *fakeProc) Belongs(pid int) bool { return pid == p.pid }

// env returns the value of name in p's environment.
func (p *fakeProc) env(name string) string {
	for _, kv := range p.spec.Env {
		if k, v, _ := strings.Cut(kv, "="); k == name {
			return v
		}
	}
	return ""
}

// fakeNotify is a worker's notify socket.
type fakeNotify struct {
	addr   string
	msgs   chan sdnotify.Message
	closed chan struct{}
	once   sync.Once
}

// fakeNotifier opens fake notify sockets.
type fakeNotifier struct{ f *fakeWorld }

func (n fakeNotifier) Open(*sdnotify.Owner) (notifySocket, error) {
	f := n.f
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &fakeNotify{addr: fmt.Sprintf("/run/baton/fake/%d", len(f.notify)), msgs: make(chan sdnotify.Message, 16), closed: make(chan struct{})}
	f.notify[s.addr] = s
	return s, nil
}

func (fakeNotifier) Close() {}

func (n fakeNotifier) Adopt(fd int, path string) (notifySocket, error) {
	f := n.f
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &fakeNotify{addr: path, msgs: make(chan sdnotify.Message, 16), closed: make(chan struct{})}
	f.notify[s.addr] = s
	return s, nil
}

func (n *fakeNotify) KeepOnExec(keep bool) (int, error) { return 50, nil }

func (n *fakeNotify) Addr() string { return n.addr }
func (n *fakeNotify) Close() error { n.once.Do(func() { close(n.closed) }); return nil }
func (n *fakeNotify) isClosed() bool {
	select {
	case <-n.closed:
		return true
	default:
		return false
	}
}
func (n *fakeNotify) Receive(belongs func(pid int) bool, handle, reject func(sdnotify.Message)) {
	for {
		select {
		case msg := <-n.msgs:
			if belongs(int(msg.Pid)) {
				handle(msg)
			} else {
				reject(msg)
			}
		case <-n.closed:
			return
		}
	}
}

// testbed is a master running on a fake world in a synctest bubble.
type testbed struct {
	t     *testing.T
	m     *Master
	w     *fakeWorld
	done  chan struct{}
	mu    sync.Mutex
	next  Options       // what the next reload loads
	lderr error         // or the error it gets
	block chan struct{} // if set, loading waits until it is closed
}

// gen is a generation's options as the tests start from: n workers,
// ready by notify, surge, and timeouts long enough to be noticed.
func gen(n int) GenerationOptions {
	return GenerationOptions{
		Workers: n, Command: []string{"app"}, CommandPath: "/srv/app",
		StopSignal: syscall.SIGTERM, GracefulTimeout: 30 * time.Second,
		BootTimeout: time.Minute, Ready: ReadyMode{Kind: ReadyNotify}, Strategy: Surge, MaxSurge: 1,
	}
}

// inBubble runs f in a synctest bubble with a master started from opts.
// The master is shut down, and must end, when f returns. f gets the
// bubble's own *testing.T: only it may fail the test from there.
func inBubble(t *testing.T, opts Options, f func(t *testing.T, tb *testbed)) {
	t.Helper()
	inBubbleWith(t, opts, nil, f)
}

// inBubbleWith is inBubble with setup run on the master before its loop
// starts (what Run's open would have done: listeners, say).
func inBubbleWith(t *testing.T, opts Options, setup func(m *Master), f func(t *testing.T, tb *testbed)) {
	t.Helper()
	synctest.Test(t, func(t *testing.T) {
		tb := &testbed{t: t, w: newFakeWorld(), done: make(chan struct{}), next: opts}
		if opts.Master.Version == "" {
			opts.Master.Version = "test"
		}
		log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
		tb.m = newMaster(opts, tb.load, log, nil, tb.w.world())
		if setup != nil {
			setup(tb.m)
		}
		go func() {
			defer close(tb.done)
			tb.m.supervise(tb.w.sigs)
		}()
		// Deferred, so that a test that failed still ends the master
		// and the bubble with it.
		defer tb.finish()
		synctest.Wait()
		f(t, tb)
	})
}

// finish shuts the master down and waits for its loop to end.
func (tb *testbed) finish() {
	select {
	case <-tb.done:
		return
	default:
	}
	tb.signal(syscall.SIGQUIT)
	tb.signal(syscall.SIGQUIT) // a second quick request kills what is left
	select {
	case <-tb.done:
	case <-time.After(time.Hour):
		tb.t.Error("the master did not end its loop after two QUITs")
	}
}

func (tb *testbed) load() (Options, error) {
	tb.mu.Lock()
	block := tb.block
	tb.mu.Unlock()
	if block != nil {
		<-block // a configuration file that blocks: a FIFO, a hung mount
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	return tb.next, tb.lderr
}

// setConfig is what the next reload reads.
func (tb *testbed) setConfig(opts Options, err error) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.next, tb.lderr = opts, err
}

// settle lets the master handle everything that has happened.
func (tb *testbed) settle() { synctest.Wait() }

// signal sends the master sig and lets it act.
func (tb *testbed) signal(sig syscall.Signal) {
	tb.w.sigs <- sig
	tb.settle()
}

// wait lets d pass on the bubble's clock, and the master act on it.
func (tb *testbed) wait(d time.Duration) {
	time.Sleep(d)
	tb.settle()
}

// send delivers a notify message from worker pid.
func (tb *testbed) send(pid int, text string) {
	tb.t.Helper()
	p := tb.proc(pid)
	n := tb.w.notify[p.env("NOTIFY_SOCKET")]
	if n == nil {
		tb.t.Fatalf("worker %d has no notify socket", pid)
	}
	n.msgs <- sdnotify.Message{Fields: sdnotify.Parse([]byte(text)), Pid: int32(pid)}
	tb.settle()
}

// ready makes workers send READY=1.
func (tb *testbed) ready(pids ...int) {
	for _, pid := range pids {
		tb.send(pid, "READY=1")
	}
}

// exit ends worker pid by itself with exit code code, after writing
// stderr lines.
func (tb *testbed) exit(pid, code int, stderr ...string) {
	tb.t.Helper()
	p := tb.proc(pid)
	tb.w.mu.Lock()
	if p.exited {
		tb.w.mu.Unlock()
		tb.t.Fatalf("process %d has exited already", pid)
	}
	p.stderr = append(p.stderr, stderr...)
	p.exitLocked(unix.WaitStatus(code << 8))
	tb.w.mu.Unlock()
	tb.settle()
}

func (tb *testbed) proc(pid int) *fakeProc {
	tb.t.Helper()
	tb.w.mu.Lock()
	defer tb.w.mu.Unlock()
	p := tb.w.procs[pid]
	if p == nil {
		tb.t.Fatalf("no process %d was started", pid)
	}
	return p
}

// stubborn makes pid ignore every signal but SIGKILL.
func (tb *testbed) stubborn(pid int) {
	p := tb.proc(pid)
	tb.w.mu.Lock()
	p.stubborn = true
	tb.w.mu.Unlock()
}

// signals are the signals sent to pid so far.
func (tb *testbed) signals(pid int) []syscall.Signal {
	p := tb.proc(pid)
	tb.w.mu.Lock()
	defer tb.w.mu.Unlock()
	return slices.Clone(p.signals)
}

// alive reports whether pid was started and has not exited.
func (tb *testbed) alive(pid int) bool {
	p := tb.proc(pid)
	tb.w.mu.Lock()
	defer tb.w.mu.Unlock()
	return !p.exited
}

// unlistened are the groups of registrations removed so far: from a
// thread of the master's own, or, with noPrivateTable, by helper
// processes, which must then be the only way used.
func (tb *testbed) unlistened() [][]unlisten.Target {
	helpers := tb.started("unlisten")
	tb.w.mu.Lock()
	defer tb.w.mu.Unlock()
	var groups [][]unlisten.Target
	for _, pid := range helpers {
		groups = append(groups, tb.w.procs[pid].group)
	}
	if tb.w.noPrivateTable {
		if len(tb.w.inThread) != 0 {
			tb.t.Fatalf("groups removed in a thread although that was refused: %+v", tb.w.inThread)
		}
		return groups
	}
	if len(groups) != 0 {
		tb.t.Fatalf("%d helper processes started although a thread could do it", len(groups))
	}
	return tb.w.inThread
}

// started lists the pids of every process of kind started so far.
func (tb *testbed) started(kind string) []int {
	tb.w.mu.Lock()
	defer tb.w.mu.Unlock()
	var pids []int
	for pid, p := range tb.w.procs {
		if p.kind == kind {
			pids = append(pids, pid)
		}
	}
	slices.Sort(pids)
	return pids
}

// status is the master's status, as `baton status --json` gets it.
func (tb *testbed) status() control.Status {
	tb.t.Helper()
	st, err := tb.m.Status(context.Background())
	if err != nil {
		tb.t.Fatalf("status: %v", err)
	}
	return st
}

// workers are the pids of generation g's workers in state ("" for any),
// by slot.
func (tb *testbed) workers(g int, state string) []int {
	tb.t.Helper()
	var pids []int
	for _, w := range tb.status().WorkerList {
		if w.Generation == g && (state == "" || w.State == state) {
			pids = append(pids, w.Pid)
		}
	}
	return pids
}

// count is how many live workers of generation g are in state.
func (tb *testbed) count(g int, state string) int { return len(tb.workers(g, state)) }

// reloadAsync asks for a reload the way `baton reload` does and returns
// where its result arrives.
func (tb *testbed) reloadAsync() <-chan control.ReloadResult {
	out := make(chan control.ReloadResult, 1)
	go func() {
		res, err := tb.m.ControlHandler().Reload(context.Background(), nil)
		if err != nil {
			res = control.ReloadResult{Reason: "control error: " + err.Error()}
		}
		out <- res
	}()
	tb.settle()
	return out
}

// result takes a reload's result, which must be there by now.
func (tb *testbed) result(c <-chan control.ReloadResult) control.ReloadResult {
	tb.t.Helper()
	tb.settle()
	select {
	case res := <-c:
		return res
	default:
		tb.t.Fatal("the reload has no result yet")
		return control.ReloadResult{}
	}
}

// noResult checks that a reload is still going.
func (tb *testbed) noResult(c <-chan control.ReloadResult) {
	tb.t.Helper()
	tb.settle()
	select {
	case res := <-c:
		tb.t.Fatalf("the reload ended early: %+v", res)
	default:
	}
}

// serving starts a master with opts and makes its first generation ready.
func serving(t *testing.T, opts Options, f func(t *testing.T, tb *testbed)) {
	inBubble(t, opts, func(t *testing.T, tb *testbed) {
		tb.ready(tb.workers(1, "starting")...)
		if n := tb.count(1, "ready"); n != opts.Generation.Workers {
			t.Fatalf("%d workers ready, want %d", n, opts.Generation.Workers)
		}
		f(t, tb)
	})
}

func options(g GenerationOptions) Options {
	return Options{Generation: g}
}

// listen gives the master a real TCP listener for each inode: the fake
// /proc knows each listener's socket by that inode (in registrations).
// They are closed when the test ends.
func (tb *testbed) listen(inodes ...uint64) []*listener.Listener {
	tb.t.Helper()
	specs := make([]listener.Spec, len(inodes))
	for i := range inodes {
		specs[i] = listener.Spec{Name: fmt.Sprintf("l%d", i), Network: "tcp", Address: "127.0.0.1:0", Backlog: 8}
	}
	ls, err := listener.Open(specs)
	if err != nil {
		tb.t.Fatal(err)
	}
	tb.t.Cleanup(func() { listener.CloseAll(ls) })
	if err := tb.m.call(context.Background(), func() { tb.m.listeners, tb.m.listenerInodes = ls, inodes }); err != nil {
		tb.t.Fatal(err)
	}
	return ls
}
