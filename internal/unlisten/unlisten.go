// Package unlisten stops a worker from accepting new connections before it
// is asked to stop, by removing the shared listeners from its epoll sets.
//
// Several servers drop requests in their graceful shutdown: they close
// connections they accepted a moment before the stop signal but have not read
// a request from yet (uvicorn 0.17's shutdown closes every connection with no
// request cycle; Go's http.Server.Shutdown closes one whose request it reads
// after Shutdown began, golang/go#75591). During a reload the next generation
// is already accepting on the same sockets, so baton first makes the old
// worker deaf to new connections, lets it read what it accepted, and only then
// sends the stop signal: nothing new can be accepted into the race.
//
// A process cannot edit another's epoll set directly, but it can take a
// duplicate of its epoll fd with pidfd_getfd(2) (Linux 5.6; the caller needs
// ptrace rights, which a master has over its workers) and then
// EPOLL_CTL_DEL the listener. epoll identifies a registration by the file
// and the fd number it was added with, so the DEL must come from a process
// that holds the listener at that same number: a tiny helper, baton itself
// re-executed with the listeners placed there.
//
// One helper removes a whole group of registrations (every epoll set of
// every process of a worker, usually), so a worker with 150 epoll sets costs
// one fork, not 150. Plan splits a worker's registrations into groups a
// single helper can serve: one helper holds one file per fd number, so two
// registrations that need different listeners at the same number (possible
// in theory, when processes of one tree hold different listeners there) go
// to different helpers, and so do registrations beyond MaxGroup.
package unlisten

import (
	"cmp"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Arg is the hidden first argument of baton's helper mode.
const Arg = "_unlisten"

// MaxGroup is the most registrations one helper removes. Each is one
// argument of at most 24 bytes ("PID:EPOLLFD:FD"; pids and fd numbers have
// at most 7 digits on Linux), so a helper's argv stays under 25 KB, far
// below the smallest limit Linux puts on exec's arguments (128 KiB), and
// its removals take a few milliseconds. A worker tree with more
// registrations gets one helper per MaxGroup of them.
const MaxGroup = 1024

// ExitUsage is the helper's exit code when its arguments are malformed
// (nothing was tried). Any other non-zero code is the number of
// registrations it could not remove, up to ExitUsage-1, which means "that
// many or more"; it names each on stderr.
const ExitUsage = 101

// Target is one registration to remove: in process Pid, epoll fd EpollFD
// watches fd FD, which is the listener the master holds as ListenerFD.
type Target struct {
	Pid, EpollFD, FD int
	ListenerFD       int
}

// Plan splits targets into groups that one helper each can remove, in
// their order: a group needs each fd number to be one listener, and holds
// at most MaxGroup targets. The targets of a worker's tree usually make a
// single group. A target Start refuses (a standard stream's number) gets a
// group of its own, so that it fails alone.
func Plan(targets []Target) [][]Target {
	type group struct {
		targets []Target
		fds     map[int]int // fd number -> the master's listener; nil: alone
	}
	var groups []*group
next:
	for _, t := range targets {
		if t.FD < 3 {
			groups = append(groups, &group{targets: []Target{t}})
			continue
		}
		for _, g := range groups {
			if g.fds == nil || len(g.targets) >= MaxGroup {
				continue
			}
			if l, ok := g.fds[t.FD]; ok && l != t.ListenerFD {
				continue
			}
			g.fds[t.FD] = t.ListenerFD
			g.targets = append(g.targets, t)
			continue next
		}
		groups = append(groups, &group{targets: []Target{t}, fds: map[int]int{t.FD: t.ListenerFD}})
	}
	out := make([][]Target, len(groups))
	for i, g := range groups {
		out[i] = g.targets
	}
	return out
}

// Start runs one helper that removes every target of group (a group Plan
// made) and returns its pid; the caller reaps it. Its exit code says how
// many it could not remove (see ExitUsage), and NotRemoved reads it.
func Start(shim string, group []Target) (pid int, err error) {
	if err := checkGroup(group); err != nil {
		return 0, err
	}
	at := map[int]int{} // fd number in the helper -> the master's listener
	top := 0
	argv := []string{"baton", Arg}
	for _, t := range group {
		at[t.FD] = t.ListenerFD
		top = max(top, t.FD)
		argv = append(argv, fmt.Sprintf("%d:%d:%d", t.Pid, t.EpollFD, t.FD))
	}
	files := make([]uintptr, top+1)
	files[0], files[1], files[2] = 0, 1, 2
	for i := 3; i <= top; i++ {
		if l, ok := at[i]; ok {
			files[i] = uintptr(l)
		} else {
			files[i] = ^uintptr(0) // closed in the helper
		}
	}
	pid, err = syscall.ForkExec(shim, argv, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: files,
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		return 0, fmt.Errorf("unlisten: start helper: %w", err)
	}
	return pid, nil
}

// NotRemoved is how many of the n registrations a helper was given it did
// not remove, by its exit status (n when that is not known).
func NotRemoved(exitCode, n int) int {
	if exitCode >= 0 && exitCode < ExitUsage-1 {
		return min(exitCode, n)
	}
	return n
}

// Main is the helper's body: each argument is one registration,
// PID:EPOLLFD:FD, and this process holds the listener of each at its FD.
// It removes every one it can and returns the exit code (see ExitUsage).
func Main(args []string) int {
	targets, err := parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "baton %s: %v\n", Arg, err)
		return ExitUsage
	}
	failed := removeAll(targets, func(t Target, err error) {
		fmt.Fprintf(os.Stderr, "baton %s: pid %d, epoll fd %d, fd %d: %v\n", Arg, t.Pid, t.EpollFD, t.FD, err)
	})
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "baton %s: %d of %d registrations not removed\n", Arg, failed, len(targets))
	}
	return min(failed, ExitUsage-1)
}

func parse(args []string) ([]Target, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("usage: baton %s PID:EPOLLFD:FD... (internal, started by the master)", Arg)
	}
	targets := make([]Target, 0, len(args))
	for _, a := range args {
		parts := strings.Split(a, ":")
		if len(parts) != 3 {
			return nil, fmt.Errorf("%q is not PID:EPOLLFD:FD", a)
		}
		var n [3]int
		for i, p := range parts {
			v, err := strconv.Atoi(p)
			if err != nil || v < 0 {
				return nil, fmt.Errorf("%q is not PID:EPOLLFD:FD", a)
			}
			n[i] = v
		}
		targets = append(targets, Target{Pid: n[0], EpollFD: n[1], FD: n[2]})
	}
	return targets, nil
}

// removeAll removes every target, process by process and epoll set by
// epoll set, so that it opens each pidfd and takes each epoll fd once and
// holds at most one of each at a time. It reports each failure and returns
// their number.
func removeAll(targets []Target, report func(Target, error)) (failed int) {
	targets = slices.Clone(targets)
	slices.SortStableFunc(targets, func(a, b Target) int {
		return cmp.Or(cmp.Compare(a.Pid, b.Pid), cmp.Compare(a.EpollFD, b.EpollFD))
	})
	fail := func(ts []Target, err error) {
		for _, t := range ts {
			report(t, err)
		}
		failed += len(ts)
	}
	for byPid := range chunks(targets, func(t Target) int { return t.Pid }) {
		pid := byPid[0].Pid
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			fail(byPid, fmt.Errorf("pidfd_open: %w", err))
			continue
		}
		for bySet := range chunks(byPid, func(t Target) int { return t.EpollFD }) {
			ep, err := unix.PidfdGetfd(pidfd, bySet[0].EpollFD, 0)
			if err != nil {
				fail(bySet, fmt.Errorf("pidfd_getfd: %w", err))
				continue
			}
			for _, t := range bySet {
				if err := unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, t.FD, nil); err != nil {
					fail([]Target{t}, fmt.Errorf("epoll_ctl(DEL): %w", err))
				}
			}
			unix.Close(ep)
		}
		unix.Close(pidfd)
	}
	return failed
}

// chunks yields the runs of consecutive targets with the same key.
func chunks(ts []Target, key func(Target) int) func(yield func([]Target) bool) {
	return func(yield func([]Target) bool) {
		for len(ts) > 0 {
			n := 1
			for n < len(ts) && key(ts[n]) == key(ts[0]) {
				n++
			}
			if !yield(ts[:n]) {
				return
			}
			ts = ts[n:]
		}
	}
}
