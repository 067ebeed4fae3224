// Package master is baton's only policy: it owns the listeners, the workers
// and their slots, and turns signals, child exits and timers into actions.
//
// All state belongs to the goroutine running Run, which handles one event at
// a time; timers and other goroutines hand it closures through m.events
// instead of touching state, so there are no locks to get wrong.
package master

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-pm/baton/internal/listener"
	"github.com/baton-pm/baton/internal/logging"
	"github.com/baton-pm/baton/internal/pidfile"
	"github.com/baton-pm/baton/internal/proc"
)

// Options is everything the master needs to run; cmd/baton builds it from
// the configuration.
type Options struct {
	Listeners       []listener.Spec
	Workers         int
	Command         []string // argv of the worker command
	CommandPath     string   // Command[0] resolved to an executable
	Dir             string
	Env             map[string]string
	StopSignal      syscall.Signal
	GracefulTimeout time.Duration
	PidFile         string
	Version         string
}

// StartError is a failure to start that comes from the operator's input
// (port in use, pidfile held, ...); the CLI exits 2 for it.
type StartError struct{ Err error }

func (e *StartError) Error() string { return e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

const (
	// A worker that lived this long before crashing starts its slot's
	// backoff from the beginning again.
	backoffReset = 10 * time.Second
	backoffFirst = 100 * time.Millisecond
	backoffMax   = 30 * time.Second
	// quickTimeout bounds a quick shutdown (INT, QUIT) before SIGKILL.
	quickTimeout = 2 * time.Second
)

// Master supervises one set of workers. Create it with New, then call Run.
type Master struct {
	opts   Options
	log    *slog.Logger
	logOut *logging.Output

	listeners  []*listener.Listener
	generation int
	slots      map[int]*slot   // by slot number, 1..target
	workers    map[int]*worker // live worker processes by pid
	target     int

	shutdown shutdownMode
	events   chan func()
	quit     chan struct{}
}

type shutdownMode int

const (
	running shutdownMode = iota
	graceful
	quick
)

// slot is a numbered place for one worker; a crashed worker is replaced in
// its own slot, so BATON_WORKER_ID stays stable.
type slot struct {
	id       int
	worker   *worker
	failures int  // crashes in a row, for the backoff
	pending  bool // a restart is scheduled
}

type worker struct {
	proc       *proc.Process
	slot       int
	generation int
	retiring   bool // told to stop; its exit is expected
}

// New makes a master; nothing is opened until Run.
func New(opts Options, log *slog.Logger, logOut *logging.Output) *Master {
	return &Master{
		opts:       opts,
		log:        log,
		logOut:     logOut,
		generation: 1,
		slots:      map[int]*slot{},
		workers:    map[int]*worker{},
		target:     opts.Workers,
		events:     make(chan func(), 64),
		quit:       make(chan struct{}),
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

	if err := m.open(); err != nil {
		return &StartError{Err: err}
	}
	defer m.cleanup()

	m.log.Info("master started", "pid", os.Getpid(), "version", m.opts.Version,
		"workers", m.target, "command", strings.Join(m.opts.Command, " "))
	for id := 1; id <= m.target; id++ {
		m.slots[id] = &slot{id: id}
		m.spawn(m.slots[id])
	}
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
	ls, err := listener.Open(m.opts.Listeners)
	if err != nil {
		return err
	}
	if m.opts.PidFile != "" {
		if err := pidfile.Write(m.opts.PidFile); err != nil {
			listener.CloseAll(ls)
			return err
		}
	}
	m.listeners = ls
	for _, l := range ls {
		m.log.Info("listening", "name", l.Name, "addr", l.Addr)
	}
	return nil
}

// cleanup runs however Run ends: no worker outlives the master, and the
// pidfile and unix socket files go away.
func (m *Master) cleanup() {
	for _, w := range m.workers {
		_ = w.proc.SignalGroup(syscall.SIGKILL)
	}
	listener.CloseAll(m.listeners)
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
func (m *Master) after(d time.Duration, f func()) {
	time.AfterFunc(d, func() {
		select {
		case m.events <- f:
		case <-m.quit:
		}
	})
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
	case syscall.SIGTERM:
		m.beginShutdown(graceful, sig)
	case syscall.SIGINT, syscall.SIGQUIT:
		m.beginShutdown(quick, sig)
	case syscall.SIGTTIN:
		m.scaleUp()
	case syscall.SIGTTOU:
		m.scaleDown()
	case syscall.SIGUSR1:
		m.reopenLog()
	case syscall.SIGHUP:
		m.log.Warn("reload (HUP) is not available in this version yet; nothing changed")
	case syscall.SIGUSR2:
		m.log.Warn("binary upgrade (USR2) is not available in this version yet; nothing changed")
	case syscall.SIGWINCH:
		m.log.Warn("stopping workers on WINCH is not available in this version yet; nothing changed")
	}
}

// spawn starts a worker in s. A failure to fork is treated like a crash, so
// the slot's backoff applies.
func (m *Master) spawn(s *slot) {
	s.pending = false
	p, err := proc.Start(m.workerSpec(s.id))
	if err != nil {
		m.log.Error("cannot start worker", "slot", s.id, "err", err)
		m.scheduleRestart(s)
		return
	}
	w := &worker{proc: p, slot: s.id, generation: m.generation}
	s.worker = w
	m.workers[p.Pid] = w
	m.log.Info("worker started", "slot", s.id, "pid", p.Pid, "generation", w.generation)
}

func (m *Master) workerSpec(slotID int) proc.Spec {
	fds := make([]int, len(m.listeners))
	for i, l := range m.listeners {
		fds[i] = l.FD()
	}
	return proc.Spec{
		Shim:      "/proc/self/exe",
		Path:      m.opts.CommandPath,
		Args:      m.opts.Command,
		Dir:       m.opts.Dir,
		Env:       m.workerEnv(slotID),
		Listeners: fds,
		Stdout:    1,
		Stderr:    2,
	}
}

// reservedEnv are variables baton sets for each worker; inherited values
// (say, systemd's own NOTIFY_SOCKET) must never reach a worker, or a
// worker's STOPPING=1 would stop the whole service.
var reservedEnv = []string{
	"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
	"WATCHDOG_USEC", "WATCHDOG_PID", "BATON_WORKER_ID", "BATON_GENERATION",
}

func (m *Master) workerEnv(slotID int) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if isReserved(name) || hasKey(m.opts.Env, name) {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range m.opts.Env {
		env = append(env, k+"="+v)
	}
	names := make([]string, len(m.listeners))
	for i, l := range m.listeners {
		names[i] = l.Name
	}
	return append(env,
		"LISTEN_FDS="+strconv.Itoa(len(m.listeners)),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
		"BATON_WORKER_ID="+strconv.Itoa(slotID),
		"BATON_GENERATION="+strconv.Itoa(m.generation),
	)
}

func isReserved(name string) bool {
	for _, r := range reservedEnv {
		if name == r {
			return true
		}
	}
	return false
}

func hasKey(m map[string]string, k string) bool {
	_, ok := m[k]
	return ok
}

// onExit handles one reaped child.
func (m *Master) onExit(e proc.Exit) {
	w, ok := m.workers[e.Pid]
	if !ok {
		m.log.Debug("reaped a process that is not a worker", "pid", e.Pid, "status", proc.Describe(e.Status))
		return
	}
	delete(m.workers, e.Pid)
	// Whatever the worker left behind in its group would hold the
	// listeners with nobody to stop it.
	_ = w.proc.SignalGroup(syscall.SIGKILL)
	lived := time.Since(w.proc.Started)
	expected := w.retiring || m.shutdown != running
	level := slog.LevelWarn
	if expected {
		level = slog.LevelInfo
	}
	m.log.Log(context.Background(), level, "worker exited", "slot", w.slot, "pid", e.Pid, "generation", w.generation,
		"status", proc.Describe(e.Status), "uptime", lived.Round(time.Millisecond).String(), "expected", expected)
	if e.Status.Exited() && (e.Status.ExitStatus() == 126 || e.Status.ExitStatus() == 127) && !expected {
		m.log.Error("the worker command could not be executed; check that it exists and is executable",
			"path", m.opts.CommandPath)
	}
	s := m.slots[w.slot]
	if expected || s == nil || s.worker != w {
		return
	}
	s.worker = nil
	if lived >= backoffReset {
		s.failures = 0
	}
	m.scheduleRestart(s)
}

// scheduleRestart replaces a slot's worker after its backoff delay.
func (m *Master) scheduleRestart(s *slot) {
	s.failures++
	delay := backoff(s.failures)
	s.pending = true
	level := slog.LevelInfo
	if s.failures > 1 {
		level = slog.LevelWarn
	}
	m.log.Log(context.Background(), level, "restarting worker", "slot", s.id, "delay", delay.String(), "failures", s.failures)
	m.after(delay, func() {
		if m.shutdown != running || m.slots[s.id] != s || !s.pending {
			return
		}
		m.spawn(s)
	})
}

// backoff is 100 ms for the first crash in a row, doubling up to 30 s.
func backoff(failures int) time.Duration {
	d := backoffFirst
	for i := 1; i < failures && d < backoffMax; i++ {
		d *= 2
	}
	return min(d, backoffMax)
}

func (m *Master) scaleUp() {
	if m.shutdown != running {
		return
	}
	m.target++
	s := &slot{id: m.target}
	m.slots[s.id] = s
	m.log.Info("scaling up", "workers", m.target)
	m.spawn(s)
}

// scaleDown retires the worker in the highest slot; never below one worker.
func (m *Master) scaleDown() {
	if m.shutdown != running {
		return
	}
	if m.target <= 1 {
		m.log.Warn("not scaling down: one worker is the minimum", "workers", m.target)
		return
	}
	s := m.slots[m.target]
	delete(m.slots, m.target)
	m.target--
	m.log.Info("scaling down", "workers", m.target)
	if s.worker != nil {
		m.retire(s.worker)
	}
}

// retire asks a worker to stop and kills its group if it has not exited
// within the graceful timeout.
func (m *Master) retire(w *worker) {
	w.retiring = true
	m.signalWorker(w, m.opts.StopSignal)
	m.after(m.opts.GracefulTimeout, func() {
		if m.workers[w.proc.Pid] == w {
			m.log.Warn("worker did not stop within graceful_timeout; killing it",
				"slot", w.slot, "pid", w.proc.Pid, "graceful_timeout", m.opts.GracefulTimeout.String())
			m.signalWorker(w, syscall.SIGKILL)
		}
	})
}

func (m *Master) signalWorker(w *worker, sig syscall.Signal) {
	if err := w.proc.SignalGroup(sig); err != nil {
		m.log.Warn("cannot signal worker", "pid", w.proc.Pid, "signal", proc.SignalName(sig), "err", err)
	}
}

// beginShutdown stops every worker: TERM (graceful) gives them
// graceful_timeout to finish in-flight requests; INT and QUIT (quick) send
// SIGINT and kill after a short while. A quick request during a graceful
// shutdown escalates it; a second quick request kills at once.
func (m *Master) beginShutdown(mode shutdownMode, sig syscall.Signal) {
	switch {
	case m.shutdown == quick && mode == quick:
		m.log.Warn("second quick shutdown request: killing workers now")
		m.killAll()
		return
	case m.shutdown >= mode:
		return
	}
	m.shutdown = mode
	stopSig, timeout := m.opts.StopSignal, m.opts.GracefulTimeout
	if mode == quick {
		stopSig, timeout = syscall.SIGINT, min(quickTimeout, m.opts.GracefulTimeout)
	}
	m.log.Info("shutting down", "signal", proc.SignalName(sig), "graceful", mode == graceful,
		"workers", len(m.workers), "timeout", timeout.String())
	for _, w := range m.workers {
		w.retiring = true
		m.signalWorker(w, stopSig)
	}
	m.after(timeout, func() {
		if m.shutdown == mode && len(m.workers) > 0 {
			m.log.Warn("workers still running after the shutdown timeout; killing them",
				"workers", len(m.workers), "timeout", timeout.String())
			m.killAll()
		}
	})
}

func (m *Master) killAll() {
	for _, w := range m.workers {
		m.signalWorker(w, syscall.SIGKILL)
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
