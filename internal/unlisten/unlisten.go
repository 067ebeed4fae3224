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
// re-executed with the listener placed there.
package unlisten

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Arg is the hidden first argument of baton's helper mode.
const Arg = "_unlisten"

// Target is one registration to remove: in process Pid, epoll fd EpollFD
// watches fd FD, which is the listener the master holds as ListenerFD.
type Target struct {
	Pid, EpollFD, FD int
	ListenerFD       int
}

// Start runs the helper for t and returns its pid; the caller reaps it.
func Start(shim string, t Target) (int, error) {
	if t.FD < 3 {
		return 0, fmt.Errorf("unlisten: fd %d of pid %d is a standard stream", t.FD, t.Pid)
	}
	files := make([]uintptr, t.FD+1)
	files[0], files[1], files[2] = 0, 1, 2
	for i := 3; i < t.FD; i++ {
		files[i] = ^uintptr(0) // closed in the helper
	}
	files[t.FD] = uintptr(t.ListenerFD)
	argv := []string{"baton", Arg, strconv.Itoa(t.Pid), strconv.Itoa(t.EpollFD), strconv.Itoa(t.FD)}
	pid, err := syscall.ForkExec(shim, argv, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: files,
		Sys:   &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
	})
	if err != nil {
		return 0, fmt.Errorf("unlisten: start helper: %w", err)
	}
	return pid, nil
}

// Main is the helper's body: args are PID EPOLLFD FD, and this process holds
// the listener as FD. It returns the exit code.
func Main(args []string) int {
	if err := remove(args); err != nil {
		fmt.Fprintf(os.Stderr, "baton %s: %v\n", Arg, err)
		return 1
	}
	return 0
}

func remove(args []string) error {
	if len(args) != 3 {
		return fmt.Errorf("usage: baton %s PID EPOLLFD FD (internal, started by the master)", Arg)
	}
	var n [3]int
	for i, a := range args {
		v, err := strconv.Atoi(a)
		if err != nil {
			return fmt.Errorf("%q is not a number", a)
		}
		n[i] = v
	}
	pid, epfd, fd := n[0], n[1], n[2]
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	defer unix.Close(pidfd)
	ep, err := unix.PidfdGetfd(pidfd, epfd, 0)
	if err != nil {
		return fmt.Errorf("pidfd_getfd(%d, fd %d): %w", pid, epfd, err)
	}
	defer unix.Close(ep)
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return fmt.Errorf("epoll_ctl(DEL fd %d) in pid %d: %w", fd, pid, err)
	}
	return nil
}
