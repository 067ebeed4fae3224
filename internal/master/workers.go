package master

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-pm/baton/internal/proc"
	"github.com/baton-pm/baton/internal/sdnotify"
)

const (
	// A worker that lived this long before crashing starts its slot's
	// backoff from the beginning again.
	backoffReset = 10 * time.Second
	backoffFirst = 100 * time.Millisecond
	backoffMax   = 30 * time.Second
	// autoProbeInterval is how often /proc is looked at while a worker
	// boots in ready = "auto" mode; it only delays a reload's hand-over.
	autoProbeInterval = 25 * time.Millisecond
	// How much of a failed worker's stderr is reported: its first lines
	// (Ruby and Java print the error's message first, then the
	// backtrace) and its last (Python prints the message last).
	stderrFirstLines = 10
	stderrLastLines  = 20
	// stderrDrainWait bounds the wait for a dead worker's stderr to close
	// (a grandchild may keep it open) before its last lines are reported.
	stderrDrainWait = 500 * time.Millisecond
)

type workerState int

const (
	starting workerState = iota
	ready
	draining
)

func (s workerState) String() string {
	return [...]string{"starting", "ready", "draining"}[s]
}

type worker struct {
	pid     int
	started time.Time
	proc    process
	gen     *generation
	slot    int
	state   workerState
	notify  notifySocket
	status  string // the last STATUS= it sent
	ready   time.Duration
	niced   bool // booting at a lower CPU priority (nice.go)
	// deaf: retiring, it accepts no connection any more (drain.go).
	deaf bool
	// template is the pid of the preload template that forked it.
	template int
	// watchdog.go: watched since its first WATCHDOG=1, last pinged then;
	// hung once it missed one.
	watched  bool
	lastPing time.Time
	hung     bool
	// timers pending about this worker, stopped when it exits
	// (workerAfter).
	timers map[string]*time.Timer
	// foreign are the TCP addresses its tree listens on besides baton's
	// listeners, as last read; nextForeignScan is when to read them
	// again (foreign.go).
	foreign         []string
	nextForeignScan time.Time
}

func (w *worker) closeNotify() {
	if w.notify != nil {
		w.notify.Close()
	}
}

// alive reports whether w is still a live worker of this master: an
// event about a worker that has exited since is stale.
func (m *Master) alive(w *worker) bool {
	return m.workers[w.pid] == w
}

// workerAfter runs f on the master's goroutine once d has passed, unless
// w has exited by then: its boot timeout, its kill after the graceful
// timeout, its age, its watchdog. A pending timer's closure holds w, and
// through w its whole generation; left running, reloads back to back
// would keep every old generation in memory until its timers fired. A
// timer re-armed under the same name replaces the one that fired.
func (m *Master) workerAfter(w *worker, name string, d time.Duration, f func()) {
	if w.timers == nil {
		w.timers = map[string]*time.Timer{}
	}
	w.timers[name] = m.after(d, func() {
		if m.alive(w) {
			f()
		}
	})
}

// spawn starts a worker in s with its generation's options. A failure to
// fork is treated like a crash, so the slot's backoff applies.
func (m *Master) spawn(s *slot) {
	s.pending = false
	if len(s.gen.opts.Preload) > 0 {
		m.spawnForked(s)
		return
	}
	notify, err := m.world.notify.Open(notifyOwner(s.gen.opts.RunAs))
	if err != nil {
		m.log.Error("cannot open a notify socket for a worker", "slot", s.id, "err", err)
		m.scheduleRestart(s, "crash")
		return
	}
	pid, p, err := m.world.procs.StartWorker(m.workerSpec(s, notify.Addr()))
	if err != nil {
		notify.Close()
		m.log.Error("cannot start worker", "slot", s.id, "err", err)
		m.failBoot(s, err.Error())
		return
	}
	w := &worker{pid: pid, started: time.Now(), proc: p, gen: s.gen, slot: s.id, notify: notify}
	s.worker = w
	m.workers[pid] = w
	m.lowerBootPriority(w)
	m.log.Info("worker started", "slot", s.id, "pid", pid, "generation", s.gen.num, "niced", w.niced)
	m.watchReadiness(w)
}

func (m *Master) workerSpec(s *slot, notifyAddr string) proc.Spec {
	fds := make([]int, len(m.listeners))
	for i, l := range m.listeners {
		fds[i] = l.FD()
	}
	opts := s.gen.opts
	return proc.Spec{
		Shim:       "/proc/self/exe",
		Path:       opts.CommandPath,
		Args:       opts.Command,
		Dir:        opts.Dir,
		Env:        m.workerEnv(s, notifyAddr),
		Listeners:  fds,
		Stdout:     1,
		Stderr:     os.Stderr,
		Credential: opts.RunAs,
	}
}

// reservedEnv are variables baton sets for each worker; inherited values
// (say, systemd's own NOTIFY_SOCKET) must never reach a worker, or a
// worker's STOPPING=1 would stop the whole service.
var reservedEnv = map[string]bool{
	"LISTEN_PID": true, "LISTEN_FDS": true, "LISTEN_FDNAMES": true, "NOTIFY_SOCKET": true,
	"WATCHDOG_USEC": true, "WATCHDOG_PID": true, "BATON_WORKER_ID": true, "BATON_GENERATION": true,
	proc.MasterPidEnv: true,
}

func (m *Master) workerEnv(s *slot, notifyAddr string) []string {
	env := m.baseEnv(s.gen)
	if s.gen.opts.ListenEnv {
		names := make([]string, len(m.listeners))
		for i, l := range m.listeners {
			names[i] = l.Name
		}
		env = append(env,
			"LISTEN_FDS="+strconv.Itoa(len(m.listeners)),
			"LISTEN_FDNAMES="+strings.Join(names, ":"))
	}
	env = append(env, watchdogEnv(s.gen.opts.WorkerTimeout)...)
	return append(env,
		"NOTIFY_SOCKET="+notifyAddr,
		"BATON_WORKER_ID="+strconv.Itoa(s.id),
		"BATON_GENERATION="+strconv.Itoa(s.gen.num),
		proc.MasterPidEnv+"="+strconv.Itoa(m.pid),
	)
}

// baseEnv is what every process of g gets: baton's environment without
// the variables baton sets per worker, plus g's env settings.
func (m *Master) baseEnv(g *generation) []string {
	extra := g.opts.Env
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if _, overridden := extra[name]; reservedEnv[name] || overridden {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}

// watchReadiness starts whatever tells that w is ready: READY=1 on its
// notify socket, the /proc probe or the delay, by mode (the socket is read
// in every mode, for STATUS=); and the boot timeout.
func (m *Master) watchReadiness(w *worker) {
	m.receiveNotify(w)
	switch mode := w.gen.opts.Ready; mode.Kind {
	case ReadyAuto:
		go m.probeUntilReady(w)
	case ReadyDelay:
		m.workerAfter(w, "ready", mode.Delay, func() { m.markReady(w, "delay") })
	}
	m.workerAfter(w, "boot", w.gen.opts.BootTimeout, func() { m.onBootTimeout(w) })
}

// receiveNotify reads w's notify socket, on a goroutine of its own.
func (m *Master) receiveNotify(w *worker) {
	rejects := m.newRejectLog(w)
	go func() {
		w.notify.Receive(w.proc.Belongs,
			func(msg sdnotify.Message) { m.post(func() { m.onNotify(w, msg) }) },
			rejects.add)
		rejects.flush()
	}()
}

// probeUntilReady polls /proc until w waits on a listener or stops booting.
// It runs on its own goroutine and only reads w.pid, which never changes;
// whether w still boots is asked of the master's goroutine.
func (m *Master) probeUntilReady(w *worker) {
	booting := make(chan bool, 1)
	for {
		select {
		case <-m.quit:
			return
		case <-time.After(autoProbeInterval):
		}
		m.post(func() { booting <- m.alive(w) && w.state == starting })
		select {
		case still := <-booting:
			if !still {
				return
			}
		case <-m.quit:
			return
		}
		if m.world.inspect.Waiting(w.pid) {
			m.post(func() { m.markReady(w, "auto") })
			return
		}
	}
}

func (m *Master) onNotify(w *worker, msg sdnotify.Message) {
	if !m.alive(w) {
		return
	}
	if status, ok := msg.Status(); ok {
		w.status = status
	}
	if msg.Watchdog() {
		m.onWatchdogPing(w)
	}
	// Only in notify mode: gunicorn's arbiter, for one, sends READY=1
	// before its workers have imported the app, so in auto mode the probe
	// alone decides.
	if msg.Ready() && w.gen.opts.Ready.Kind == ReadyNotify {
		m.markReady(w, "notify")
	}
}

// markReady moves a booting worker to ready and lets a reload go on.
func (m *Master) markReady(w *worker, how string) {
	if !m.alive(w) || w.state != starting {
		return
	}
	w.state = ready
	w.ready = time.Since(w.started)
	w.nextForeignScan = time.Time{} // once more, now that it serves
	m.restorePriority(w)
	if m.metrics != nil {
		m.metrics.WorkerBooted(w.ready)
	}
	m.log.Info("worker ready", "slot", w.slot, "pid", w.pid, "generation", w.gen.num,
		"boot_time", w.ready.Round(time.Millisecond).String(), "seen_by", how)
	if s := w.gen.slots[w.slot]; s != nil && s.worker == w {
		m.retireOutgoing(s)
	}
	m.scheduleAgeLimit(w)
	m.advanceReload()
	if m.current != nil && m.current.allReady() {
		m.servedOnce = true
	}
	m.notifyProgress()
}

func (m *Master) onBootTimeout(w *worker) {
	if w.state != starting {
		return
	}
	reason := "not ready within boot_timeout (" + w.gen.opts.BootTimeout.String() + ")"
	if m.isNew(w.gen) {
		m.failReload(w, reason)
		return
	}
	m.restorePriority(w)
	m.log.Warn("worker "+reason+"; it keeps running, but check the ready setting",
		"slot", w.slot, "pid", w.pid, "ready", w.gen.opts.Ready.String())
}

// onWorkerExit handles a reaped worker.
func (m *Master) onWorkerExit(w *worker, e proc.Exit) {
	delete(m.workers, w.pid)
	w.closeNotify()
	for _, t := range w.timers {
		t.Stop()
	}
	w.timers = nil
	m.killRest(w)
	lived := time.Since(w.started)
	expected := w.state == draining
	level := slog.LevelWarn
	if expected {
		level = slog.LevelInfo
	}
	status := proc.Describe(e.Status)
	m.log.Log(context.Background(), level, "worker exited", "slot", w.slot, "pid", w.pid, "generation", w.gen.num,
		"status", status, "uptime", lived.Round(time.Millisecond).String(), "expected", expected)
	if e.Status.Exited() && (e.Status.ExitStatus() == 126 || e.Status.ExitStatus() == 127) && !expected {
		m.log.Error("the worker command could not be executed; check that it exists and is executable",
			"path", w.gen.opts.CommandPath)
	}
	if expected {
		m.forgetStoppedLongAgo()
		m.recentlyStopped[w.pid] = time.Now()
	}
	m.checkListeners("worker exit", w)
	if !expected {
		m.onCrash(w, lived, status)
	}
	m.advanceReload()
}

// onCrash handles a worker that exited without being asked to.
func (m *Master) onCrash(w *worker, lived time.Duration, status string) {
	s := w.gen.slots[w.slot]
	if s != nil && s.outgoing == w {
		s.outgoing = nil // its successor is booting already
	}
	// A lame duck still serves: its crashed workers are replaced.
	if m.shutdown >= graceful || s == nil || s.worker != w {
		return
	}
	s.worker = nil
	if w.state == starting && m.isNew(w.gen) {
		m.failReload(w, "exited during boot: "+status)
		return
	}
	if lived >= backoffReset {
		s.failures = 0
	}
	m.logLastWords(w, status)
	reason := "crash"
	if w.hung {
		reason = "watchdog"
	}
	m.scheduleRestart(s, reason)
}

// failBoot handles a worker that could not even be started.
func (m *Master) failBoot(s *slot, reason string) {
	if m.isNew(s.gen) {
		m.failReload(nil, "cannot start: "+reason)
		return
	}
	m.scheduleRestart(s, "boot_failure")
}

// scheduleRestart replaces a slot's worker after its backoff delay; reason
// is counted in the metrics.
func (m *Master) scheduleRestart(s *slot, reason string) {
	s.failures++
	s.restarts++
	if m.metrics != nil {
		m.metrics.WorkerRestarted(reason)
	}
	delay := backoff(s.failures)
	s.pending = true
	level := slog.LevelInfo
	if s.failures > 1 {
		level = slog.LevelWarn
	}
	m.log.Log(context.Background(), level, "restarting worker", "slot", s.id, "generation", s.gen.num,
		"delay", delay.String(), "failures", s.failures)
	m.after(delay, func() {
		if m.shutdown >= graceful || !s.pending || s.succeeded || s.gen.slots[s.id] != s || !m.isLive(s.gen) {
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

// retire asks a worker to stop and kills its group if it has not exited
// within its generation's graceful timeout. A ready worker that others
// replace is first made to stop accepting (see drain.go), and drains at
// a lower CPU priority (see nice.go).
func (m *Master) retire(w *worker) {
	if w.state == draining {
		return
	}
	replaced := w.state == ready && m.shutdown == running
	w.state = draining
	stop := func() {
		if !m.alive(w) {
			return
		}
		if replaced {
			m.lowerRetirePriority(w)
		}
		m.stopThenKill(w, w.gen.opts.StopSignal)
	}
	if replaced && w.gen.opts.DrainUnlisten {
		m.unlistenThen(w, stop)
		return
	}
	stop()
}

// stopThenKill sends w sig, and kills its whole tree if it still runs
// after its generation's graceful timeout.
func (m *Master) stopThenKill(w *worker, sig syscall.Signal) {
	m.signalWorker(w, sig)
	timeout := w.gen.opts.GracefulTimeout
	m.workerAfter(w, "kill", timeout, func() {
		m.log.Warn("worker did not stop within graceful_timeout; killing it",
			"slot", w.slot, "pid", w.pid, "graceful_timeout", timeout.String())
		m.killTree(w)
	})
}

// killTree kills everything of w, off the master's goroutine; its exit
// is reaped as usual.
func (m *Master) killTree(w *worker) {
	p, skip := w.proc, m.childrenBut(w.pid)
	go p.KillTree(skip, false)
}

// killRest kills what a worker that exited left behind: processes in its
// cgroup, or, without cgroups, in its process group or adopted from it,
// would hold the listeners and serve old code with nobody to stop them.
// Then the worker's pidfd and cgroup are released.
func (m *Master) killRest(w *worker) {
	p, skip := w.proc, m.childrenBut(w.pid)
	m.treeKills++
	offLoop(m, func() int {
		n := p.KillTree(skip, true)
		p.Release()
		return n
	}, func(n int) {
		m.treeKills--
		if n > 0 {
			m.log.Warn("killed processes the worker left behind", "slot", w.slot, "pid", w.pid,
				"generation", w.gen.num, "processes", n)
		}
	})
}

// childrenBut are the master's children other than pid: workers,
// helpers, templates and a new master. They, and what they started, are
// never part of pid's tree: the workers a template forked are the master's
// children, in groups (and cgroups) of their own.
func (m *Master) childrenBut(pid int) map[int]bool {
	skip := map[int]bool{}
	for other := range m.workers {
		skip[other] = true
	}
	for other := range m.helpers {
		skip[other] = true
	}
	for other := range m.templates {
		skip[other] = true
	}
	if m.upgrade != nil {
		skip[m.upgrade.pid] = true
	}
	delete(skip, pid)
	return skip
}

// signalWorker sends sig to w's process group. The debug record says when
// a worker was told to stop: the moment its in-flight requests start to
// drain (the interop matrix's drain check waits for it).
func (m *Master) signalWorker(w *worker, sig syscall.Signal) {
	if err := w.proc.SignalGroup(sig); err != nil {
		m.log.Warn("cannot signal worker", "pid", w.pid, "signal", proc.SignalName(sig), "err", err)
		return
	}
	m.log.Debug("signalled worker", "slot", w.slot, "pid", w.pid, "generation", w.gen.num, "signal", proc.SignalName(sig))
}
