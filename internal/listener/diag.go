package listener

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

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
	// struct nlmsghdr (16 bytes) + struct inet_diag_req_v2 (56 bytes).
	req := make([]byte, 16+56)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	r := req[16:]
	r[0] = byte(family)
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], ^uint32(0)) // idiag_states: any
	// struct inet_diag_sockid: sport, dport (big-endian), src[4], dst[4], if, cookie[2].
	id := r[8:]
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		binary.BigEndian.PutUint16(id[0:], uint16(a.Port))
		copy(id[4:], a.Addr[:])
	case *unix.SockaddrInet6:
		binary.BigEndian.PutUint16(id[0:], uint16(a.Port))
		copy(id[4:], a.Addr[:])
		ne.PutUint32(id[36:], a.ZoneId)
	default:
		return 0, fmt.Errorf("sock_diag: not an inet socket")
	}
	ne.PutUint32(id[40:], uint32(cookie))
	ne.PutUint32(id[44:], uint32(cookie>>32))

	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return 0, err
	}
	defer unix.Close(nl)
	if err := unix.Sendto(nl, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(nl, buf, 0)
	if err != nil {
		return 0, err
	}
	// One struct nlmsghdr and its payload.
	if n < 16 || int(ne.Uint32(buf[0:])) > n || ne.Uint32(buf[0:]) < 16 {
		return 0, errors.New("sock_diag: bad reply")
	}
	data := buf[16:ne.Uint32(buf[0:])]
	if ne.Uint16(buf[4:]) == unix.NLMSG_ERROR {
		if len(data) >= 4 {
			if errno := -int32(ne.Uint32(data)); errno != 0 {
				return 0, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
			}
		}
		return 0, errors.New("sock_diag: error reply")
	}
	// struct inet_diag_msg is 72 bytes; attributes follow.
	const msgLen = 72
	if len(data) < msgLen {
		return 0, errors.New("sock_diag: short reply")
	}
	attrs := data[msgLen:]
	for len(attrs) >= unix.SizeofRtAttr {
		alen := int(ne.Uint16(attrs[0:]))
		atype := ne.Uint16(attrs[2:])
		if alen < unix.SizeofRtAttr || alen > len(attrs) {
			break
		}
		if atype == inetDiagShutdown && alen > unix.SizeofRtAttr {
			return attrs[unix.SizeofRtAttr], nil
		}
		attrs = attrs[min(len(attrs), (alen+3)&^3):]
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
