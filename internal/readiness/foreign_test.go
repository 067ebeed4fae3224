package readiness

import (
	"errors"
	"fmt"
	"github.com/baton-pm/baton/internal/sockdiag"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// A worker's tree that listens on sockets of its own, besides the one it
// inherited as fd 3: one in the worker, one in a child, on IPv4 and IPv6,
// and a mere connection. Only the two listening ones are foreign.
func TestForeignListenersAreTheTreesOwnListeningSockets(t *testing.T) {
	f, ino := listenerFile(t)
	inherited := f.Name()
	ports := filepath.Join(t.TempDir(), "ports")
	cmd := startPython(t, f, fmt.Sprintf(`
a = socket.socket(); a.bind(("127.0.0.1", 0)); a.listen()
c = socket.create_connection(a.getsockname())  # a connection, not a listener
if os.fork() == 0:
    b = socket.socket(socket.AF_INET6); b.bind(("::1", 0)); b.listen()
    open(%[1]q + ".tmp", "w").write("%%d %%d" %% (a.getsockname()[1], b.getsockname()[1]))
    os.rename(%[1]q + ".tmp", %[1]q)
    time.sleep(600)
os.wait()
`, ports))
	var four, six int
	deadline := time.Now().Add(15 * time.Second)
	for {
		data, err := os.ReadFile(ports)
		if err == nil {
			fmt.Sscanf(string(data), "%d %d", &four, &six)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the worker never wrote its ports")
		}
		time.Sleep(20 * time.Millisecond)
	}
	p := NewProbe([]uint64{ino})
	got := p.ForeignListeners([]int{cmd.Process.Pid, os.Getpid()})[cmd.Process.Pid]
	want := []string{fmt.Sprintf("127.0.0.1:%d", four), fmt.Sprintf("[::1]:%d", six)}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("foreign listeners %q, want %q (not fd 3, %s, nor the connection)", got, want, inherited)
	}
}

// A tree that listens only on what it inherited has none.
func TestNoForeignListenersOnTheInheritedSocket(t *testing.T) {
	f, ino := listenerFile(t)
	cmd := startPython(t, f, wrapFD3+"s2 = socket.socket(fileno=os.dup(3))\nselect.select([s], [], [])")
	p := NewProbe([]uint64{ino})
	waitUntilWaiting(t, p, cmd.Process.Pid)
	if got := p.ForeignListeners([]int{cmd.Process.Pid}); len(got) != 0 {
		t.Errorf("foreign listeners %v for a worker that only uses fd 3", got)
	}
}

func TestParseListening(t *testing.T) {
	for line, want := range map[string]string{
		"   0: 0100007F:4B5C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1076 1 0 100 0 0 10 0":                         "127.0.0.1:19292",
		"   1: 00000000:2454 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1077 1 0 100 0 0 10 0":                         "0.0.0.0:9300",
		"   2: 00000000000000000000000000000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1078 1 0": "[::]:3000",
		"   3: 0000000000000000FFFF00000100007F:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1079 1 0": "127.0.0.1:80",
		"   4: 0100007F:4B5C 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1080 1 0 100 0 0 10 0":                         "",
		"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode":                                         "",
	} {
		_, addr, ok := parseListening(line)
		if addr != want || ok != (want != "") {
			t.Errorf("%s: got %q %v, want %q", strings.TrimSpace(line)[:20], addr, ok, want)
		}
		if isListening([]byte(line)) != (want != "") {
			t.Errorf("%s: isListening = %v", strings.TrimSpace(line)[:20], !(want != ""))
		}
	}
}

// The namespace's listening sockets read through sock_diag (this process's
// namespace) and from /proc/PID/net/tcp{,6} (any other) are the same table.
func TestListeningSocketsFromSockDiagAndProcAgree(t *testing.T) {
	var mine []uint64
	for _, addr := range []string{"127.0.0.1:0", "0.0.0.0:0", "[::1]:0", "[::]:0"} {
		_, ino, err := listenerInode(t, "tcp", addr)
		if err != nil {
			t.Logf("%s: %v", addr, err)
			continue
		}
		mine = append(mine, ino)
	}
	ns := ownNetNS(t)
	if _, err := sockdiag.Listening(); err != nil {
		t.Fatalf("sock_diag: %v: the test would compare /proc with itself", err)
	}
	diag, proc := NewProbe(nil).listeningSockets(os.Getpid(), ns), procListeningSockets(os.Getpid())
	if len(mine) < 2 {
		t.Fatalf("only %d listeners opened", len(mine))
	}
	for _, ino := range mine {
		if diag[ino] == "" || diag[ino] != proc[ino] {
			t.Errorf("listener %d: sock_diag says %q, /proc says %q", ino, diag[ino], proc[ino])
		}
	}
}

// BenchmarkListeningSockets reads the namespace's listening sockets
// through sock_diag and from /proc/PID/net/tcp{,6}, with 5,000 closed
// connections in TIME_WAIT, as a server under a new connection per
// request has (benchstat the two).
func BenchmarkListeningSockets(b *testing.B) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	for range 5000 {
		c, err := net.Dial("tcp4", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c.Close() // the client closes first: its side waits in TIME_WAIT
	}
	ns := ownNetNS(b)
	p := NewProbe(nil)
	b.Run("sockdiag", func(b *testing.B) {
		for b.Loop() {
			p.listeningSockets(os.Getpid(), ns)
		}
	})
	b.Run("proc", func(b *testing.B) {
		for b.Loop() {
			procListeningSockets(os.Getpid())
		}
	})
}

// Where sock_diag cannot be read, the table comes from /proc, and the
// probe says so once.
func TestListeningSocketsFallBackToProcAndSaySoOnce(t *testing.T) {
	l, ino, err := listenerInode(t, "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := errors.New("netlink refused")
	listeningViaDiag = func() ([]sockdiag.Message, error) { return nil, refused }
	defer func() { listeningViaDiag = sockdiag.Listening }()
	p := NewProbe(nil)
	var told []error
	p.OnSockDiagFailure(func(err error) { told = append(told, err) })
	ns := ownNetNS(t)
	for range 3 {
		if got := p.listeningSockets(os.Getpid(), ns)[ino]; got != l.Addr().String() {
			t.Fatalf("listener %d: %q from the fallback, want %q", ino, got, l.Addr())
		}
	}
	if len(told) != 1 || !errors.Is(told[0], refused) {
		t.Fatalf("told %v, want the failure once", told)
	}
}

// listenerInode listens on addr until the test ends and returns the
// listener with its socket inode; err when addr cannot be listened on here
// (no IPv6, say).
func listenerInode(t *testing.T, network, addr string) (net.Listener, uint64, error) {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, 0, err
	}
	t.Cleanup(func() { l.Close() })
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ino, err := SocketInode(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return l, ino, nil
}

// ownNetNS names this process's network namespace as /proc/PID/ns/net does.
func ownNetNS(t testing.TB) string {
	t.Helper()
	ns, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return ns
}
