// Package master is baton's only policy: it owns the listeners, the
// generations of workers and their slots, and turns signals, child exits,
// readiness messages and timers into actions.
//
// All state belongs to the goroutine running Run, which handles one event at
// a time; timers and helper goroutines (notify sockets, readiness probes,
// /proc readings) hand it closures through m.events instead of touching
// state, so there are no locks to get wrong. What the master does to the
// system goes through its world (world.go), which the unit tests fake.
package master

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-pm/baton/internal/cgroup"
	"github.com/baton-pm/baton/internal/listener"
	"github.com/baton-pm/baton/internal/logging"
	"github.com/baton-pm/baton/internal/metrics"
	"github.com/baton-pm/baton/internal/pidfile"
	"github.com/baton-pm/baton/internal/proc"
	"github.com/baton-pm/baton/internal/readiness"
)

// Observer is told of events that metrics count; nil for none.
type Observer interface {
	ReloadFinished(ok bool, d time.Duration)
	ReloadRejected() // a reload whose configuration was invalid
	WorkerRestarted(reason string)
	WorkerBooted(d time.Duration)
	NotifyRejected(n int) // notify messages from outside the worker's processes
}

// Loader re-reads the configuration for a reload.
type Loader func() (Options, error)

// StartError is a failure to start that comes from the operator's input
// (port in use, pidfile held, ...); the CLI exits 2 for it.
type StartError struct{ Err error }

func (e *StartError) Error() string { return e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

// Master supervises the workers. Create it with New, then call Run.
type Master struct {
	opts    MasterOptions     // in force; each generation has its own GenerationOptions
	initial GenerationOptions // the first generation's
	load    Loader
	log     *slog.Logger
	logOut  *logging.Output
	world   world

	listeners      []*listener.Listener
	listenerInodes []uint64 // socket inode of each listener
	// listenersDown are the listeners a worker shut down for good, by
	// name, with what is wrong; listenerWatch re-arms a listener the
	// moment it is shut down; recentlyStopped are workers that exited
	// after their stop signal, with when (health.go).
	listenersDown   map[string]string
	listenerWatch   io.Closer
	recentlyStopped map[int]time.Time

	current *generation
	// servedOnce: a generation had every slot ready once; until then the
	// master is starting (state.go).
	servedOnce bool
	reload     *reload // the reload in progress, if any
	// loadingConfig: a reload's configuration is being read (off the
	// loop); the reload starts when it is.
	loadingConfig bool
	queued        bool // a HUP arrived during a reload: reload again after it
	// queuedWaiters wait for the queued reload.
	queuedWaiters []*reloadWaiter
	// lastReload is how the last reload ended, nil before the first.
	lastReload *ReloadResult
	lastGen    int
	workers    map[int]*worker // every live worker process, of any generation, by pid
	// helpers are short-lived baton helper processes (unlisten), by pid,
	// with what to do when each exits.
	helpers map[int]func(proc.Exit)
	// unlistenByHelper once a thread of the master's own could not remove
	// registrations (a sandbox refused unshare): helper processes do it.
	unlistenByHelper bool

	metrics Observer
	// systemdReady once READY=1 was sent, systemdFailed once a send
	// failed (it is logged once).
	systemdReady  bool
	systemdFailed bool
	// adopted is the state an in-place upgrade's previous image left, if
	// this image was started by one; inPlaceUpgrade is that upgrade until
	// its reload ends (reexec.go).
	adopted        *reexecState
	inPlaceUpgrade *upgrade
	// upgrade is the binary upgrade in progress (old master's side);
	// steppedDown once a new master took the service over; upgradePipe is
	// this master's line back to the old one, when an upgrade started it.
	upgrade     *upgrade
	steppedDown bool
	upgradePipe *os.File
	// endpoints are the control socket and the metrics endpoint; watcher
	// is dev mode's file watcher.
	endpoints endpoints
	watcher   io.Closer
	// outputFiles are the regular files baton's stdout and stderr are
	// redirected to, read once at start (devmode.go).
	outputFiles []string
	// closing counts endpoints being closed off the loop; Run waits.
	closing sync.WaitGroup
	// registry holds the Prometheus counters once an endpoint serves them.
	registry *metrics.Metrics
	// containment says how workers' processes are held (containment.go);
	// cgroups is the cgroup tree, if any.
	containment string
	cgroups     *cgroup.Tree
	// treeKills counts exited workers whose leftovers are being killed.
	treeKills int
	// memoryChecks: the max_worker_memory loop is armed (limits.go).
	memoryChecks bool
	// foreignScanning: a scan for foreign listeners is under way
	// (foreign.go).
	foreignScanning bool
	// niceBoots: workers boot at a lower CPU priority while others serve;
	// ownNice is baton's own nice value, which they get back when ready.
	niceBoots bool
	ownNice   int
	pid       int
	started   time.Time

	// templates are the preload templates, by pid; strays are exits of
	// children reaped before a template named them (template.go).
	templates map[int]*template
	strays    map[int]proc.Exit
	// deafWaits are reload answers waiting for the old workers to stop
	// accepting (drain.go).
	deafWaits []*deafWait
	// fatal ends Run with a start error once the loop has shut down: the
	// first generation's template could not import the app.
	fatal *StartError

	shutdown shutdownMode
	// lameDuckEnds is when the lame-duck delay ends (shutdown.go).
	lameDuckEnds time.Time
	events       chan func()
	quit         chan struct{}
}

// New makes a master; nothing is opened until Run. load is called on HUP.
func New(opts Options, load Loader, log *slog.Logger, logOut *logging.Output) *Master {
	return newMaster(opts, load, log, logOut, osWorld())
}

func newMaster(opts Options, load Loader, log *slog.Logger, logOut *logging.Output, w world) *Master {
	return &Master{
		opts:            opts.Master,
		initial:         opts.Generation,
		load:            load,
		log:             log,
		logOut:          logOut,
		world:           w,
		workers:         map[int]*worker{},
		pid:             os.Getpid(),
		listenersDown:   map[string]string{},
		recentlyStopped: map[int]time.Time{},
		helpers:         map[int]func(proc.Exit){},
		templates:       map[int]*template{},
		strays:          map[int]proc.Exit{},
		events:          make(chan func(), 64),
		quit:            make(chan struct{}),
	}
}

// Run opens the listeners, writes the pidfile, starts the workers and
// supervises them until a shutdown signal has been handled. It returns nil
// after a clean shutdown, and a *StartError when the start itself failed.
func (m *Master) Run() error {
	// Never unlocked, on purpose: workers are forked from this thread, and
	// their Pdeathsig fires when it exits.
	runtime.LockOSThread()
	tuneGC()
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, handledSignals...)
	defer signal.Stop(sigs)

	m.setSubreaper(m.opts.Subreaper)
	m.upgradePipe = takeUpgradePipe()
	adopted, err := takeReexecState()
	if err != nil {
		close(m.quit)
		return &StartError{Err: err}
	}
	m.adopted = adopted
	if err := m.open(); err != nil {
		close(m.quit)
		return &StartError{Err: err}
	}
	err = m.openEndpoints()
	if err == nil {
		m.outputFiles = ownOutputFiles()
		err = m.startWatching()
	}
	if err != nil {
		m.endpoints.closeAll()
		m.cleanup()
		close(m.quit)
		return &StartError{Err: err}
	}
	m.watchListeners()
	// The endpoints close last: `baton stop` waits for the control socket
	// to close, and a load balancer polls /readyz while the workers drain.
	defer m.closing.Wait()
	defer func() { m.endpoints.closeAll() }()
	m.supervise(sigs)
	if m.fatal != nil {
		return m.fatal
	}
	return nil
}

// supervise starts the first generation and runs the master's loop until
// the shutdown has ended; then no worker is left and the files are gone.
func (m *Master) supervise(sigs <-chan os.Signal) {
	defer close(m.quit)
	defer m.cleanup()
	m.started = time.Now()
	m.initBootPriority()
	g := m.initial
	m.log.Info("master started", "pid", m.pid, "version", m.opts.Version,
		"workers", g.Workers, "command", strings.Join(g.Command, " "), "ready", g.Ready.String())
	if m.adopted != nil {
		m.adoptWorkers(m.adopted)
	} else {
		m.current = m.newGeneration(g)
		m.current.fill(m)
	}
	m.startWatchdog()
	m.armMemoryChecks()
	m.startListenerChecks()
	m.startForeignScans()
	for !m.finished() {
		select {
		case sig := <-sigs:
			m.handleSignal(sig.(syscall.Signal))
		case f := <-m.events:
			f()
		}
	}
	m.log.Info("shutdown complete")
}

var handledSignals = []os.Signal{
	syscall.SIGCHLD, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT,
	syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH,
}

// open checks the pidfile, binds every listener and then writes the pidfile,
// undoing what it did if a later step fails.
func (m *Master) open() error {
	// After an in-place upgrade the pidfile names this very process.
	if m.opts.PidFile != "" && m.adopted == nil {
		if err := pidfile.Check(m.opts.PidFile); err != nil {
			return err
		}
	}
	// Before binding: a dead predecessor's workers may hold the ports.
	if err := m.setupContainment(); err != nil {
		return err
	}
	ls, upgraded, err := listener.FromHandover()
	if !upgraded {
		ls, err = listener.Open(m.opts.Listeners)
	}
	if err != nil {
		if m.cgroups != nil {
			m.cgroups.Close()
		}
		return err
	}
	inodes, err := socketInodes(ls)
	if err != nil {
		listener.CloseAll(ls)
		return err
	}
	if m.opts.PidFile != "" && m.adopted == nil {
		if err := pidfile.Write(m.opts.PidFile); err != nil {
			listener.CloseAll(ls)
			return err
		}
	}
	m.listeners, m.listenerInodes = ls, inodes
	probe := readiness.NewProbe(inodes)
	probe.OnSockDiagFailure(func(err error) {
		m.log.Warn("cannot read the listening sockets through sock_diag; foreign-listener scans read /proc/net/tcp instead "+
			"(the same answer, slower under many connections)", "err", err)
	})
	m.world.inspect = procInspector{probe}
	for _, l := range ls {
		m.log.Info("listening", "name", l.Name, "addr", l.Addr)
	}
	return nil
}

// socketInodes identifies the listeners in other processes' /proc entries.
func socketInodes(ls []*listener.Listener) ([]uint64, error) {
	inodes := make([]uint64, len(ls))
	for i, l := range ls {
		ino, err := readiness.SocketInode(l.FD())
		if err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.Name, err)
		}
		inodes[i] = ino
	}
	return inodes, nil
}

// cleanup runs however the loop ends: no worker outlives the master, and
// the pidfile and unix socket files go away.
func (m *Master) cleanup() {
	for _, w := range m.workers {
		w.proc.KillTree(m.childrenBut(w.pid), false)
		w.closeNotify()
	}
	for _, t := range m.templates {
		t.proc.KillTree(m.childrenBut(t.pid), false)
		t.conn.Close()
	}
	m.world.notify.Close()
	m.world.procs.Close()
	if m.watcher != nil {
		m.watcher.Close()
	}
	// Before the listeners close, as listener.Watch asks.
	if m.listenerWatch != nil {
		m.listenerWatch.Close()
	}
	if m.cgroups != nil {
		m.cgroups.Close()
	}
	if m.steppedDown {
		// The new master serves these sockets and owns their files.
		for _, l := range m.listeners {
			l.Release()
		}
		if err := pidfile.RemoveIfOurs(m.oldbin()); err != nil {
			m.log.Warn("cannot remove the old pidfile", "path", m.oldbin(), "err", err)
		}
	} else {
		listener.CloseAll(m.listeners)
	}
	if m.opts.PidFile != "" {
		if err := pidfile.RemoveIfOurs(m.opts.PidFile); err != nil {
			m.log.Warn("cannot remove pidfile", "path", m.opts.PidFile, "err", err)
		}
	}
}

// finished: the master may exit once its workers were told to stop, with
// no worker left and nothing a worker left behind still being killed. A
// lame duck waits for its delay to end even without workers.
func (m *Master) finished() bool {
	return m.shutdown >= graceful && len(m.workers) == 0 && len(m.templates) == 0 && m.treeKills == 0
}

// after runs f on the master's goroutine once d has passed.
func (m *Master) after(d time.Duration, f func()) *time.Timer {
	return time.AfterFunc(d, func() { m.post(f) })
}

// post hands f to the master's goroutine; it is dropped once the loop
// has ended.
func (m *Master) post(f func()) {
	select {
	case m.events <- f:
	case <-m.quit:
	}
}

// offLoop runs read on a goroutine of its own (it may block: /proc walks,
// closing sockets) and then hands its result to then on the master's
// goroutine.
func offLoop[T any](m *Master, read func() T, then func(T)) {
	go func() {
		v := read()
		m.post(func() { then(v) })
	}()
}

func (m *Master) handleSignal(sig syscall.Signal) {
	if sig != syscall.SIGCHLD {
		m.log.Debug("signal received", "signal", proc.SignalName(sig))
	}
	switch sig {
	case syscall.SIGCHLD:
		for _, e := range m.world.procs.Reap() {
			m.onExit(e)
		}
	case syscall.SIGHUP:
		m.requestReload(nil)
	case syscall.SIGTERM:
		m.beginShutdown(graceful, sig)
	case syscall.SIGINT, syscall.SIGQUIT:
		m.beginShutdown(quick, sig)
	case syscall.SIGTTIN:
		m.scale(+1)
	case syscall.SIGTTOU:
		m.scale(-1)
	case syscall.SIGUSR1:
		m.reopenLog()
	case syscall.SIGUSR2:
		m.requestUpgrade(nil)
	case syscall.SIGWINCH:
		m.stopAllWorkers()
	}
}

func (m *Master) reopenLog() {
	if m.logOut == nil {
		return
	}
	if err := m.logOut.Reopen(); err != nil {
		m.log.Error("cannot reopen the log file; still writing to the old one", "err", err)
		return
	}
	m.log.Info("log file reopened")
}

// onExit handles one reaped child: a worker, a helper or a new master.
func (m *Master) onExit(e proc.Exit) {
	if m.onNewMasterExit(e) {
		return
	}
	if done, ok := m.helpers[e.Pid]; ok {
		delete(m.helpers, e.Pid)
		done(e)
		return
	}
	if w, ok := m.workers[e.Pid]; ok {
		m.onWorkerExit(w, e)
		m.retireTemplates()
		m.answerDeafWaits()
		return
	}
	if t, ok := m.templates[e.Pid]; ok {
		m.onTemplateExit(t, e)
		return
	}
	m.rememberStray(e)
	m.log.Debug("reaped a process that is not a worker", "pid", e.Pid, "status", proc.Describe(e.Status))
}
