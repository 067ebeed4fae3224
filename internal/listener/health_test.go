package listener

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary a helper process that holds a listener as
// fd 3, the way a worker inherits it: "shutdown RD|WR|RDWR" shuts it down
// and exits; "accept-one" waits for a connection with an edge-triggered
// epoll, as Go's netpoller does, and answers the first one it accepts.
const helperEnv = "BATON_LISTENER_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(runHelper(mode))
	}
	os.Exit(m.Run())
}

func runHelper(mode string) int {
	const fd = 3
	switch {
	case strings.HasPrefix(mode, "shutdown "):
		how := map[string]int{"RD": unix.SHUT_RD, "WR": unix.SHUT_WR, "RDWR": unix.SHUT_RDWR}[strings.TrimPrefix(mode, "shutdown ")]
		// ENOTCONN: the socket was shut down already; the call still
		// sets its shutdown flags, which is what some tests want.
		if err := unix.Shutdown(fd, how); err != nil && !errors.Is(err, unix.ENOTCONN) {
			fmt.Fprintln(os.Stderr, "helper: shutdown:", err)
			return 2
		}
		return 0
	case mode == "accept-one":
		return acceptOne(fd)
	}
	fmt.Fprintln(os.Stderr, "helper: unknown mode", mode)
	return 2
}

// acceptOne registers fd in an edge-triggered epoll set before the test
// shuts it down, says so on stdout, reports each event and each failed
// accept on stdout, and answers the first connection it accepts.
func acceptOne(fd int) int {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return 2
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(fd)}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return 2
	}
	fmt.Println("registered")
	events := make([]unix.EpollEvent, 1)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		n, err := unix.EpollWait(ep, events, 100)
		if n < 1 || err != nil {
			continue
		}
		fmt.Printf("events %#x\n", events[0].Events)
		conn, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
		if err != nil {
			fmt.Printf("accept: %v\n", err)
			continue
		}
		unix.Write(conn, []byte("accepted by the helper\n"))
		unix.Close(conn)
		return 0
	}
	return 1
}

// helper starts the test binary as a helper process holding l as fd 3,
// with a fork and exec like the master's, and returns its pid and stdout.
// syscall.ForkExec places the descriptor without (*os.File).Fd, which would
// make the shared socket blocking.
func helper(t *testing.T, l *Listener, mode string) (int, *bufio.Reader) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	t.Cleanup(func() { r.Close() })
	pid, err := syscall.ForkExec(os.Args[0], []string{os.Args[0]}, &syscall.ProcAttr{
		// A -race helper would otherwise sleep a second at exit.
		Env:   append(os.Environ(), helperEnv+"="+mode, "GORACE=atexit_sleep_ms=0"),
		Files: []uintptr{0, w.Fd(), 2, uintptr(l.FD())},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Kill(pid, unix.SIGKILL)
		var ws unix.WaitStatus
		unix.Wait4(pid, &ws, 0, nil)
	})
	return pid, bufio.NewReader(r)
}

// waitHelper waits for the helper and fails the test unless it exited 0.
func waitHelper(t *testing.T, pid int) {
	t.Helper()
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("helper %d: %v", pid, ws)
	}
}

// shutDownFromChild makes another process that shares l shut it down, as
// a worker's SIGTERM handler does.
func shutDownFromChild(t *testing.T, l *Listener, how string) {
	t.Helper()
	pid, _ := helper(t, l, "shutdown "+how)
	waitHelper(t, pid)
}

func dial(l *Listener) (net.Conn, error) {
	if path, ok := strings.CutPrefix(l.Addr, "unix:"); ok {
		return net.DialTimeout("unix", path, 5*time.Second)
	}
	return net.DialTimeout("tcp", l.Addr, 5*time.Second)
}

// assertServes dials l and accepts the connection on it.
func assertServes(t *testing.T, l *Listener) {
	t.Helper()
	conn, err := dial(l)
	if err != nil {
		t.Fatalf("dial %s: %v", l.Addr, err)
	}
	defer conn.Close()
	var accepted int
	ok := waitUntil(func() bool {
		accepted, _, err = unix.Accept4(l.FD(), unix.SOCK_CLOEXEC)
		return err == nil
	})
	if !ok {
		t.Fatalf("accept on %s: %v", l.Addr, err)
	}
	defer unix.Close(accepted)
	if _, err := unix.Write(accepted, []byte("x")); err != nil {
		t.Fatalf("write to the accepted connection: %v", err)
	}
	buf := make([]byte, 1)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("client read: %v", err)
	}
}

func waitUntil(cond func() bool) bool {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return false
}

func acceptConn(t *testing.T, l *Listener) bool {
	t.Helper()
	v, err := unix.GetsockoptInt(l.FD(), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		t.Fatal(err)
	}
	return v == 1
}

// freeTCPAddr is a loopback address with a port nothing uses now.
func freeTCPAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestHealthyListenersPassCheckAndRearmIsANoOp(t *testing.T) {
	ls := map[string]*Listener{
		"tcp4": openOne(t, Spec{Name: "v4", Network: "tcp", Address: "127.0.0.1:0"}),
		"tcp6": openOne(t, Spec{Name: "v6", Network: "tcp", Address: "[::1]:0"}),
		"unix": openOne(t, Spec{Name: "u", Network: "unix", Address: filepath.Join(t.TempDir(), "u.sock"), UnixMode: 0o600}),
	}
	for kind, l := range ls {
		// A connection waiting to be accepted makes the socket readable;
		// that is no problem.
		conn, err := dial(l)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := l.Check(); err != nil {
			t.Errorf("%s: Check = %v, want nil", kind, err)
		}
		if err := l.Rearm(); err != nil {
			t.Errorf("%s: Rearm of a healthy listener = %v, want nil", kind, err)
		}
		pending, _, err := unix.Accept4(l.FD(), unix.SOCK_CLOEXEC)
		if err != nil {
			t.Fatalf("%s: the waiting connection: %v", kind, err)
		}
		unix.Close(pending)
		assertServes(t, l)
	}
}

// The real case: a worker that inherited the listener shuts it down. TCP
// listeners stop listening for everyone, and Rearm brings them back on the
// same address, also when the kernel chose the port (the shutdown released
// it).
func TestTCPListenerShutDownByAnotherProcessIsFoundAndRearmed(t *testing.T) {
	for _, where := range []string{"127.0.0.1:0", "[::1]:0", "explicit port"} {
		for _, how := range []string{"RDWR", "RD"} {
			t.Run(where+" SHUT_"+how, func(t *testing.T) {
				addr := where
				if addr == "explicit port" {
					addr = freeTCPAddr(t)
				}
				l := openOne(t, Spec{Name: "web", Network: "tcp", Address: addr})
				queued, err := dial(l)
				if err != nil {
					t.Fatal(err)
				}
				defer queued.Close()

				shutDownFromChild(t, l, how)
				err = l.Check()
				if !errors.Is(err, ErrNotListening) || !strings.Contains(err.Error(), "web") {
					t.Fatalf("Check after shutdown = %v, want ErrNotListening naming the listener", err)
				}
				t.Logf("Check: %v", err)
				if acceptConn(t, l) {
					t.Error("SO_ACCEPTCONN is still 1")
				}
				// The connection that waited in the accept queue was reset.
				queued.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := queued.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
					t.Errorf("queued connection read: %v, want ECONNRESET", err)
				}
				if c, err := dial(l); err == nil {
					c.Close()
					t.Fatal("a connection to the shut-down listener succeeded")
				}

				if err := l.Rearm(); err != nil {
					t.Fatalf("Rearm: %v", err)
				}
				if err := l.Check(); err != nil {
					t.Fatalf("Check after Rearm: %v", err)
				}
				if sa, _ := unix.Getsockname(l.FD()); formatSockaddr(sa) != l.Addr {
					t.Fatalf("re-armed on %s, want %s", formatSockaddr(sa), l.Addr)
				}
				if !isNonblocking(t, l.FD()) {
					t.Error("re-armed socket is blocking")
				}
				assertServes(t, l)
			})
		}
	}
}

// After one re-arm the port is bound explicitly, so a second shutdown does
// not release it; Rearm works any number of times.
func TestRearmWorksAgainAndAgain(t *testing.T) {
	l := openOne(t, Spec{Name: "web", Network: "tcp", Address: "127.0.0.1:0"})
	for i := range 3 {
		shutDownFromChild(t, l, "RDWR")
		if err := l.Rearm(); err != nil {
			t.Fatalf("Rearm %d: %v", i, err)
		}
		assertServes(t, l)
	}
}

// A socket bound to port 0 loses its port at the shutdown; if another
// socket takes it meanwhile, Rearm says so (and may succeed later).
func TestRearmReportsAPortTakenMeanwhile(t *testing.T) {
	l := openOne(t, Spec{Name: "web", Network: "tcp", Address: "127.0.0.1:0"})
	shutDownFromChild(t, l, "RDWR")
	thief, err := net.Listen("tcp", l.Addr)
	if err != nil {
		t.Fatalf("the released port %s cannot be bound: %v", l.Addr, err)
	}
	err = l.Rearm()
	thief.Close()
	if err == nil || errors.Is(err, ErrCannotRearm) || !strings.Contains(err.Error(), "another socket took it") {
		t.Fatalf("Rearm with the port taken = %v, want a passing error saying so", err)
	}
	if err := l.Rearm(); err != nil {
		t.Fatalf("Rearm once the port is free again: %v", err)
	}
	assertServes(t, l)
}

// A worker blocked in epoll on the listener is woken by the shutdown (its
// accept fails), and the registration it made before the shutdown delivers
// the connections that come after Rearm: running workers need no restart.
func TestWorkerWaitingInEpollServesAgainAfterRearm(t *testing.T) {
	l := openOne(t, Spec{Name: "web", Network: "tcp", Address: "127.0.0.1:0"})
	worker, out := helper(t, l, "accept-one")
	if line, err := out.ReadString('\n'); line != "registered\n" {
		t.Fatalf("helper: %q, %v", line, err)
	}
	shutDownFromChild(t, l, "RDWR")
	// It is woken at once and its accept fails with EINVAL.
	for _, want := range []string{"events", "accept: invalid argument"} {
		if line, err := out.ReadString('\n'); !strings.HasPrefix(line, want) {
			t.Fatalf("helper after the shutdown: %q, %v; want %q", line, err, want)
		}
	}
	if err := l.Rearm(); err != nil {
		t.Fatal(err)
	}
	conn, err := dial(l)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if reply != "accepted by the helper\n" {
		t.Fatalf("reply %q, %v: the worker's old epoll registration did not deliver the new connection", reply, err)
	}
	waitHelper(t, worker)
}

// A unix listener that was shut down still reads SO_ACCEPTCONN 1 but
// refuses connections, and listen(2) cannot bring it back.
func TestUnixListenerShutDownIsFoundAndCannotBeRearmed(t *testing.T) {
	for _, how := range []string{"RDWR", "RD"} {
		t.Run("SHUT_"+how, func(t *testing.T) {
			l := openOne(t, Spec{Name: "app", Network: "unix", Address: filepath.Join(t.TempDir(), "app.sock"), UnixMode: 0o600})
			shutDownFromChild(t, l, how)
			if !acceptConn(t, l) {
				t.Error("SO_ACCEPTCONN reads 0; the facts in health.go say 1")
			}
			err := l.Check()
			if !errors.Is(err, ErrNotListening) || !strings.Contains(err.Error(), "app") {
				t.Fatalf("Check = %v, want ErrNotListening naming the listener", err)
			}
			t.Logf("Check: %v", err)
			err = l.Rearm()
			if !errors.Is(err, ErrCannotRearm) || !strings.Contains(err.Error(), "restart baton") {
				t.Fatalf("Rearm = %v, want ErrCannotRearm saying to restart", err)
			}
			t.Logf("Rearm: %v", err)
			// Not even a listen(2) by hand brings it back.
			if err := unix.Listen(l.FD(), 16); err != nil {
				t.Fatal(err)
			}
			if c, err := dial(l); !errors.Is(err, syscall.ECONNREFUSED) {
				if c != nil {
					c.Close()
				}
				t.Fatalf("dial after listen(2) again: %v, want ECONNREFUSED", err)
			}
		})
	}
}

// shutdown(SHUT_WR) alone harms no listener.
func TestShutWROnlyLeavesTheListenerWorking(t *testing.T) {
	for _, spec := range []Spec{
		{Name: "v4", Network: "tcp", Address: "127.0.0.1:0"},
		{Name: "u", Network: "unix", Address: filepath.Join(t.TempDir(), "u.sock"), UnixMode: 0o600},
	} {
		l := openOne(t, spec)
		shutDownFromChild(t, l, "WR")
		if err := l.Check(); err != nil {
			t.Errorf("%s: Check after SHUT_WR = %v, want nil", spec.Network, err)
		}
		assertServes(t, l)
	}
}

// An inherited socket (fd://N, systemd, an upgrade's handover) is re-armed
// with the backlog it had, read from TCP_INFO.
func TestRearmOfAnAdoptedSocketKeepsItsBacklog(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 7); err != nil {
		t.Fatal(err)
	}
	l := openOne(t, Spec{Name: "inherited", Network: "fd", FD: fd})
	shutDownFromChild(t, l, "RDWR")
	if err := l.Rearm(); err != nil {
		t.Fatal(err)
	}
	info, err := unix.GetsockoptTCPInfo(l.FD(), unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	if info.Sacked != 7 {
		t.Errorf("backlog after Rearm = %d, want 7", info.Sacked)
	}
	assertServes(t, l)
}

// drain empties ch after a moment.
func drain(ch chan *Listener) {
	time.Sleep(50 * time.Millisecond)
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}

// The watcher is told of each shutdown at once, also after a Rearm, and
// not of the connections a listener receives.
func TestWatcherSeesEveryShutdownAndNoConnection(t *testing.T) {
	tcp := openOne(t, Spec{Name: "web", Network: "tcp", Address: "127.0.0.1:0"})
	sock := openOne(t, Spec{Name: "app", Network: "unix", Address: filepath.Join(t.TempDir(), "app.sock"), UnixMode: 0o600})
	found := make(chan *Listener, 100)
	w, err := Watch([]*Listener{tcp, sock}, func(l *Listener) { found <- l })
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	expect := func(want *Listener, what string) {
		t.Helper()
		select {
		case l := <-found:
			if l != want {
				t.Fatalf("%s: the watcher reported %s, want %s", what, l.Name, want.Name)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: the watcher reported nothing", what)
		}
	}
	expectNothing := func(what string) {
		t.Helper()
		select {
		case l := <-found:
			t.Fatalf("%s: the watcher reported %s", what, l.Name)
		case <-time.After(100 * time.Millisecond):
		}
	}

	for range 50 {
		assertServes(t, tcp)
		assertServes(t, sock)
	}
	expectNothing("after 100 connections")

	for i := range 2 {
		shutDownFromChild(t, tcp, "RDWR")
		expect(tcp, fmt.Sprintf("TCP shutdown %d", i+1))
		if err := tcp.Rearm(); err != nil {
			t.Fatal(err)
		}
		assertServes(t, tcp)
		// Rearm's own connect(AF_UNSPEC) changes the state too: the
		// watcher may report that, which is allowed.
		drain(found)
	}
	shutDownFromChild(t, sock, "RD")
	expect(sock, "unix shutdown")
	expectNothing("after the shutdowns")

	done := make(chan struct{})
	go func() { w.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
}

// Check's sock_diag lookup must find healthy listeners, or it would skip
// the one check that sees stale shutdown flags.
func TestSockDiagFindsTheListener(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "0.0.0.0:0", freeTCPAddr(t)} {
		l := openOne(t, Spec{Name: "web", Network: "tcp", Address: addr})
		flags, err := inetShutdownFlags(l.fd, l.family)
		if err != nil || flags != 0 {
			t.Errorf("%s: sock_diag shutdown flags = %d, %v; want 0, nil", addr, flags, err)
		}
	}
}

// Two workers stop at once: the second shutdown finds the socket shut down
// already (ENOTCONN) but still sets its flags. A bare listen(2) then makes
// a listener whose connections are all born shut down; Check sees it, and
// Rearm clears the flags.
func TestStaleShutdownFlagsAreFoundAndCleared(t *testing.T) {
	for _, second := range []string{"RDWR", "WR"} {
		t.Run("second SHUT_"+second, func(t *testing.T) {
			l := openOne(t, Spec{Name: "web", Network: "tcp", Address: "127.0.0.1:0"})
			shutDownFromChild(t, l, "RDWR")
			shutDownFromChild(t, l, second)
			// A naive re-arm, or a worker that calls listen itself.
			if err := unix.Bind(l.FD(), l.bound); err != nil {
				t.Fatal(err)
			}
			if err := unix.Listen(l.FD(), 16); err != nil {
				t.Fatal(err)
			}
			if !acceptConn(t, l) {
				t.Fatal("SO_ACCEPTCONN reads 0 after listen")
			}
			err := l.Check()
			if !errors.Is(err, ErrNotListening) || !strings.Contains(err.Error(), "shutdown flags") {
				t.Fatalf("Check = %v, want ErrNotListening about the shutdown flags", err)
			}
			t.Logf("Check: %v", err)
			if err := l.Rearm(); err != nil {
				t.Fatalf("Rearm: %v", err)
			}
			if err := l.Check(); err != nil {
				t.Fatalf("Check after Rearm: %v", err)
			}
			assertServes(t, l) // writes to the accepted connection
		})
	}
}

func BenchmarkCheck(b *testing.B) {
	for _, spec := range []Spec{
		{Name: "tcp", Network: "tcp", Address: "127.0.0.1:0", Backlog: 16},
		{Name: "unix", Network: "unix", Address: filepath.Join(b.TempDir(), "u.sock"), Backlog: 16, UnixMode: 0o600},
	} {
		ls, err := Open([]Spec{spec})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(spec.Name, func(b *testing.B) {
			for b.Loop() {
				if err := ls[0].Check(); err != nil {
					b.Fatal(err)
				}
			}
		})
		CloseAll(ls)
	}
}

// A Watch callback and the master's loop may re-arm at the same moment.
func TestConcurrentRearmsTakeTurns(t *testing.T) {
	l := openOne(t, Spec{Name: "web", Network: "tcp", Address: "127.0.0.1:0"})
	for range 5 {
		shutDownFromChild(t, l, "RDWR")
		errs := make(chan error, 4)
		for range 4 {
			go func() { errs <- l.Rearm() }()
		}
		for range 4 {
			if err := <-errs; err != nil {
				t.Fatalf("Rearm: %v", err)
			}
		}
		assertServes(t, l)
	}
}
