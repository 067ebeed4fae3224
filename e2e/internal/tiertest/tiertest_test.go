package tiertest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary the helper server of a network namespace.
const helperEnv = "BATON_TIERTEST_HELPER"

const namespaceBody = "hello from the namespace"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "netns-server" {
		serveInNewNetns()
		return
	}
	os.Exit(m.Run())
}

// serveInNewNetns runs in a fresh network namespace: it brings its loopback
// up, answers every connection with namespaceBody and prints its address.
func serveInNewNetns() {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		fatal(err)
	}
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		fatal(err)
	}
	ifr.SetUint16(unix.IFF_UP | unix.IFF_LOOPBACK | unix.IFF_RUNNING)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		fatal(fmt.Errorf("bringing lo up: %w", err))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fatal(err)
	}
	fmt.Println(ln.Addr())
	for {
		conn, err := ln.Accept()
		if err != nil {
			fatal(err)
		}
		go answer(conn, 200, namespaceBody)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

// answer reads a request's head from conn and answers it.
func answer(conn net.Conn, status int, body string) {
	defer conn.Close()
	readHead(conn)
	fmt.Fprintf(conn, "HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n", status, len(body)+1, body)
}

func readHead(conn net.Conn) {
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil || line == "\r\n" {
			return
		}
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("entering a network namespace (setns) needs root: run the test as root")
	}
}

// startNamespacedServer starts the helper server in a network namespace of
// its own and returns its pid and address there.
func startNamespacedServer(t *testing.T) (pid int, addr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=netns-server")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the helper in a new network namespace: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("the helper server printed no address: %v", err)
	}
	return cmd.Process.Pid, strings.TrimSpace(line)
}

func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// A Get reaches a server that listens only on a namespace's loopback, and
// the calling thread is back in the host's namespace afterwards.
func TestGetReachesTheNamespacesLoopback(t *testing.T) {
	requireRoot(t)
	pid, addr := startNamespacedServer(t)
	ns, err := OpenNetns(pid)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	hostNetns := netnsInode(t, "/proc/self/ns/net")
	status, body, err := ns.Get(addr, "/", 10*time.Second)
	if err != nil || status != 200 || body != namespaceBody {
		t.Errorf("Get(%s) in the namespace: %d %q %v; want 200 %q", addr, status, body, err, namespaceBody)
	}
	if got := netnsInode(t, "/proc/thread-self/ns/net"); got != hostNetns {
		t.Errorf("after Get the thread is in network namespace %d, want the host's %d", got, hostNetns)
	}

	host, err := OpenNetns(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	if _, body, err := host.Get(addr, "/", 10*time.Second); body == namespaceBody {
		t.Errorf("the namespace's server answered from the host's network (%v): Get did not enter the namespace", err)
	}
}

// FailureKind names what the client saw, for real failures of real
// connections.
func TestFailureKindOfRealRequests(t *testing.T) {
	requireRoot(t)
	host, err := OpenNetns(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	closedPort := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln.Close()
		return ln.Addr().String()
	}
	cases := []struct {
		name    string
		serve   func(net.Conn) // nil: nothing listens
		timeout time.Duration
		want    string
	}{
		{"200", func(c net.Conn) { answer(c, 200, "fine") }, 10 * time.Second, ""},
		{"503", func(c net.Conn) { answer(c, 503, "lame duck") }, 10 * time.Second, "status 503"},
		{"nothing listens", nil, 10 * time.Second, "refused"},
		{"closed unanswered", func(c net.Conn) { readHead(c); c.Close() }, 10 * time.Second, "EOF"},
		{"reset", func(c net.Conn) { readHead(c); c.(*net.TCPConn).SetLinger(0); c.Close() }, 10 * time.Second, "reset"},
		{"no answer in time", func(c net.Conn) { readHead(c); time.Sleep(2 * time.Second); c.Close() }, 300 * time.Millisecond, "timeout"},
		{"not HTTP", func(c net.Conn) { readHead(c); io.WriteString(c, "SSH-2.0\r\n"); c.Close() }, 10 * time.Second, `other: not an HTTP response: "SSH-2.0\r\n"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			addr := closedPort()
			if tc.serve != nil {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				addr = ln.Addr().String()
				go func() {
					if c, err := ln.Accept(); err == nil {
						tc.serve(c)
					}
				}()
			}
			status, _, err := host.Get(addr, "/", tc.timeout)
			if got := FailureKind(status, err); got != tc.want {
				t.Errorf("FailureKind(%d, %v) = %q, want %q", status, err, got, tc.want)
			}
		})
	}
}

func TestWaitUntil(t *testing.T) {
	calls := 0
	if !WaitUntil(10*time.Second, time.Millisecond, func() bool { calls++; return calls == 3 }) || calls != 3 {
		t.Errorf("WaitUntil of a condition true at the 3rd call: %d calls", calls)
	}
	start := time.Now()
	if WaitUntil(300*time.Millisecond, 10*time.Millisecond, func() bool { return false }) {
		t.Error("WaitUntil of a condition never true returned true")
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("WaitUntil gave up after %v, before its timeout", waited)
	}
}

// A load keeps every request's outcome; Count counts exactly those that
// ended in a period.
func TestLoadAndCount(t *testing.T) {
	var n atomic.Int64
	l := StartLoad(3, time.Millisecond, func() (string, string) {
		i := n.Add(1)
		if i%4 == 0 {
			return "reset", fmt.Sprintf("failure %d", i)
		}
		return "", fmt.Sprintf("worker %d", i%2)
	})
	t.Cleanup(func() { l.Stop() })
	if !WaitUntil(time.Minute, time.Millisecond, func() bool { return l.Len() >= 40 }) {
		t.Fatalf("the load made %d requests in a minute", l.Len())
	}
	outcomes := l.Stop()
	if again := l.Stop(); len(again) != len(outcomes) {
		t.Errorf("a second Stop returned %d outcomes, the first %d", len(again), len(outcomes))
	}
	if int64(len(outcomes)) != n.Load() {
		t.Errorf("%d outcomes kept for %d requests made", len(outcomes), n.Load())
	}
	all := Count(outcomes, time.Time{}, time.Now())
	if all.OK+all.Failed["reset"] != len(outcomes) || all.OK != all.Answers["worker 0"]+all.Answers["worker 1"] {
		t.Errorf("Count of everything: %+v for %d outcomes", all, len(outcomes))
	}
	if want := min(maxSamples, all.Failed["reset"]); len(all.Samples) != want || !strings.HasPrefix(all.Samples[0], "failure ") {
		t.Errorf("samples %q, want %d failure details", all.Samples, want)
	}
	mid := outcomes[len(outcomes)/2].End
	before, after := Count(outcomes, time.Time{}, mid), Count(outcomes, mid, time.Now())
	if before.OK+after.OK != all.OK || before.Failed["reset"]+after.Failed["reset"] != all.Failed["reset"] {
		t.Errorf("[start, mid) %+v and [mid, now) %+v do not add up to %+v", before, after, all)
	}
	if none := Count(outcomes, mid, mid); none.OK != 0 || len(none.Failed) != 0 {
		t.Errorf("Count of an empty period: %+v", none)
	}
	for _, o := range outcomes {
		if o.End.Before(o.Start) {
			t.Errorf("outcome %+v ended before it started", o)
		}
	}
}
