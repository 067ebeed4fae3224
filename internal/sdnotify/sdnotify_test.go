package sdnotify

import (
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	got := Parse([]byte("READY=1\nSTATUS=serving 4 requests/s\nnonsense\n=x\nMAINPID=42"))
	want := map[string]string{"READY": "1", "STATUS": "serving 4 requests/s", "MAINPID": "42"}
	if len(got) != len(want) {
		t.Fatalf("Parse = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// newDir is a Dir under a RUNTIME_DIRECTORY of the test's, removed when
// the test ends.
func newDir(t *testing.T) *Dir {
	t.Helper()
	t.Setenv("RUNTIME_DIRECTORY", t.TempDir())
	d, err := NewDir()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// listen opens a socket in a new Dir, for baton's own user.
func listen(t *testing.T) *Socket {
	t.Helper()
	s, err := newDir(t).Listen(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// startReceiving runs s.Receive in the background, accepting every sender,
// and returns its messages.
func startReceiving(t *testing.T, s *Socket) <-chan Message {
	got := make(chan Message, 16)
	go s.Receive(nil, func(m Message) {
		select {
		case got <- m:
		default:
		}
	}, func(m Message) { t.Errorf("rejected %+v", m) })
	return got
}

func receiveOne(t *testing.T, got <-chan Message) Message {
	t.Helper()
	select {
	case m := <-got:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message received")
	}
	return Message{}
}

func TestReceiveFromGoClientWithCredentials(t *testing.T) {
	s := listen(t)
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.Addr(), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	got := startReceiving(t, s)
	if _, err := conn.Write([]byte("READY=1\nSTATUS=up")); err != nil {
		t.Fatal(err)
	}
	m := receiveOne(t, got)
	if !m.Ready() || m.Pid != int32(os.Getpid()) || m.Uid != uint32(os.Getuid()) {
		t.Fatalf("message = %+v, want READY from pid %d", m, os.Getpid())
	}
	if st, ok := m.Status(); !ok || st != "up" {
		t.Fatalf("status = %q, %v", st, ok)
	}
}

// systemd-notify is the real client wrapper scripts use; it must be able to
// reach the socket.
func TestReceiveFromSystemdNotify(t *testing.T) {
	path := systemdNotify(t)
	s := listen(t)
	got := startReceiving(t, s)
	// systemd-notify waits until the receiver closes the fd of its
	// BARRIER=1 message, so this also checks that baton answers barriers.
	cmd := exec.Command(path, "--ready", "--status=booted")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+s.Addr())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("systemd-notify: %v: %s", err, out)
	}
	m := receiveOne(t, got)
	if !m.Ready() {
		t.Fatalf("message = %+v, want READY=1", m)
	}
}

func systemdNotify(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("systemd-notify")
	if err != nil {
		t.Fatal("systemd-notify not installed: run scripts/install-test-deps")
	}
	return path
}
