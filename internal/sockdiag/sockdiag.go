// Package sockdiag asks the kernel about TCP sockets through
// NETLINK_SOCK_DIAG (inet_diag): one socket found exactly by its address
// and cookie, or every socket in some states, filtered by the kernel. A
// dump of the listening sockets walks only the listening hash, where
// reading /proc/net/tcp formats every connection of the namespace (a
// server under a new connection per request has tens of thousands in
// TIME_WAIT) and costs tens of milliseconds.
package sockdiag

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// TCP states as inet_diag numbers them (include/net/tcp_states.h), and
// the mask of every state.
const (
	StateListen = 10
	AllStates   = ^uint32(0)
)

// Request is an inet_diag_req_v2 for TCP sockets: with Dump, every socket
// of Family in States; else the one socket with this local address and
// cookie (SO_COOKIE).
type Request struct {
	Family uint8
	States uint32
	Dump   bool
	// The socket looked up, unless Dump.
	Src    netip.AddrPort
	If     uint32 // the interface of an IPv6 address with a zone
	Cookie uint64
}

// Message is one inet_diag_msg: a socket, and its attributes.
type Message struct {
	Family uint8
	State  uint8
	Src    netip.AddrPort
	Inode  uint32
	attrs  []byte
}

// Sizes of the kernel's structures.
const (
	sizeofNlmsghdr = 16
	sizeofReq      = 56 // struct inet_diag_req_v2
	sizeofMsg      = 72 // struct inet_diag_msg
)

var ne = binary.NativeEndian

// Query sends req and returns the sockets the kernel answers with.
func Query(req Request) ([]Message, error) {
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(nl)
	if err := unix.Sendto(nl, encode(req), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	var out []Message
	buf := make([]byte, 32<<10)
	for {
		n, _, err := unix.Recvfrom(nl, buf, 0)
		if err != nil {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		msgs, done, err := decode(buf[:n])
		if err != nil {
			return nil, err
		}
		out = append(out, msgs...)
		if done || !req.Dump {
			return out, nil
		}
	}
}

// encode is the request's netlink message: a struct nlmsghdr and a struct
// inet_diag_req_v2.
func encode(req Request) []byte {
	b := make([]byte, sizeofNlmsghdr+sizeofReq)
	ne.PutUint32(b[0:], uint32(len(b)))
	ne.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	flags := uint16(unix.NLM_F_REQUEST)
	if req.Dump {
		flags |= unix.NLM_F_DUMP
	}
	ne.PutUint16(b[6:], flags)
	r := b[sizeofNlmsghdr:]
	r[0] = req.Family
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], req.States)
	if !req.Dump {
		// struct inet_diag_sockid: sport, dport (big-endian), src[4],
		// dst[4], if, cookie[2].
		id := r[8:]
		binary.BigEndian.PutUint16(id[0:], req.Src.Port())
		addr := req.Src.Addr()
		if addr.Is4() {
			a := addr.As4()
			copy(id[4:], a[:])
		} else {
			a := addr.As16()
			copy(id[4:], a[:])
		}
		ne.PutUint32(id[36:], req.If)
		ne.PutUint32(id[40:], uint32(req.Cookie))
		ne.PutUint32(id[44:], uint32(req.Cookie>>32))
	}
	return b
}

// decode reads the netlink messages of one datagram; done at NLMSG_DONE.
func decode(b []byte) (msgs []Message, done bool, err error) {
	for len(b) >= sizeofNlmsghdr {
		size := int(ne.Uint32(b[0:]))
		if size < sizeofNlmsghdr || size > len(b) {
			return nil, false, errors.New("sock_diag: bad reply")
		}
		data := b[sizeofNlmsghdr:size]
		switch ne.Uint16(b[4:]) {
		case unix.NLMSG_DONE:
			return msgs, true, nil
		case unix.NLMSG_ERROR:
			if len(data) >= 4 {
				if errno := -int32(ne.Uint32(data)); errno != 0 {
					return nil, false, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
				}
			}
			return nil, false, errors.New("sock_diag: error reply")
		case unix.SOCK_DIAG_BY_FAMILY:
			m, err := decodeMsg(data)
			if err != nil {
				return nil, false, err
			}
			msgs = append(msgs, m)
		}
		b = b[min(len(b), (size+3)&^3):]
	}
	return msgs, false, nil
}

// decodeMsg reads a struct inet_diag_msg and keeps its attributes.
func decodeMsg(d []byte) (Message, error) {
	if len(d) < sizeofMsg {
		return Message{}, errors.New("sock_diag: short reply")
	}
	m := Message{Family: d[0], State: d[1], Inode: ne.Uint32(d[68:]), attrs: d[sizeofMsg:]}
	port := binary.BigEndian.Uint16(d[4:])
	var addr netip.Addr
	if m.Family == unix.AF_INET {
		addr = netip.AddrFrom4([4]byte(d[8:12]))
	} else {
		addr = netip.AddrFrom16([16]byte(d[8:24])).Unmap()
	}
	m.Src = netip.AddrPortFrom(addr, port)
	return m, nil
}

// Attr is the payload of m's attribute of type typ (INET_DIAG_*).
func (m Message) Attr(typ uint16) ([]byte, bool) {
	a := m.attrs
	for len(a) >= unix.SizeofRtAttr {
		alen := int(ne.Uint16(a[0:]))
		if alen < unix.SizeofRtAttr || alen > len(a) {
			return nil, false
		}
		if ne.Uint16(a[2:]) == typ {
			return a[unix.SizeofRtAttr:alen], true
		}
		a = a[min(len(a), (alen+3)&^3):]
	}
	return nil, false
}

// Listening is every listening TCP socket of this process's network
// namespace, IPv4 and IPv6. A family the kernel does not have (IPv6
// disabled) has none.
func Listening() ([]Message, error) {
	var all []Message
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		msgs, err := Query(Request{Family: family, States: 1 << StateListen, Dump: true})
		if err != nil {
			if family == unix.AF_INET6 && errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, err
		}
		all = append(all, msgs...)
	}
	return all, nil
}
