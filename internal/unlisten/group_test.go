package unlisten

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/readiness"
	"golang.org/x/sys/unix"
)

// epollWorkerEnv makes the test binary an epoll worker (see epollWorker).
const epollWorkerEnv = "BATON_UNLISTEN_TEST_EPOLL_SETS"

// epollWorker is a worker with many epoll sets: each of n sets watches
// fd 3 (a listener) and a pipe for input; the first also watches a dup of
// fd 3 at another number (as Go's poller does) and fd 4 when it is open (a
// second listener). It prints its epoll fds on one line and waits.
func epollWorker(n int) {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "epoll worker:", err)
		os.Exit(2)
	}
	_, err := unix.FcntlInt(4, unix.F_GETFD, 0)
	has4 := err == nil
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		fail(err)
	}
	dup, err := unix.Dup(3)
	if err != nil {
		fail(err)
	}
	add := func(ep, fd int) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			fail(fmt.Errorf("epoll_ctl(ADD %d): %w", fd, err))
		}
	}
	var eps []string
	for i := range n {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			fail(err)
		}
		add(ep, 3)
		add(ep, p[0])
		if i == 0 {
			add(ep, dup)
			if has4 {
				add(ep, 4)
			}
		}
		eps = append(eps, strconv.Itoa(ep))
	}
	fmt.Println(strings.Join(eps, " "))
	time.Sleep(time.Hour)
}

// listen returns a listener's file (a dup the test holds) and its inode.
func listen(t *testing.T) (*os.File, uint64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	ino, err := readiness.SocketInode(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return f, ino
}

// startEpollWorker starts an epollWorker with n sets and files as fds 3,
// 4, ... and returns its pid and epoll fds once they are set up.
func startEpollWorker(t *testing.T, n int, files ...*os.File) (int, []int) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), epollWorkerEnv+"="+strconv.Itoa(n))
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("epoll worker: %v", err)
	}
	var eps []int
	for _, s := range strings.Fields(line) {
		ep, _ := strconv.Atoi(s)
		eps = append(eps, ep)
	}
	if len(eps) != n {
		t.Fatalf("epoll worker reported %d epoll fds, want %d", len(eps), n)
	}
	return cmd.Process.Pid, eps
}

// watched counts, from /proc/PID/fdinfo/EPFD, the registrations of the
// epoll set by socket or pipe inode.
func watched(t *testing.T, pid, epfd int) map[uint64]int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, epfd))
	if err != nil {
		t.Fatal(err)
	}
	byIno := map[uint64]int{}
	for line := range strings.Lines(string(data)) {
		if !strings.HasPrefix(line, "tfd:") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "ino:"); ok {
				ino, err := strconv.ParseUint(v, 16, 64)
				if err != nil {
					t.Fatalf("fdinfo line %q", line)
				}
				byIno[ino]++
			}
		}
	}
	return byIno
}

// targets maps registrations to the listeners the test holds, by inode.
func targets(regs []readiness.Registration, byInode map[uint64]*os.File) []Target {
	var ts []Target
	for _, r := range regs {
		ts = append(ts, Target{Pid: r.Pid, EpollFD: r.EpollFD, FD: r.FD, ListenerFD: int(byInode[r.Inode].Fd())})
	}
	return ts
}

// run starts the helper for group, waits for it and returns its exit code.
func run(t *testing.T, group []Target) int {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := Start(self, group)
	if err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	if !ws.Exited() {
		t.Fatalf("helper: %v", ws)
	}
	return ws.ExitStatus()
}

// manySets is a worker with sets epoll sets that each watch listener a
// at fd 3 and a pipe (the first also a dup of fd 3, and listener b at fd
// 4), and the one group Plan makes of its listeners' registrations.
type manySets struct {
	pid        int
	eps        []int
	probe      *readiness.Probe
	regs       []readiness.Registration
	group      []Target
	a, b       *os.File
	inoA, inoB uint64
}

func startManySets(t *testing.T, sets int) manySets {
	t.Helper()
	var w manySets
	w.a, w.inoA = listen(t)
	w.b, w.inoB = listen(t)
	w.pid, w.eps = startEpollWorker(t, sets, w.a, w.b)
	w.probe = readiness.NewProbe([]uint64{w.inoA, w.inoB})
	w.regs = w.probe.Registrations(w.pid)
	// fd 3 in every set, plus its dup and fd 4 in the first.
	if len(w.regs) != sets+2 {
		t.Fatalf("%d registrations of the listeners, want %d", len(w.regs), sets+2)
	}
	groups := Plan(targets(w.regs, map[uint64]*os.File{w.inoA: w.a, w.inoB: w.b}))
	if len(groups) != 1 {
		t.Fatalf("Plan made %d groups, want one for the whole worker", len(groups))
	}
	w.group = groups[0]
	return w
}

// assertNoListenerLeft checks that no epoll set of w watches a listener
// any more.
func (w manySets) assertNoListenerLeft(t *testing.T) {
	t.Helper()
	if left := w.probe.Registrations(w.pid); len(left) != 0 {
		t.Fatalf("%d registrations left: %+v", len(left), left)
	}
	for _, ep := range w.eps {
		if got := watched(t, w.pid, ep); got[w.inoA] != 0 || got[w.inoB] != 0 {
			t.Fatalf("epoll fd %d still watches a listener: %v", ep, got)
		}
	}
}

func TestOneHelperRemovesTheListenersFromEveryEpollSet(t *testing.T) {
	const sets = 150
	w := startManySets(t, sets)
	pipeIno := uint64(0)
	for ino := range watched(t, w.pid, w.eps[0]) {
		if ino != w.inoA && ino != w.inoB {
			pipeIno = ino
		}
	}
	began := time.Now()
	if code := run(t, w.group); code != 0 {
		t.Fatalf("helper exited %d, want 0", code)
	}
	t.Logf("one helper removed %d registrations from %d epoll sets in %v", len(w.regs), sets, time.Since(began))

	w.assertNoListenerLeft(t)
	for _, ep := range w.eps {
		if got := watched(t, w.pid, ep); got[pipeIno] != 1 || len(got) != 1 {
			t.Fatalf("epoll fd %d watches %v, want only its pipe (inode %d) left", ep, got, pipeIno)
		}
	}
	if err := syscall.Kill(w.pid, 0); err != nil {
		t.Fatalf("the worker did not survive: %v", err)
	}
}

func TestDifferentListenersAtOneFdNumberGetOneHelperEach(t *testing.T) {
	a, inoA := listen(t)
	b, inoB := listen(t)
	// Two processes of one tree hold different listeners at fd 3.
	pid1, _ := startEpollWorker(t, 3, a)
	pid2, _ := startEpollWorker(t, 2, b)
	probe := readiness.NewProbe([]uint64{inoA, inoB})
	regs := append(probe.Registrations(pid1), probe.Registrations(pid2)...)
	if len(regs) != 3+1+2+1 {
		t.Fatalf("%d registrations, want 7", len(regs))
	}

	groups := Plan(targets(regs, map[uint64]*os.File{inoA: a, inoB: b}))
	if len(groups) != 2 {
		t.Fatalf("Plan made %d groups, want 2: %v", len(groups), groups)
	}
	for _, g := range groups {
		if code := run(t, g); code != 0 {
			t.Fatalf("helper for %v exited %d", g, code)
		}
	}
	for _, pid := range []int{pid1, pid2} {
		if left := probe.Registrations(pid); len(left) != 0 {
			t.Errorf("pid %d: registrations left: %+v", pid, left)
		}
	}
}

func TestHelperRemovesWhatItCanAndCountsTheRest(t *testing.T) {
	a, inoA := listen(t)
	pid, eps := startEpollWorker(t, 2, a)
	probe := readiness.NewProbe([]uint64{inoA})
	if n := len(probe.Registrations(pid)); n != 3 {
		t.Fatalf("%d registrations, want 3", n)
	}
	fd := int(a.Fd())
	group := []Target{
		{Pid: pid, EpollFD: eps[0], FD: 3, ListenerFD: fd},
		{Pid: pid, EpollFD: 9999, FD: 3, ListenerFD: fd},         // no such epoll fd
		{Pid: 999999999, EpollFD: eps[0], FD: 3, ListenerFD: fd}, // no such process
		{Pid: pid, EpollFD: eps[1], FD: 3, ListenerFD: fd},
	}
	code := run(t, group)
	if code != 2 || NotRemoved(code, len(group)) != 2 {
		t.Fatalf("helper exited %d, want 2 (registrations not removed)", code)
	}
	left := probe.Registrations(pid)
	if len(left) != 1 || left[0].FD == 3 {
		t.Fatalf("left %+v, want only the dup's registration, which was not asked for", left)
	}
}

func TestPlanGroupsByFdNumberAndSize(t *testing.T) {
	tg := func(pid, fd, listener int) Target { return Target{Pid: pid, EpollFD: 5, FD: fd, ListenerFD: listener} }
	sizes := func(groups [][]Target) []int {
		var n []int
		for _, g := range groups {
			n = append(n, len(g))
		}
		return n
	}
	if g := Plan(nil); len(g) != 0 {
		t.Errorf("Plan(nil) = %v", g)
	}
	// One listener at two numbers, another at a third: one helper.
	same := []Target{tg(1, 3, 10), tg(1, 7, 10), tg(2, 3, 10), tg(2, 4, 11)}
	if g := Plan(same); !slices.Equal(sizes(g), []int{4}) {
		t.Errorf("one consistent mapping: groups %v, want one of 4", sizes(g))
	}
	// fd 3 is listener 10 in pid 1 and 11 in pid 2.
	g := Plan([]Target{tg(1, 3, 10), tg(2, 3, 11), tg(1, 4, 11), tg(2, 4, 10), tg(3, 3, 10)})
	if !slices.Equal(sizes(g), []int{3, 2}) {
		t.Fatalf("conflicting fd 3: groups %v, want 3 and 2", g)
	}
	for _, group := range g {
		at := map[int]int{}
		for _, t2 := range group {
			if l, ok := at[t2.FD]; ok && l != t2.ListenerFD {
				t.Errorf("group %v maps fd %d to two listeners", group, t2.FD)
			}
			at[t2.FD] = t2.ListenerFD
		}
	}
	// A standard stream's number fails alone.
	if g := Plan([]Target{tg(1, 3, 10), tg(1, 0, 10), tg(2, 3, 10)}); !slices.Equal(sizes(g), []int{2, 1}) {
		t.Errorf("fd 0: groups %v, want 2 and 1", sizes(g))
	}
	// Beyond MaxGroup: more helpers.
	var many []Target
	for i := range 2*MaxGroup + 1 {
		many = append(many, tg(i, 3, 10))
	}
	if g := Plan(many); !slices.Equal(sizes(g), []int{MaxGroup, MaxGroup, 1}) {
		t.Errorf("%d targets: groups %v", len(many), sizes(g))
	}
}

func TestStartRefusesWhatOneHelperCannotDo(t *testing.T) {
	for name, group := range map[string][]Target{
		"empty":           nil,
		"standard stream": {{Pid: 1, EpollFD: 5, FD: 2, ListenerFD: 10}},
		"two listeners at one number": {
			{Pid: 1, EpollFD: 5, FD: 3, ListenerFD: 10}, {Pid: 2, EpollFD: 5, FD: 3, ListenerFD: 11},
		},
		"too many": make([]Target, MaxGroup+1),
	} {
		if pid, err := Start("/nonexistent", group); err == nil {
			t.Errorf("%s: Start = %d, nil; want an error", name, pid)
		}
	}
}

func TestNotRemoved(t *testing.T) {
	for _, c := range []struct{ code, n, want int }{
		{0, 5, 0}, {3, 5, 3}, {7, 5, 5}, {ExitUsage - 1, 500, 500}, {ExitUsage, 5, 5}, {-1, 5, 5},
	} {
		if got := NotRemoved(c.code, c.n); got != c.want {
			t.Errorf("NotRemoved(%d, %d) = %d, want %d", c.code, c.n, got, c.want)
		}
	}
}
