package sockdiag

import (
	"net"
	"syscall"
	"testing"
)

// inodeOf is the socket inode of a listener or connection.
func inodeOf(t *testing.T, c syscall.Conn) uint32 {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ino uint64
	raw.Control(func(fd uintptr) {
		var st syscall.Stat_t
		if err := syscall.Fstat(int(fd), &st); err != nil {
			t.Fatal(err)
		}
		ino = st.Ino
	})
	return uint32(ino)
}

// Listening finds this process's listeners with their addresses, IPv4 and
// IPv6, and none of its connections.
func TestListeningFindsListenersAndNoConnection(t *testing.T) {
	l4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l4.Close()
	want := map[uint32]string{inodeOf(t, l4.(*net.TCPListener)): l4.Addr().String()}
	if l6, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		defer l6.Close()
		want[inodeOf(t, l6.(*net.TCPListener))] = l6.Addr().String()
	} else {
		t.Logf("no IPv6 loopback here (%v): IPv4 only", err)
	}
	c, err := net.Dial("tcp4", l4.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn := inodeOf(t, c.(*net.TCPConn))

	socks, err := Listening()
	if err != nil {
		t.Fatalf("Listening: %v (is NETLINK_SOCK_DIAG there? /proc/net/tcp is the fallback)", err)
	}
	got := map[uint32]string{}
	for _, s := range socks {
		if s.State != StateListen {
			t.Errorf("socket %d in state %d, want only listening ones", s.Inode, s.State)
		}
		if s.Inode == conn {
			t.Errorf("a connection (%d) among the listening sockets", conn)
		}
		got[s.Inode] = s.Src.String()
	}
	for ino, addr := range want {
		if got[ino] != addr {
			t.Errorf("listener %d: got %q, want %q (all: %v)", ino, got[ino], addr, got)
		}
	}
}

func TestDecodeRefusesWhatIsNotAReply(t *testing.T) {
	for name, b := range map[string][]byte{
		"length beyond the datagram": {0xff, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		"short message":              append([]byte{20, 0, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 1, 2, 3, 4),
	} {
		if _, _, err := decode(b); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}
