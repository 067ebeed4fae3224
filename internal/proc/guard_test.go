package proc_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/proc"
)

// guardChildArg makes the test binary the worker of TestGuard...: it
// guards its listener at fd 3, shuts it down for reading and writing, and
// shuts down the connection at fd 4, printing what each call returned.
const guardChildArg = "_guard_child"

func guardChild() int {
	if err := proc.GuardListeners(1); err != nil {
		fmt.Println("guard:", err)
		return 1
	}
	fmt.Println("listener:", unix.Shutdown(3, unix.SHUT_RDWR))
	fmt.Println("connection:", unix.Shutdown(4, unix.SHUT_RDWR))
	return 0
}

// A worker's shutdown(SHUT_RDWR) of its inherited listener succeeds for
// the worker and does nothing to the socket everyone shares; the same
// call on a connection still shuts the connection.
func TestGuardMakesShuttingTheListenerDownHarmless(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	sf, err := server.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()

	cmd := exec.Command(os.Args[0], guardChildArg)
	cmd.ExtraFiles = []*os.File{lf, sf}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	if want := "listener: <nil>\nconnection: <nil>\n"; string(out) != want {
		t.Fatalf("child said %q, want %q", out, want)
	}
	if v, err := unix.GetsockoptInt(int(lf.Fd()), unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		t.Fatalf("SO_ACCEPTCONN = %d, %v after the guarded shutdown: the listener was shut down", v, err)
	}
	c2, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second)
	if err != nil {
		t.Fatalf("a new connection after the guarded shutdown: %v", err)
	}
	c2.Close()
	// The connection's shutdown went through: the client reads EOF.
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := client.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("client read %d, %v; want EOF from the connection's shutdown", n, err)
	}
}
