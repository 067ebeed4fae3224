package main

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The operations a scenario performs on a running server, each the way an
// operator of that server would: baton's own commands, which wait and
// report; for Gunicorn, its signals, and its workers' startup lines to
// know when they took effect (Gunicorn itself reports nothing).

// opResult is how one operation ended, as the benchmark saw it.
type opResult struct {
	At     time.Time // when the signal or command was sent
	Done   time.Time // when it was seen to have finished (zero: not waited for)
	Result string    // "succeeded", "failed: …", or "sent"
}

// reloadWait reloads and waits for the outcome: `baton reload` (which
// waits for the new generation, or reports why it failed); for Gunicorn a
// HUP, then as many new "Application startup complete" lines as it has
// workers.
func (s *server) reloadWait(timeout time.Duration) (opResult, error) {
	switch family(s.spec.kind) {
	case kindBaton:
		return s.batonCommand("reload", timeout)
	case kindGunicorn:
		before := s.countLines(s.readyMarker())
		at, err := s.hup()
		if err != nil {
			return opResult{}, err
		}
		res := opResult{At: at, Result: "succeeded"}
		if err := s.waitLines(s.readyMarker(), before+s.spec.workers, at.Add(timeout)); err != nil {
			res.Result = "failed: " + err.Error()
		}
		res.Done = time.Now()
		return res, nil
	}
	return opResult{}, fmt.Errorf("%s cannot reload", s.spec.kind)
}

// batonCommand runs `baton reload` or `baton upgrade` against the master's
// pidfile and reads its exit status: 0 succeeded, 1 failed (the reason is
// on its output).
func (s *server) batonCommand(verb string, timeout time.Duration) (opResult, error) {
	cmd := exec.Command(s.cmd.Path, verb, "--pid", s.pidFile(), "--timeout", timeout.String())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	res := opResult{At: time.Now()}
	err := cmd.Run()
	res.Done = time.Now()
	var exit *exec.ExitError
	switch {
	case err == nil:
		res.Result = "succeeded"
	case errors.As(err, &exit):
		res.Result = "failed: " + lastLine(out.String())
	default:
		return opResult{}, fmt.Errorf("baton %s: %w", verb, err)
	}
	return res, nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// pidFile is where the master writes its pid (see serverArgv).
func (s *server) pidFile() string {
	return filepath.Join(s.appDir, family(s.spec.kind)+".pid")
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// upgradeWait replaces the master binary in place with no downtime. For
// baton: `baton upgrade`, which starts a new master that inherits the
// sockets, waits for its workers and retires the old master. For Gunicorn,
// its documented recipe: USR2 (a new master starts, writes the pidfile and
// boots its workers), then once they are all up, TERM to the old master
// (which stops its workers gracefully). Either way the new master is then
// the one the benchmark signals.
func (s *server) upgradeWait(timeout time.Duration) (opResult, error) {
	old := s.master()
	switch family(s.spec.kind) {
	case kindBaton:
		res, err := s.batonCommand("upgrade", timeout)
		if err != nil {
			return res, err
		}
		if pid := readPID(s.pidFile()); res.Result == "succeeded" && pid != 0 && pid != old {
			s.masterPID.Store(int64(pid))
		}
		return res, nil
	case kindGunicorn:
		before := s.countLines(s.readyMarker())
		at, err := s.signal(syscall.SIGUSR2)
		if err != nil {
			return opResult{}, err
		}
		res := opResult{At: at}
		deadline := at.Add(timeout)
		newPID := 0
		for newPID == 0 && time.Now().Before(deadline) {
			// The new master writes PIDFILE.2 while the old one lives,
			// and renames it to PIDFILE once the old master has exited.
			for _, path := range []string{s.pidFile() + ".2", s.pidFile()} {
				if pid := readPID(path); pid != 0 && pid != old && !processGone(pid) {
					newPID = pid
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		if newPID == 0 {
			res.Done, res.Result = time.Now(), "failed: no new master wrote the pidfile"
			return res, nil
		}
		if err := s.waitLines(s.readyMarker(), before+s.spec.workers, deadline); err != nil {
			res.Done, res.Result = time.Now(), "failed: "+err.Error()
			return res, nil
		}
		_ = syscall.Kill(old, syscall.SIGTERM)
		s.masterPID.Store(int64(newPID))
		res.Done, res.Result = time.Now(), "succeeded"
		return res, nil
	}
	return opResult{}, fmt.Errorf("%s cannot upgrade", s.spec.kind)
}

// workerPIDs lists the current master's worker processes: its children,
// less baton's short-lived unlisten helper, a new master during an
// upgrade, and baton's preload templates (the processes that fork the
// workers; they serve no request).
func (s *server) workerPIDs() []int {
	master := s.master()
	newMaster := readPID(s.pidFile() + ".2")
	templates := map[int]bool{}
	if s.spec.kind == kindBatonPreload {
		templates = s.templatePIDs()
	}
	var out []int
	for _, p := range children(master) {
		if p.state == "Z" || p.pid == newMaster || templates[p.pid] || isUnlistenHelper(p.pid) {
			continue
		}
		out = append(out, p.pid)
	}
	return out
}

// templatePIDs are the pids of baton's live preload templates, from its
// log ("preload template started", "... exited"): asking the master
// (`baton status`) would make it work, and grow its heap, just before the
// memory scenario measures it.
func (s *server) templatePIDs() map[int]bool {
	_, events := s.snapshot()
	pids := map[int]bool{}
	for _, e := range events {
		pid, err := strconv.Atoi(e.str("pid"))
		if err != nil {
			continue
		}
		switch e.Msg {
		case "preload template started":
			pids[pid] = true
		case "preload template exited":
			delete(pids, pid)
		}
	}
	return pids
}

// isUnlistenHelper tells baton's drain helper (`baton _unlisten`, a
// child of the master for a few milliseconds) from a worker.
func isUnlistenHelper(pid int) bool {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	args := strings.Split(string(b), "\x00")
	return len(args) > 1 && args[1] == "_unlisten"
}

// killRandomWorker sends SIGKILL to one of the master's workers, chosen
// with rng.
func (s *server) killRandomWorker(rng *rand.Rand) (int, time.Time, error) {
	pids := s.workerPIDs()
	if len(pids) == 0 {
		return 0, time.Time{}, errors.New("no worker to kill")
	}
	pid := pids[rng.IntN(len(pids))]
	at := time.Now()
	return pid, at, syscall.Kill(pid, syscall.SIGKILL)
}

// children lists the processes whose parent is pid.
func children(pid int) []procInfo {
	var out []procInfo
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readStat(n); ok && p.ppid == pid {
			out = append(out, p)
		}
	}
	return out
}

// memory is a process's resident memory from /proc/PID/status, in KiB:
// all of it (VmRSS), anonymous (heap, stacks) and file-backed (the
// program's and its libraries' pages, shared with the page cache).
type memory struct{ RSS, Anon, File int64 }

func readMem(pid int) memory {
	var m memory
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch name {
		case "VmRSS":
			m.RSS = n
		case "RssAnon":
			m.Anon = n
		case "RssFile":
			m.File = n
		}
	}
	return m
}
