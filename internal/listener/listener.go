// Package listener opens the master's listening sockets once and keeps them
// as raw, non-blocking file descriptors that worker processes inherit.
//
// The sockets are made with raw system calls rather than net.Listen: the
// master never accepts on them, it needs control of the backlog, and it must
// never let the Go runtime flip the shared file description to blocking mode
// (exec.Cmd.ExtraFiles calls (*os.File).Fd, which does exactly that for every
// process holding the socket; golang/go#43894).
package listener

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Spec says what to listen on. Network is "tcp", "unix", "fd" or
// "systemd" (socket activation: Address is the FileDescriptorName wanted,
// "" for every socket systemd passed).
type Spec struct {
	Name     string
	Network  string
	Address  string      // host:port for tcp, the path for unix
	FD       int         // for fd: an fd this process inherited
	Backlog  int         // listen(2) backlog for tcp and unix
	UnixMode os.FileMode // permission bits of a unix socket file
	// UnixUID and UnixGID own a unix socket file; -1 (or 0 in both, the
	// zero Spec) leaves it as created.
	UnixUID, UnixGID int
}

// Listener is one open listening socket owned by the master.
type Listener struct {
	Name string
	// Addr is the address actually bound, with the kernel's port when the
	// spec asked for port 0, or "unix:/path".
	Addr string
	fd   int
	path string // unix socket file this process created, removed on Close

	// For Rearm: the socket's family (AF_INET, AF_INET6, AF_UNIX), the
	// address it is bound to and its listen(2) backlog.
	family  int
	bound   unix.Sockaddr
	backlog int
	rearm   sync.Mutex // one Rearm at a time
}

// FD is the listening socket's file descriptor (close-on-exec; the worker
// spawner dups it into place in the child).
func (l *Listener) FD() int { return l.fd }

// Open opens every spec, in order. On any error the ones already opened are
// closed again, so a failed start leaves nothing behind.
func Open(specs []Spec) ([]*Listener, error) {
	var opened []*Listener
	for _, s := range specs {
		ls, err := open(s)
		if err != nil {
			CloseAll(opened)
			return nil, err
		}
		opened = append(opened, ls...)
	}
	return opened, nil
}

// CloseAll closes every listener, removing the unix socket files it made.
func CloseAll(ls []*Listener) {
	for _, l := range ls {
		l.Close()
	}
}

// Close closes the socket and removes a unix socket file this process made.
func (l *Listener) Close() error {
	err := unix.Close(l.fd)
	if l.path != "" {
		if rmErr := os.Remove(l.path); rmErr != nil && !errors.Is(rmErr, os.ErrNotExist) && err == nil {
			err = rmErr
		}
	}
	return err
}

// open opens one spec; "systemd" may stand for several sockets.
func open(s Spec) ([]*Listener, error) {
	var l *Listener
	var err error
	switch s.Network {
	case "tcp":
		l, err = openTCP(s)
	case "unix":
		l, err = openUnix(s)
	case "fd":
		l, err = adoptFD(s)
	case "systemd":
		return openSystemd(s)
	default:
		err = fmt.Errorf("listener %s: unknown network %q", s.Name, s.Network)
	}
	if err != nil {
		return nil, err
	}
	return []*Listener{l}, nil
}

func openTCP(s Spec) (*Listener, error) {
	sa, family, err := tcpSockaddr(s.Address)
	if err != nil {
		return nil, fmt.Errorf("bind %s: %w", s.Address, err)
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("bind %s: socket: %w", s.Address, err)
	}
	// SO_REUSEADDR lets a restarted master bind while old connections sit
	// in TIME_WAIT; it does not allow two live listeners on one port.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s: SO_REUSEADDR: %w", s.Address, err)
	}
	// Accepted connections inherit TCP_NODELAY from the listener. Servers
	// that take the fd without knowing it is TCP (uvicorn --fd wraps it as
	// AF_UNIX, so asyncio never sets it) would otherwise answer keep-alive
	// requests 40 ms late: Nagle waiting for a delayed ACK.
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s: TCP_NODELAY: %w", s.Address, err)
	}
	if family == unix.AF_INET6 {
		// "[::]:80" means IPv6 only here; listing 0.0.0.0 too is explicit.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if err := bindAndListen(fd, sa, s.Backlog); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EADDRINUSE) {
			// Name who holds the port (holders.go).
			return nil, fmt.Errorf("bind %s: %w", s.Address, addrInUse(sa))
		}
		return nil, fmt.Errorf("bind %s: %w", s.Address, explainBindError(err))
	}
	bound, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind %s: getsockname: %w", s.Address, err)
	}
	return &Listener{Name: s.Name, Addr: formatSockaddr(bound), fd: fd, family: family, bound: bound, backlog: s.Backlog}, nil
}

func bindAndListen(fd int, sa unix.Sockaddr, backlog int) error {
	if err := unix.Bind(fd, sa); err != nil {
		return err
	}
	return unix.Listen(fd, backlog)
}

func explainBindError(err error) error {
	switch {
	case errors.Is(err, unix.EADDRINUSE):
		return fmt.Errorf("address already in use (another process is listening there)")
	case errors.Is(err, unix.EACCES):
		return fmt.Errorf("permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)")
	case errors.Is(err, unix.EADDRNOTAVAIL):
		return fmt.Errorf("address not available on this host")
	}
	return err
}

// tcpSockaddr resolves host:port. An empty host means every IPv4 address,
// as with Gunicorn's ":8000".
func tcpSockaddr(address string) (unix.Sockaddr, int, error) {
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return nil, 0, err
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 0 || port > 65535 {
		return nil, 0, fmt.Errorf("bad port %q", portText)
	}
	ip, err := resolveHost(host)
	if err != nil {
		return nil, 0, err
	}
	if ip4 := ip.To4(); ip4 != nil {
		sa := &unix.SockaddrInet4{Port: port}
		copy(sa.Addr[:], ip4)
		return sa, unix.AF_INET, nil
	}
	sa := &unix.SockaddrInet6{Port: port}
	copy(sa.Addr[:], ip.To16())
	return sa, unix.AF_INET6, nil
}

func resolveHost(host string) (net.IP, error) {
	if host == "" {
		return net.IPv4zero, nil
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip, nil
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return nil, fmt.Errorf("cannot resolve host %q: %w", host, err)
	}
	// Prefer IPv4 for names like "localhost", matching what clients try first.
	for _, ip := range ips {
		if ip.To4() != nil {
			return ip, nil
		}
	}
	return ips[0], nil
}

func formatSockaddr(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	case *unix.SockaddrInet6:
		return net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	case *unix.SockaddrUnix:
		return "unix:" + a.Name
	}
	return fmt.Sprintf("%v", sa)
}

func openUnix(s Spec) (*Listener, error) {
	path := s.Address
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("bind unix:%s: socket: %w", path, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind unix:%s: %w", path, explainBindError(err))
	}
	l := &Listener{Name: s.Name, Addr: "unix:" + path, fd: fd, path: path,
		family: unix.AF_UNIX, bound: &unix.SockaddrUnix{Name: path}, backlog: s.Backlog}
	// chmod before listen, so no client connects through looser bits.
	if err := os.Chmod(path, s.UnixMode.Perm()); err != nil {
		l.Close()
		return nil, fmt.Errorf("bind unix:%s: chmod: %w", path, err)
	}
	if s.UnixUID > 0 || s.UnixGID > 0 {
		if err := os.Lchown(path, s.UnixUID, s.UnixGID); err != nil {
			l.Close()
			return nil, fmt.Errorf("bind unix:%s: chown: %w", path, err)
		}
	}
	if err := unix.Listen(fd, s.Backlog); err != nil {
		l.Close()
		return nil, fmt.Errorf("bind unix:%s: listen: %w", path, err)
	}
	return l, nil
}

// removeStaleSocket removes a socket file left by a process that died, but
// refuses when something still accepts connections on it, and never removes
// a file that is not a socket.
func removeStaleSocket(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bind unix:%s: %w", path, err)
	}
	if info.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("bind unix:%s: the path exists and is not a socket; refusing to replace it", path)
	}
	conn, err := net.Dial("unix", path)
	if err == nil {
		conn.Close()
		return fmt.Errorf("bind unix:%s: address already in use (another process is listening there)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("bind unix:%s: cannot tell whether the existing socket is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("bind unix:%s: removing stale socket: %w", path, err)
	}
	return nil
}

// adoptFD takes over a listening socket this process inherited (fd://N).
// It is dup'ed to a close-on-exec fd so the original number is free and the
// socket cannot leak into workers except through the spawner.
func adoptFD(s Spec) (*Listener, error) {
	accepting, err := unix.GetsockoptInt(s.FD, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		if errors.Is(err, unix.EBADF) {
			return nil, fmt.Errorf("bind fd://%d: no such file descriptor was inherited", s.FD)
		}
		if errors.Is(err, unix.ENOTSOCK) {
			return nil, fmt.Errorf("bind fd://%d: file descriptor %d is not a socket", s.FD, s.FD)
		}
		return nil, fmt.Errorf("bind fd://%d: %w", s.FD, err)
	}
	if accepting != 1 {
		return nil, fmt.Errorf("bind fd://%d: the socket is not listening", s.FD)
	}
	fd, err := unix.FcntlInt(uintptr(s.FD), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, fmt.Errorf("bind fd://%d: dup: %w", s.FD, err)
	}
	unix.Close(s.FD)
	// Workers expect a non-blocking socket, like every socket baton opens.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind fd://%d: %w", s.FD, err)
	}
	addr := fmt.Sprintf("fd://%d", s.FD)
	if sa, err := unix.Getsockname(fd); err == nil {
		addr = formatSockaddr(sa)
	}
	l := &Listener{Name: s.Name, Addr: addr, fd: fd}
	l.describe()
	return l, nil
}
