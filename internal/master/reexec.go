package master

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/baton-pm/baton/internal/listener"
	"github.com/baton-pm/baton/internal/metrics"
	"github.com/baton-pm/baton/internal/proc"
	"golang.org/x/sys/unix"
)

// An in-place upgrade (upgrade_mode = "reexec", the default) keeps the
// master's pid, so that systemd's MAINPID, WATCHDOG_PID and the pidfile
// stay right: the master executes the binary at the path it was started
// from, in its own process. Its workers stay its children; the new image
// adopts them from a state written to a memfd that survives the exec,
// takes over the listeners (their fds survive too) and the read ends of
// the workers' stderr pipes, and then rolls the workers to a new
// generation exactly like a reload, so an upgrade also picks up new app
// code. Before the exec, the new binary is checked as a child process
// (ReexecCheckArg): it must start, read this state's format and the
// configuration, and say "ok". Anything else leaves this master as it is.
//
// The exec runs on the master's goroutine, which is locked to the thread
// that forked every worker: a child's parent-death signal fires when the
// thread that forked it exits, and an exec from any other thread would
// end that one.

const (
	// ReexecCheckArg is the hidden mode a new binary is checked with:
	// `baton _upgrade_check VERSION ARGS...`, where ARGS are the master's
	// own arguments; it prints "ok BATON_VERSION" and exits 0 when it can
	// take over.
	ReexecCheckArg = "_upgrade_check"
	// ReexecStateVersion is the version of the state format this baton
	// writes and reads.
	ReexecStateVersion = 1
	// reexecStateEnv names the fd of the memfd holding the state.
	reexecStateEnv = "BATON_REEXEC_STATE"
	// preflightTimeout bounds the check of the new binary.
	preflightTimeout = 30 * time.Second
)

// reexecState is what the new image needs of the old.
type reexecState struct {
	Version    int            `json:"version"`
	From       string         `json:"from"` // the baton version that wrote it
	Started    time.Time      `json:"started"`
	LastGen    int            `json:"last_gen"`
	Generation int            `json:"generation"` // the serving generation
	Size       int            `json:"size"`
	Workers    []reexecWorker `json:"workers"`
	// The control socket's and the metrics endpoint's listening sockets,
	// kept across the exec (0: none), with the setting each serves.
	ControlFD   int    `json:"control_fd,omitempty"`
	ControlPath string `json:"control_path,omitempty"`
	MetricsFD   int    `json:"metrics_fd,omitempty"`
	MetricsAddr string `json:"metrics_addr,omitempty"`
}

// reexecWorker is one worker the new image adopts.
type reexecWorker struct {
	Pid          int       `json:"pid"`
	Slot         int       `json:"slot"`
	Generation   int       `json:"generation"`
	Started      time.Time `json:"started"`
	StderrFD     int       `json:"stderr_fd"`
	NotifyFD     int       `json:"notify_fd,omitempty"`
	Cgroup       string    `json:"cgroup,omitempty"`
	NotifySocket string    `json:"notify_socket"`
}

// startReexec checks the new binary, off the loop, and then executes it.
func (m *Master) startReexec(w *reloadWaiter) {
	u := &upgrade{started: time.Now(), waiters: []*reloadWaiter{w}, inPlace: true}
	m.upgrade = u
	exe := m.opts.Executable
	m.log.Info("upgrade started: checking the new binary before this master executes it", "binary", exe)
	pid, out, err := m.world.procs.StartPreflight(exe, m.opts.Args, m.opts.StartDir, ReexecStateVersion)
	if err != nil {
		m.failInPlace(u, err.Error())
		return
	}
	u.pid = pid
	kill := m.after(preflightTimeout, func() {
		if m.upgrade == u && !u.exited {
			_ = m.world.procs.Kill(pid, syscall.SIGKILL)
		}
	})
	m.helpers[pid] = func(e proc.Exit) {
		kill.Stop()
		u.exited = true
		answer := <-out
		if m.upgrade != u {
			return
		}
		if !e.Status.Exited() || e.Status.ExitStatus() != 0 || !strings.HasPrefix(answer, "ok ") {
			reason := "the new binary refused to take over (" + proc.Describe(e.Status) + ")"
			if answer != "" {
				reason += ": " + answer
			}
			m.failInPlace(u, reason)
			return
		}
		m.execInPlace(u, strings.TrimPrefix(answer, "ok "))
	}
}

// failInPlace ends an in-place upgrade that did not exec: this master
// serves on.
func (m *Master) failInPlace(u *upgrade, reason string) {
	if m.upgrade == u {
		m.upgrade = nil
	}
	m.log.Error("upgrade failed; this master serves on, unchanged", "reason", reason)
	deliver(u.waiters, ReloadResult{OK: false, Reason: reason, Started: u.started, Duration: time.Since(u.started), MasterPid: m.pid})
}

// execInPlace hands the state over and executes the new binary. It
// returns only if the exec failed, with everything put back.
func (m *Master) execInPlace(u *upgrade, version string) {
	if m.shutdown != running || m.reload != nil || m.loadingConfig {
		m.failInPlace(u, "the master began a shutdown or a reload meanwhile")
		return
	}
	state, memfd, err := m.writeReexecState(u)
	if err != nil {
		m.keepOnExec(false)
		m.failInPlace(u, "cannot hand the state over: "+err.Error())
		return
	}
	env := append(environWithout(listener.HandoverEnv, reexecStateEnv, upgradePipeEnv),
		listener.HandoverEnv+"="+listener.HandoverInPlace(m.listeners),
		reexecStateEnv+"="+strconv.Itoa(memfd))
	m.log.Info("upgrade: executing the new binary in place", "binary", m.opts.Executable, "version", version,
		"workers", len(state.Workers))
	m.notifyReloading(m.lastGen + 1)
	err = m.world.procs.Exec(m.opts.Executable, m.opts.Args, env)
	// Still here: the exec failed, and nothing was lost.
	unix.Close(memfd)
	m.keepOnExec(false)
	m.notifyProgress()
	m.failInPlace(u, "cannot execute "+m.opts.Executable+": "+err.Error())
}

// writeReexecState puts the state in a memfd and makes every fd it names
// survive the exec.
func (m *Master) writeReexecState(u *upgrade) (*reexecState, int, error) {
	st := &reexecState{Version: ReexecStateVersion, From: m.opts.Version, Started: u.started,
		LastGen: m.lastGen, Generation: m.current.num, Size: m.current.size}
	for pid, w := range m.workers {
		// Draining workers are on their way out: they go on draining,
		// and the new image counts them as the old generation's.
		fd, err := w.proc.KeepStderrOnExec(true)
		if err != nil {
			return nil, -1, fmt.Errorf("worker %d's stderr: %w", pid, err)
		}
		rec := reexecWorker{Pid: pid, Slot: w.slot, Generation: w.gen.num,
			Started: w.started, StderrFD: fd, Cgroup: w.proc.Cgroup(), NotifySocket: w.proc.Identity()}
		if w.notify != nil {
			// Its messages, queued ones included, reach the new image.
			if rec.NotifyFD, err = w.notify.KeepOnExec(true); err != nil {
				return nil, -1, fmt.Errorf("worker %d's notify socket: %w", pid, err)
			}
		}
		st.Workers = append(st.Workers, rec)
	}
	if err := listener.KeepOnExec(m.listeners, true); err != nil {
		return nil, -1, err
	}
	// The endpoints stay open across the exec: a client or a load
	// balancer's probe never finds them gone.
	if ce, ok := m.endpoints.control.(controlEndpoint); ok {
		fd, err := ce.srv.KeepOnExec(true)
		if err != nil {
			return nil, -1, fmt.Errorf("control socket: %w", err)
		}
		st.ControlFD, st.ControlPath = fd, m.endpoints.controlPath
	}
	if ms, ok := m.endpoints.metrics.(*metrics.Server); ok {
		fd, err := ms.KeepOnExec(true)
		if err != nil {
			return nil, -1, fmt.Errorf("metrics endpoint: %w", err)
		}
		st.MetricsFD, st.MetricsAddr = fd, m.endpoints.metricsAddr
	}
	data, err := json.Marshal(st)
	if err != nil {
		return nil, -1, err
	}
	fd, err := unix.MemfdCreate("baton-reexec-state", 0)
	if err != nil {
		return nil, -1, fmt.Errorf("memfd: %w", err)
	}
	if _, err := unix.Write(fd, data); err != nil {
		unix.Close(fd)
		return nil, -1, fmt.Errorf("memfd: %w", err)
	}
	// The new image reads it from the start.
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		unix.Close(fd)
		return nil, -1, fmt.Errorf("memfd: %w", err)
	}
	return st, fd, nil
}

// keepOnExec undoes writeReexecState's fd changes (keep false).
func (m *Master) keepOnExec(keep bool) {
	listener.KeepOnExec(m.listeners, keep)
	for _, w := range m.workers {
		w.proc.KeepStderrOnExec(keep)
		if w.notify != nil {
			w.notify.KeepOnExec(keep)
		}
	}
	if ce, ok := m.endpoints.control.(controlEndpoint); ok {
		ce.srv.KeepOnExec(keep)
	}
	if ms, ok := m.endpoints.metrics.(*metrics.Server); ok {
		ms.KeepOnExec(keep)
	}
}

// takeReexecState is the new image's side: the state the old image left,
// or nil when this master was not started by an in-place upgrade.
func takeReexecState() (*reexecState, error) {
	value, ok := os.LookupEnv(reexecStateEnv)
	if !ok {
		return nil, nil
	}
	os.Unsetenv(reexecStateEnv)
	fd, err := strconv.Atoi(value)
	if err != nil {
		return nil, fmt.Errorf("%s=%q: not an fd", reexecStateEnv, value)
	}
	f := os.NewFile(uintptr(fd), "reexec-state")
	defer f.Close()
	var st reexecState
	if err := json.NewDecoder(f).Decode(&st); err != nil {
		return nil, fmt.Errorf("the state the previous image left: %w", err)
	}
	if st.Version != ReexecStateVersion {
		return nil, fmt.Errorf("the previous image left state version %d; this baton reads %d", st.Version, ReexecStateVersion)
	}
	return &st, nil
}

// adoptWorkers makes the previous image's workers this image's serving
// generation, and rolls them to a new one like a reload.
func (m *Master) adoptWorkers(st *reexecState) {
	g := &generation{num: st.Generation, opts: m.initial, size: st.Size, slots: map[int]*slot{}}
	m.lastGen = st.LastGen
	old := map[int]*generation{st.Generation: g}
	for _, rec := range st.Workers {
		wg := old[rec.Generation]
		if wg == nil {
			wg = &generation{num: rec.Generation, opts: m.initial, slots: map[int]*slot{}}
			old[rec.Generation] = wg
		}
		p, err := m.world.procs.Adopt(rec)
		if err != nil {
			m.log.Error("cannot adopt a worker of the previous image; killing it", "pid", rec.Pid, "err", err)
			unix.Kill(rec.Pid, syscall.SIGKILL) // our unreaped child: its pid is its own
			continue
		}
		w := &worker{pid: rec.Pid, started: rec.Started, proc: p, gen: wg, slot: rec.Slot, state: ready}
		m.workers[rec.Pid] = w
		if rec.NotifyFD > 0 {
			if ns, err := m.world.notify.Adopt(rec.NotifyFD, rec.NotifySocket); err != nil {
				m.log.Warn("cannot take over a worker's notify socket; it is not heard any more", "pid", rec.Pid, "err", err)
			} else {
				w.notify = ns
				m.receiveNotify(w)
			}
		}
		if wg == g {
			wg.slot(rec.Slot).worker = w
			continue
		}
		// A generation on its way out: it drains on, and the kill after
		// graceful_timeout, a timer the exec ended, is armed again.
		w.state = draining
		m.workerAfter(w, "kill", w.gen.opts.GracefulTimeout, func() { m.killTree(w) })
	}
	m.current = g
	m.servedOnce = true // the previous image's workers served
	m.inPlaceUpgrade = &upgrade{started: st.Started, inPlace: true}
	m.log.Info("upgrade: this image took over", "from_version", st.From, "version", m.opts.Version,
		"workers", len(m.workers), "generation", g.num)
	// Exits during the exec went unnoticed.
	for _, e := range m.world.procs.Reap() {
		m.onExit(e)
	}
	m.requestReload(nil)
}
