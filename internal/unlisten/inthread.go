package unlisten

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Removing registrations without a helper process. The DEL must come from
// a file descriptor table that holds each listener at the number the worker
// registered it with, and the master's table uses those numbers for files
// of its own. But a thread can have a table of its own: after
// unshare(CLONE_FILES) a thread's table is a private copy, where a dup2
// replaces only the copy's entry. RemoveInThread does the helper's work on
// such a thread, which ends with it (a goroutine that exits locked to its
// thread takes the thread with it), so the private table and every file it
// held are dropped and nothing else ever runs there. A reload of 64
// workers then costs no fork and exec of baton (about 2.5 ms of CPU each,
// measured, most of it the Go runtime's start), at the moment the new
// workers need the CPU most.
//
// The thread that ends must not be one a child was forked from with a
// parent-death signal (it would fire): the master forks its children only
// from its own locked thread, which this one never is.
//
// Dropping the private copy closes its entries: harmless for a file the
// shared table still holds (epoll, for one, forgets a registration only
// when its file's last descriptor closes), but it would release POSIX
// record locks, which belong to the process and go with any close. baton
// takes none.

// ErrNoPrivateTable is returned when no thread with a private file table
// could be had (unshare refused, in a sandbox that filters it): the caller
// uses a helper process instead.
var ErrNoPrivateTable = errors.New("unshare(CLONE_FILES) refused")

// RemoveInThread removes every registration of group, a group Plan made,
// from this process and returns how many it could not remove, with the
// reason of each in failures. It fails as a whole, having tried nothing,
// only when it cannot get a private file table (errors.Is
// ErrNoPrivateTable) or group is not one Plan could make.
func RemoveInThread(group []Target) (notRemoved int, failures []error, err error) {
	if err := checkGroup(group); err != nil {
		return 0, nil, err
	}
	type result struct {
		failed   int
		failures []error
		err      error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_FILES); err != nil {
			// The table is still the shared one: the thread may be reused.
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("%w: %v", ErrNoPrivateTable, err)}
			return
		}
		// Not unlocked: the thread, private table and all, ends here.
		var r result
		if err := placeListeners(group); err != nil {
			r.failed = len(group)
			r.failures = []error{err}
		} else {
			r.failed = removeAll(group, func(t Target, err error) {
				r.failures = append(r.failures, fmt.Errorf("pid %d, epoll fd %d, fd %d: %w", t.Pid, t.EpollFD, t.FD, err))
			})
		}
		done <- r
	}()
	r := <-done
	return r.failed, r.failures, r.err
}

// checkGroup refuses what one table cannot hold: a standard stream's
// number, two listeners at one number, more than MaxGroup.
func checkGroup(group []Target) error {
	if len(group) == 0 || len(group) > MaxGroup {
		return fmt.Errorf("unlisten: %d registrations in one group, want 1 to %d", len(group), MaxGroup)
	}
	at := map[int]int{}
	for _, t := range group {
		if t.FD < 3 {
			return fmt.Errorf("unlisten: fd %d of pid %d is a standard stream", t.FD, t.Pid)
		}
		if l, ok := at[t.FD]; ok && l != t.ListenerFD {
			return fmt.Errorf("unlisten: fd %d is two listeners in one group (%d and %d)", t.FD, l, t.ListenerFD)
		}
		at[t.FD] = t.ListenerFD
	}
	return nil
}

// placeListeners puts each target's listener at its fd number in this
// thread's private table. A listener's own number may be another target's
// number: each is first copied above every number in use, so that no
// placement overwrites a listener still to be placed.
func placeListeners(group []Target) error {
	top := 0
	for _, t := range group {
		top = max(top, t.FD, t.ListenerFD)
	}
	moved := map[int]int{} // the master's number -> its copy above top
	for _, t := range group {
		if _, ok := moved[t.ListenerFD]; ok {
			continue
		}
		fd, err := unix.FcntlInt(uintptr(t.ListenerFD), unix.F_DUPFD_CLOEXEC, top+1)
		if err != nil {
			return fmt.Errorf("copy listener fd %d: %w", t.ListenerFD, err)
		}
		moved[t.ListenerFD] = fd
	}
	for _, t := range group {
		if err := unix.Dup3(moved[t.ListenerFD], t.FD, unix.O_CLOEXEC); err != nil {
			return fmt.Errorf("place listener fd %d at %d: %w", t.ListenerFD, t.FD, err)
		}
	}
	return nil
}
