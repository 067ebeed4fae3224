package unlisten

import (
	"errors"
	"os"
	"testing"

	"github.com/baton-pm/baton/internal/readiness"
	"golang.org/x/sys/unix"
)

// fileID is what an fd number refers to, or "closed".
type fileID struct{ dev, ino uint64 }

func idAt(fd int) (fileID, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileID{}, false
	}
	return fileID{st.Dev, st.Ino}, true
}

// tableAt records what this process's table holds at each number.
func tableAt(numbers ...int) map[int]fileID {
	m := map[int]fileID{}
	for _, n := range numbers {
		if id, ok := idAt(n); ok {
			m[n] = id
		}
	}
	return m
}

func TestInThreadRemovesTheListenersFromEveryEpollSetAndLeavesOurTableAlone(t *testing.T) {
	w := startManySets(t, 150)
	// The numbers the worker uses (3, 4, its dup) are numbers this
	// process uses for its own files: they must be what they were after.
	var numbers []int
	for _, r := range w.regs {
		numbers = append(numbers, r.FD)
	}
	before := tableAt(numbers...)
	if len(before) == 0 {
		t.Fatalf("this process has nothing open at %v: the test would not show that its table is left alone", numbers)
	}

	failed, failures, err := RemoveInThread(w.group)
	if err != nil {
		t.Fatalf("RemoveInThread: %v (this kernel or sandbox refuses unshare(CLONE_FILES); baton falls back to a helper process there)", err)
	}
	if failed != 0 {
		t.Fatalf("%d not removed: %v", failed, failures)
	}
	w.assertNoListenerLeft(t)
	after := tableAt(numbers...)
	if len(after) != len(before) {
		t.Fatalf("this process's table changed: %v before, %v after", before, after)
	}
	for n, id := range before {
		if after[n] != id {
			t.Fatalf("fd %d was %v, is %v: the listener was placed in this process's own table", n, id, after[n])
		}
	}
	// The listeners still accept here: nothing of theirs was closed.
	for _, f := range []*os.File{w.a, w.b} {
		if _, ok := idAt(int(f.Fd())); !ok {
			t.Fatalf("listener fd %d is closed", f.Fd())
		}
	}
}

func TestInThreadRemovesWhatItCanAndCountsTheRest(t *testing.T) {
	a, inoA := listen(t)
	pid, eps := startEpollWorker(t, 2, a)
	probe := readiness.NewProbe([]uint64{inoA})
	fd := int(a.Fd())
	group := []Target{
		{Pid: pid, EpollFD: eps[0], FD: 3, ListenerFD: fd},
		{Pid: pid, EpollFD: 9999, FD: 3, ListenerFD: fd},         // no such epoll fd
		{Pid: 999999999, EpollFD: eps[0], FD: 3, ListenerFD: fd}, // no such process
		{Pid: pid, EpollFD: eps[1], FD: 3, ListenerFD: fd},
	}
	failed, failures, err := RemoveInThread(group)
	if err != nil {
		t.Fatal(err)
	}
	if failed != 2 || len(failures) != 2 {
		t.Fatalf("%d not removed (%v), want 2", failed, failures)
	}
	left := probe.Registrations(pid)
	if len(left) != 1 || left[0].FD == 3 {
		t.Fatalf("left %+v, want only the dup's registration, which was not asked for", left)
	}
}

func TestInThreadRefusesWhatOneTableCannotHold(t *testing.T) {
	for name, group := range map[string][]Target{
		"empty":           nil,
		"standard stream": {{Pid: 1, EpollFD: 5, FD: 2, ListenerFD: 10}},
		"two listeners at one number": {
			{Pid: 1, EpollFD: 5, FD: 3, ListenerFD: 10}, {Pid: 2, EpollFD: 5, FD: 3, ListenerFD: 11},
		},
		"too many": make([]Target, MaxGroup+1),
	} {
		if _, _, err := RemoveInThread(group); err == nil || errors.Is(err, ErrNoPrivateTable) {
			t.Errorf("%s: err = %v, want the group refused", name, err)
		}
	}
}

// Each listener may sit at a number another one must be placed at: every
// listener ends up where its targets want it.
func TestPlaceListenersSwapsNumbers(t *testing.T) {
	p1, p2 := pipe(t), pipe(t)
	x, y := dupAt(t, p1, 900), dupAt(t, p2, 901)
	want := map[int]fileID{}
	want[901], _ = idAt(x) // the file now at 900 goes to 901
	want[900], _ = idAt(y)
	if err := placeListeners([]Target{{FD: 901, ListenerFD: x}, {FD: 900, ListenerFD: y}}); err != nil {
		t.Fatal(err)
	}
	for n, id := range want {
		if got, _ := idAt(n); got != id {
			t.Fatalf("fd %d is %v, want %v", n, got, id)
		}
	}
}

func pipe(t *testing.T) int {
	t.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	return p[0]
}

func dupAt(t *testing.T, fd, at int) int {
	t.Helper()
	if _, ok := idAt(at); ok {
		t.Fatalf("fd %d is in use", at)
	}
	if err := unix.Dup3(fd, at, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(at) })
	return at
}
