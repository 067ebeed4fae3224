// Package master is baton's only policy: it owns the listeners, the
// generations of workers and their slots, and turns signals, child exits,
// readiness messages and timers into actions.
//
// All state belongs to the goroutine running Run, which handles one event at
// a time; timers and helper goroutines (notify sockets, readiness probes)
// hand it closures through m.events instead of touching state, so there are
// no locks to get wrong.
package master

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/baton-pm/baton/internal/listener"
	"github.com/baton-pm/baton/internal/logging"
	"github.com/baton-pm/baton/internal/pidfile"
	"github.com/baton-pm/baton/internal/proc"
	"github.com/baton-pm/baton/internal/readiness"
	"github.com/baton-pm/baton/internal/sdnotify"
)

// Options is everything the master needs to run one generation; cmd/baton
// builds it from the configuration, at start and again on every reload.
type Options struct {
	Listeners   []listener.Spec
	Workers     int
	Command     []string // argv of the worker command
	CommandPath string   // Command[0] resolved to an executable
	Dir         string
	Env         map[string]string
	// ListenEnv sets LISTEN_FDS and LISTEN_FDNAMES (and so, via the shim,
	// LISTEN_PID); the fds themselves are passed either way.
	ListenEnv       bool
	StopSignal      syscall.Signal
	GracefulTimeout time.Duration
	// WorkerTimeout (timeout): a worker that sent WATCHDOG=1 must keep
	// sending it this often; 0 turns the worker watchdog off.
	WorkerTimeout time.Duration
	Ready         ReadyMode
	BootTimeout   time.Duration
	Strategy      Strategy
	MaxSurge      int // rolling: at most Workers+MaxSurge processes alive
	// DrainUnlisten makes a worker that is being replaced stop accepting
	// (see package unlisten) before it gets its stop signal.
	DrainUnlisten bool
	// BootNice boots, and drains replaced, workers at a lower CPU
	// priority while others serve.
	BootNice bool
	// MaxWorkerMemory (bytes of RSS of a worker's process group) and
	// MaxWorkerAge (plus up to MaxWorkerAgeJitter) replace a worker; 0 is
	// no limit.
	MaxWorkerMemory    uint64
	MaxWorkerAge       time.Duration
	MaxWorkerAgeJitter time.Duration
	// Watch (dev mode) reloads when files under these paths change, but
	// for names matching WatchIgnore.
	Watch, WatchIgnore []string
	// RunAs, if set, is the user and group workers run as.
	RunAs *syscall.Credential
	// Subreaper makes baton reap orphaned descendants; always on as PID 1.
	Subreaper  bool
	PidFile    string
	ConfigFile string // "" when there is none
	// ControlPath is the control socket; ControlRequired makes a failure
	// to open it fatal (it was asked for), else it is logged and skipped.
	ControlPath     string
	ControlRequired bool
	MetricsAddr     string // "" for no HTTP endpoint
	// Executable, Args and StartDir start a new master on upgrade: the
	// binary path and arguments baton was started with, and its directory.
	Executable string
	Args       []string
	StartDir   string
	Handover   string // upgrade_handover: "auto" or "manual"
	Version    string
}

// ReadyMode says how baton learns that a worker accepts connections.
type ReadyMode struct {
	Kind  ReadyKind
	Delay time.Duration // for ReadyDelay
}

// ReadyKind is one of the readiness modes.
type ReadyKind string

// The readiness modes.
const (
	ReadyAuto   ReadyKind = "auto"   // seen waiting on a listener in /proc
	ReadyNotify ReadyKind = "notify" // READY=1 on its NOTIFY_SOCKET
	ReadyDelay  ReadyKind = "delay"  // a fixed time after start
)

// Strategy is how a reload replaces the workers.
type Strategy string

// The reload strategies.
const (
	Surge   Strategy = "surge"   // start the whole new generation at once
	Rolling Strategy = "rolling" // at most MaxSurge extra processes at a time
)

// Observer is told of events that metrics count; nil for none.
type Observer interface {
	ReloadFinished(ok bool, d time.Duration)
	ReloadRejected() // a reload whose configuration was invalid
	WorkerRestarted(reason string)
	WorkerBooted(d time.Duration)
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
	opts   Options // the options of the current generation
	load   Loader
	log    *slog.Logger
	logOut *logging.Output

	listeners      []*listener.Listener
	listenerInodes []uint64 // socket inode of each listener
	probe          *readiness.Probe

	current *generation
	reload  *reload // the reload in progress, if any
	queued  bool    // a HUP arrived during a reload: reload again after it
	// queuedWaiters wait for the queued reload.
	queuedWaiters []*reloadWaiter
	// lastReload is how the last reload ended, nil before the first.
	lastReload *ReloadResult
	lastGen    int
	workers    map[int]*worker // every live worker process, of any generation, by pid
	// helpers are short-lived baton helper processes (unlisten), by pid,
	// with what to do when each exits.
	helpers map[int]func(proc.Exit)

	metrics Observer
	// systemd is told how the service is (Type=notify); systemdReady
	// once READY=1 was sent, systemdFailed once a send failed.
	systemd sdnotify.Systemd
	// upgrade is the binary upgrade in progress (old master's side);
	// handedOver once a new master took over; upgradePipe is the new
	// master's line back to the old one.
	upgrade     *upgrade
	handedOver  bool
	upgradePipe *os.File
	// endpointClosers close the control socket and metrics endpoint.
	endpointClosers []func()
	systemdReady    bool
	systemdFailed   bool
	// niceBoots: workers boot at a lower CPU priority while others serve;
	// ownNice is baton's own nice value, which they get back when ready.
	niceBoots bool
	ownNice   int
	pid       int
	started   time.Time

	shutdown shutdownMode
	events   chan func()
	quit     chan struct{}
}

// New makes a master; nothing is opened until Run. load is called on HUP.
func New(opts Options, load Loader, log *slog.Logger, logOut *logging.Output) *Master {
	return &Master{
		opts:    opts,
		load:    load,
		log:     log,
		logOut:  logOut,
		workers: map[int]*worker{},
		pid:     os.Getpid(),
		helpers: map[int]func(proc.Exit){},
		events:  make(chan func(), 64),
		quit:    make(chan struct{}),
	}
}

// Run opens the listeners, writes the pidfile, starts the workers and
// supervises them until a shutdown signal has been handled. It returns nil
// after a clean shutdown, and a *StartError when the start itself failed.
func (m *Master) Run() error {
	// Never unlocked, on purpose: workers are forked from this thread, and
	// their Pdeathsig fires when it exits.
	runtime.LockOSThread()
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, handledSignals...)
	defer signal.Stop(sigs)
	defer close(m.quit)

	m.becomeSubreaper()
	m.upgradePipe = takeUpgradePipe()
	if err := m.open(); err != nil {
		return &StartError{Err: err}
	}
	m.started = time.Now()
	m.initBootPriority()
	err := m.openEndpoints()
	if err == nil {
		err = m.startWatching()
	}
	if err != nil {
		m.closeEndpointsNow()
		m.cleanup()
		return &StartError{Err: err}
	}
	// Deferred calls run last first: the endpoints close after cleanup.
	defer m.closeEndpointsNow()
	defer m.cleanup()

	m.log.Info("master started", "pid", os.Getpid(), "version", m.opts.Version,
		"workers", m.opts.Workers, "command", strings.Join(m.opts.Command, " "),
		"ready", m.opts.Ready.String())
	m.current = m.newGeneration(m.opts)
	m.current.fill(m)
	m.startWatchdog()
	m.startLimits()
	for !m.finished() {
		select {
		case sig := <-sigs:
			m.handleSignal(sig.(syscall.Signal))
		case f := <-m.events:
			f()
		}
	}
	m.log.Info("shutdown complete")
	return nil
}

func (r ReadyMode) String() string {
	if r.Kind == ReadyDelay {
		return "delay:" + r.Delay.String()
	}
	return string(r.Kind)
}

var handledSignals = []os.Signal{
	syscall.SIGCHLD, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT,
	syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH,
}

// open checks the pidfile, binds every listener and then writes the pidfile,
// undoing what it did if a later step fails.
func (m *Master) open() error {
	if m.opts.PidFile != "" {
		if err := pidfile.Check(m.opts.PidFile); err != nil {
			return err
		}
	}
	ls, upgraded, err := listener.FromHandover()
	if !upgraded {
		ls, err = listener.Open(m.opts.Listeners)
	}
	if err != nil {
		return err
	}
	inodes, err := socketInodes(ls)
	if err != nil {
		listener.CloseAll(ls)
		return err
	}
	if m.opts.PidFile != "" {
		if err := pidfile.Write(m.opts.PidFile); err != nil {
			listener.CloseAll(ls)
			return err
		}
	}
	m.listeners, m.listenerInodes, m.probe = ls, inodes, readiness.NewProbe(inodes)
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

// cleanup runs however Run ends: no worker outlives the master, and the
// pidfile and unix socket files go away.
func (m *Master) cleanup() {
	for _, w := range m.workers {
		_ = w.proc.SignalGroup(syscall.SIGKILL)
		w.closeNotify()
	}
	if m.handedOver {
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

func (m *Master) finished() bool {
	return m.shutdown != running && len(m.workers) == 0
}

// after runs f on the master's goroutine once d has passed.
func (m *Master) after(d time.Duration, f func()) *time.Timer {
	return time.AfterFunc(d, func() { m.post(f) })
}

// workerAfter is after for a timer about w (its boot timeout, its kill
// after the graceful timeout, its age, its watchdog): the timer is
// stopped when w exits. A pending timer's closure holds w, and through w
// its whole generation; left running, reloads back to back would keep
// every old generation in memory until its timers fired.
// A timer re-armed under the same name replaces the one that fired.
func (m *Master) workerAfter(w *worker, name string, d time.Duration, f func()) {
	if w.timers == nil {
		w.timers = map[string]*time.Timer{}
	}
	w.timers[name] = m.after(d, f)
}

// post hands f to the master's goroutine; it is dropped once Run returned.
func (m *Master) post(f func()) {
	select {
	case m.events <- f:
	case <-m.quit:
	}
}

func (m *Master) handleSignal(sig syscall.Signal) {
	if sig != syscall.SIGCHLD {
		m.log.Debug("signal received", "signal", proc.SignalName(sig))
	}
	switch sig {
	case syscall.SIGCHLD:
		for _, e := range proc.Reap() {
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
