package listener

import (
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"github.com/baton-pm/baton/internal/sockdiag"
	"golang.org/x/sys/unix"
)

// Shutdown flags as the kernel keeps them (sk_shutdown) and sock_diag
// reports them.
const (
	rcvShutdown  = 1
	sendShutdown = 2
)

// inet_diag's attribute with sk_shutdown (enum in linux/inet_diag.h).
const inetDiagShutdown = 8

// inetShutdownFlags asks sock_diag for the shutdown flags of the listening
// TCP socket fd: an exact lookup by its address and SO_COOKIE, so it is
// this very socket. The lookup only finds a socket in the listening hash,
// that is one that listens.
func inetShutdownFlags(fd, family int) (uint8, error) {
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return 0, err
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0, err
	}
	req := sockdiag.Request{Family: uint8(family), States: sockdiag.AllStates, Cookie: cookie}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		req.Src = netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *unix.SockaddrInet6:
		req.Src = netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))
		req.If = a.ZoneId
	default:
		return 0, fmt.Errorf("sock_diag: not an inet socket")
	}
	msgs, err := sockdiag.Query(req)
	if err != nil {
		return 0, err
	}
	if len(msgs) == 0 {
		return 0, errors.New("sock_diag: no reply")
	}
	if flags, ok := msgs[0].Attr(inetDiagShutdown); ok && len(flags) > 0 {
		return flags[0], nil
	}
	return 0, errors.New("sock_diag: no INET_DIAG_SHUTDOWN in the reply")
}

// disconnect is connect(2) with AF_UNSPEC: on a TCP socket it runs
// tcp_disconnect, which leaves it closed with its shutdown flags cleared.
func disconnect(fd int) error {
	sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
	_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if errno != 0 {
		return errno
	}
	return nil
}
