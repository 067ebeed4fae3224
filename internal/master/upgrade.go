package master

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-pm/baton/internal/listener"
	"github.com/baton-pm/baton/internal/proc"
)

// A binary upgrade (USR2, baton upgrade) starts a new master from the
// binary on disk, with the same arguments, directory and environment, and
// hands it every listener as fds 3, 4, ... (listener.HandoverEnv names
// them). The new master starts its own generation of workers; when they
// are ready it writes one line to a pipe the old master gave it, and the
// old master steps down: it drains its workers and exits (or, with
// upgrade_handover = "manual", waits for WINCH and TERM). If the new master
// exits first, or is not ready within boot_timeout, it is stopped and the
// old master keeps serving, its pidfile restored.

// upgrade is a binary upgrade in progress, seen from the old master.
type upgrade struct {
	pid     int // the new master
	started time.Time
	waiters []*reloadWaiter
	// newReady once the new master reported that it serves; exited once
	// it was reaped.
	newReady, exited bool
	// inPlace: an in-place upgrade (reexec.go); pid is then the check of
	// the new binary.
	inPlace bool
}

func (m *Master) requestUpgrade(w *reloadWaiter) {
	fail := func(reason string) {
		m.log.Error("upgrade refused", "reason", reason)
		deliver([]*reloadWaiter{w}, ReloadResult{Reason: reason, Started: time.Now(), Duration: 0})
	}
	switch {
	case m.shutdown != running || m.steppedDown:
		fail("the master is shutting down")
		return
	case m.upgrade != nil:
		if w != nil {
			m.upgrade.waiters = append(m.upgrade.waiters, w)
		}
		return
	case m.reloading():
		fail("a reload is in progress; upgrade when it has finished")
		return
	}
	if m.opts.UpgradeMode != "new-master" {
		m.startReexec(w)
		return
	}
	u, err := m.startNewMaster()
	if err != nil {
		fail(err.Error())
		return
	}
	u.waiters = []*reloadWaiter{w}
	m.upgrade = u
	m.log.Info("upgrade started", "new_master_pid", u.pid, "binary", m.opts.Executable)
	timeout := m.current.opts.BootTimeout
	m.after(timeout, func() {
		if m.upgrade == u && !u.newReady {
			m.failUpgrade(u, "the new master was not ready within boot_timeout ("+timeout.String()+")")
		}
	})
}

// startNewMaster renames the pidfile to .oldbin and starts the new master
// with the listeners and a pipe to report on.
func (m *Master) startNewMaster() (*upgrade, error) {
	fds := make([]int, len(m.listeners))
	for i, l := range m.listeners {
		fds[i] = l.FD()
	}
	// WATCHDOG_PID names this master: inherited, it would make the new
	// one think systemd's watchdog is not for it, and systemd would kill
	// the service once the new master is its main pid.
	env := append(environWithout(listener.HandoverEnv, upgradePipeEnv, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_PID"),
		listener.HandoverEnv+"="+listener.HandoverValue(m.listeners))
	if err := m.movePidfile(m.opts.PidFile, m.oldbin()); err != nil {
		return nil, err
	}
	pid, ready, err := m.world.procs.StartMaster(masterSpec{
		Path: m.opts.Executable, Args: m.opts.Args, Dir: m.opts.StartDir, Env: env, Listeners: fds,
	})
	if err != nil {
		m.movePidfile(m.oldbin(), m.opts.PidFile)
		return nil, err
	}
	u := &upgrade{pid: pid, started: time.Now()}
	go func() {
		select {
		case line, ok := <-ready:
			if ok {
				m.post(func() { m.onNewMasterReady(u, strings.Fields(line)) })
			}
			// Else it exited without a word; its exit is reaped.
		case <-m.quit:
		}
	}()
	return u, nil
}

func (m *Master) onNewMasterReady(u *upgrade, words []string) {
	if m.upgrade != u || u.newReady || len(words) < 3 || words[0] != "ready" {
		return
	}
	u.newReady = true
	version := words[2]
	res := ReloadResult{OK: true, Started: u.started, Duration: time.Since(u.started), MasterPid: u.pid, Version: version}
	m.log.Info("upgrade: the new master is ready", "new_master_pid", u.pid, "version", version,
		"duration", res.Duration.Round(time.Millisecond).String(), "handover", m.opts.Handover)
	deliver(u.waiters, res)
	// The pidfile names the new master now; its control socket and
	// metrics endpoint must be the ones clients reach.
	m.releaseEndpoints()
	if m.opts.Handover == "manual" {
		m.log.Info("manual hand-over: this master keeps its workers until WINCH, and runs until TERM or QUIT")
		return
	}
	m.stepDown()
}

// stepDown makes this master step back: the new one serves the
// listeners, the pidfile, the control socket and systemd's MAINPID.
func (m *Master) stepDown() {
	m.steppedDown = true
	m.beginShutdown(graceful, 0)
}

// failUpgrade stops the new master, unless it has exited already, and
// keeps serving. A new master that was told to stop is an ordinary child
// until it is reaped: its kill timer is stopped then, so no signal can
// reach a process that reused its pid.
func (m *Master) failUpgrade(u *upgrade, reason string) {
	if m.upgrade != u || u.newReady {
		return
	}
	m.upgrade = nil
	if !u.exited {
		// Its workers die with it (Pdeathsig); TERM lets them drain first.
		_ = m.world.procs.Kill(u.pid, syscall.SIGTERM)
		kill := m.after(m.current.opts.GracefulTimeout, func() { _ = m.world.procs.Kill(u.pid, syscall.SIGKILL) })
		m.helpers[u.pid] = func(proc.Exit) { kill.Stop() }
	}
	m.movePidfile(m.oldbin(), m.opts.PidFile)
	res := ReloadResult{OK: false, Reason: reason, Started: u.started, Duration: time.Since(u.started), MasterPid: u.pid}
	m.log.Error("upgrade failed; this master keeps serving", "reason", reason, "new_master_pid", u.pid)
	deliver(u.waiters, res)
}

// onNewMasterExit handles the reaped new master; it reports whether pid
// was the new master.
func (m *Master) onNewMasterExit(e proc.Exit) bool {
	u := m.upgrade
	if u == nil || e.Pid != u.pid || u.inPlace {
		return false
	}
	u.exited = true
	if !u.newReady {
		m.failUpgrade(u, "the new master exited: "+proc.Describe(e.Status))
	} else {
		m.log.Warn("the new master exited", "pid", e.Pid, "status", proc.Describe(e.Status))
	}
	m.upgrade = nil
	return true
}

func (m *Master) oldbin() string {
	if m.opts.PidFile == "" {
		return ""
	}
	return m.opts.PidFile + ".oldbin"
}

// movePidfile renames from to to, when there is a pidfile at all.
func (m *Master) movePidfile(from, to string) error {
	if from == "" || to == "" {
		return nil
	}
	if err := os.Rename(from, to); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("upgrade: %w", err)
	}
	return nil
}

// environWithout is this process's environment less the given variables.
func environWithout(names ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, n := range names {
			if name == n {
				keep = false
			}
		}
		if keep {
			env = append(env, kv)
		}
	}
	return env
}

// takeUpgradePipe is the new master's side: the fd to report readiness
// on, if this master was started by an upgrade.
func takeUpgradePipe() *os.File {
	n, err := strconv.Atoi(os.Getenv(upgradePipeEnv))
	os.Unsetenv(upgradePipeEnv)
	if err != nil || n < 3 {
		return nil
	}
	syscall.CloseOnExec(n)
	return os.NewFile(uintptr(n), "upgrade-pipe")
}

// reportReadyToOldMaster tells the old master this one serves.
func (m *Master) reportReadyToOldMaster() {
	if m.upgradePipe == nil {
		return
	}
	fmt.Fprintf(m.upgradePipe, "ready %d %s\n", m.pid, m.opts.Version)
	m.upgradePipe.Close()
	m.upgradePipe = nil
}
