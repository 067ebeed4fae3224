package listener

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func openOne(t *testing.T, s Spec) *Listener {
	t.Helper()
	if s.Backlog == 0 {
		s.Backlog = 16
	}
	ls, err := Open([]Spec{s})
	if err != nil {
		t.Fatalf("Open(%+v): %v", s, err)
	}
	t.Cleanup(func() { CloseAll(ls) })
	return ls[0]
}

func isNonblocking(t *testing.T, fd int) bool {
	t.Helper()
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	return flags&unix.O_NONBLOCK != 0
}

func TestTCPPortZeroReportsRealPortAndAcceptsConnections(t *testing.T) {
	l := openOne(t, Spec{Name: "web", Network: "tcp", Address: "127.0.0.1:0"})
	if strings.HasSuffix(l.Addr, ":0") || !strings.HasPrefix(l.Addr, "127.0.0.1:") {
		t.Fatalf("Addr = %q, want 127.0.0.1:<real port>", l.Addr)
	}
	if !isNonblocking(t, l.FD()) {
		t.Fatal("listening socket is blocking; workers share it and need O_NONBLOCK")
	}
	conn, err := net.Dial("tcp", l.Addr)
	if err != nil {
		t.Fatalf("dial %s: %v", l.Addr, err)
	}
	defer conn.Close()
	// What a worker accepts has TCP_NODELAY without setting it itself.
	accepted, _, err := unix.Accept(l.FD())
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(accepted)
	if v, err := unix.GetsockoptInt(accepted, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
		t.Fatalf("accepted connection TCP_NODELAY = %d, %v; want it inherited from the listener", v, err)
	}
}

func TestIPv6Loopback(t *testing.T) {
	l := openOne(t, Spec{Name: "v6", Network: "tcp", Address: "[::1]:0"})
	if !strings.HasPrefix(l.Addr, "[::1]:") {
		t.Fatalf("Addr = %q", l.Addr)
	}
}

func TestPortInUseIsExplained(t *testing.T) {
	l := openOne(t, Spec{Name: "a", Network: "tcp", Address: "127.0.0.1:0"})
	_, err := Open([]Spec{{Name: "b", Network: "tcp", Address: l.Addr, Backlog: 16}})
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("second bind of %s: err = %v, want address already in use", l.Addr, err)
	}
	// The holder is this very process (holders_test.go covers others).
	if want := fmt.Sprintf("held by pid %d (", os.Getpid()); !strings.Contains(err.Error(), want) ||
		!strings.Contains(err.Error(), "this process itself") {
		t.Fatalf("second bind of %s: err = %v, want it to name this process (%s... this process itself)", l.Addr, err, want)
	}
}

func TestFailedOpenClosesWhatItOpened(t *testing.T) {
	first := openOne(t, Spec{Name: "busy", Network: "tcp", Address: "127.0.0.1:0"})
	dir := t.TempDir()
	sock := filepath.Join(dir, "a.sock")
	_, err := Open([]Spec{
		{Name: "u", Network: "unix", Address: sock, Backlog: 16, UnixMode: 0o600},
		{Name: "dup", Network: "tcp", Address: first.Addr, Backlog: 16},
	})
	if err == nil {
		t.Fatal("want an error for the busy port")
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("unix socket from the failed Open is still there: %v", err)
	}
}

func TestUnixSocketModeAndRemovalOnClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	ls, err := Open([]Spec{{Name: "u", Network: "unix", Address: path, Backlog: 16, UnixMode: 0o640}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o640 {
		t.Fatalf("mode = %v, want 0640", info.Mode().Perm())
	}
	if ls[0].Addr != "unix:"+path {
		t.Fatalf("Addr = %q", ls[0].Addr)
	}
	CloseAll(ls)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket file not removed on close: %v", err)
	}
}

func TestStaleUnixSocketIsReplacedButLiveOneIsNot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open([]Spec{{Name: "u", Network: "unix", Address: path, Backlog: 16, UnixMode: 0o600}})
	if err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("bind over a live socket: err = %v, want already in use", err)
	}
	// Leave the file behind as a crashed process would.
	live.(*net.UnixListener).SetUnlinkOnClose(false)
	live.Close()
	openOne(t, Spec{Name: "u", Network: "unix", Address: path, UnixMode: 0o600})
}

func TestRefusesToReplaceARegularFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "not-a-socket")
	if err := os.WriteFile(path, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open([]Spec{{Name: "u", Network: "unix", Address: path, Backlog: 16, UnixMode: 0o600}})
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("err = %v, want refusal", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "data" {
		t.Fatal("the regular file was touched")
	}
}

func TestAdoptInheritedFD(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 8); err != nil {
		t.Fatal(err)
	}
	l := openOne(t, Spec{Name: "inherited", Network: "fd", FD: fd})
	if !strings.HasPrefix(l.Addr, "127.0.0.1:") {
		t.Fatalf("Addr = %q", l.Addr)
	}
	if !isNonblocking(t, l.FD()) {
		t.Fatal("adopted socket should be non-blocking")
	}
	conn, err := net.Dial("tcp", l.Addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
}

func TestAdoptRejectsNonListeningAndMissingFDs(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "plain")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cases := map[int]string{int(f.Fd()): "not a socket", 987: "no such file descriptor"}
	for fd, want := range cases {
		_, err := Open([]Spec{{Name: "x", Network: "fd", FD: fd}})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("fd %d: err = %v, want %q", fd, err, want)
		}
	}
}
