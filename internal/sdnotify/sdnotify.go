// Package sdnotify speaks systemd's notify protocol on the receiving side:
// one datagram socket per worker, so any process of that worker (even
// `systemd-notify --ready` run from a wrapper script) is attributed to it by
// the socket it writes to; and a message counts only when its sender, by
// the pid the kernel vouches for, is a process of that worker.
package sdnotify

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/fdexec"
)

// maxDatagram bounds one message; systemd's own limit is the same order.
const maxDatagram = 8192

// Message is one notification: its KEY=VALUE assignments, and who sent it.
type Message struct {
	Fields map[string]string
	Pid    int32
	Uid    uint32
}

// Ready reports READY=1.
func (m Message) Ready() bool { return m.Fields["READY"] == "1" }

// Watchdog reports WATCHDOG=1.
func (m Message) Watchdog() bool { return m.Fields["WATCHDOG"] == "1" }

// Status is the STATUS= text, and whether the message had one.
func (m Message) Status() (string, bool) {
	s, ok := m.Fields["STATUS"]
	return s, ok
}

// Parse reads newline-separated KEY=VALUE assignments; lines without "="
// are ignored, as systemd does.
func Parse(data []byte) map[string]string {
	fields := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if ok && k != "" {
			fields[k] = v
		}
	}
	return fields
}

// Socket receives one worker's notifications on a unix datagram socket
// bound to a path (see Dir for where, and who may connect).
type Socket struct {
	conn *net.UnixConn
	path string
	once sync.Once
}

// Listen opens a new socket in dir, a directory of the master's own (see
// Dir). Its file is 0600, owned by baton's user, or by owner's user when
// owner runs as another one: the mode is set on the socket before bind
// creates the file, and the owner changed after, so no one else can
// connect in between.
func Listen(dir string, owner *Owner) (*Socket, error) {
	var r [nameLen / 2]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, hex.EncodeToString(r[:]))
	if len(path) > maxPath {
		return nil, fmt.Errorf("notify socket: %s is longer than a unix socket path can be (%d bytes)", path, maxPath)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	// bind(2) creates the file with the socket's own mode, less the umask.
	if err := unix.Fchmod(fd, 0o600); err != nil {
		return nil, fmt.Errorf("notify socket: fchmod: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		return nil, fmt.Errorf("notify socket: SO_PASSCRED: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("notify socket: bind %s: %w", path, err)
	}
	if o := foreign(owner); o != nil {
		if err := unix.Lchown(path, int(o.Uid), int(o.Gid)); err != nil {
			os.Remove(path)
			return nil, fmt.Errorf("notify socket: chown %s: %w", path, err)
		}
	}
	c, err := net.FileConn(f)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	return &Socket{conn: c.(*net.UnixConn), path: path}, nil
}

// Addr is the value for the worker's NOTIFY_SOCKET.
func (s *Socket) Addr() string { return s.path }

// Close stops Receive and removes the socket's file.
func (s *Socket) Close() error {
	var err error
	s.once.Do(func() {
		err = errors.Join(s.conn.Close(), os.Remove(s.path))
	})
	return err
}

// Receive calls handle for every message until the socket is closed.
// Only processes of the worker may notify: belongs is asked about each
// sender's pid (from SCM_CREDENTIALS, on Receive's goroutine) and a
// message it refuses, or one that came without credentials, is passed to
// reject instead, so that a stranger on the host cannot mark a worker
// ready even when it can write to the socket (root can, and so can
// processes of the worker's own user). A nil belongs accepts every sender
// with credentials.
func (s *Socket) Receive(belongs func(pid int) bool, handle func(Message), reject func(Message)) {
	buf := make([]byte, maxDatagram)
	// Room for credentials and a few passed fds: sd_notify_barrier() (used
	// by systemd-notify) sends a pipe and waits until we close it.
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(16*4))
	for {
		n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		// Without credentials the sender is nobody we trust.
		msg := Message{Fields: Parse(buf[:n]), Pid: -1, Uid: ^uint32(0)}
		cred, fds := readControl(oob[:oobn])
		if cred != nil {
			msg.Pid, msg.Uid = cred.Pid, cred.Uid
		}
		// The sender is asked about before its barrier fds are closed:
		// systemd-notify waits for that, and /proc still shows it then.
		ok := cred != nil && cred.Pid > 0 && (belongs == nil || belongs(int(cred.Pid)))
		for _, fd := range fds {
			unix.Close(fd)
		}
		if !ok {
			reject(msg)
			continue
		}
		handle(msg)
	}
}

// readControl returns the sender's credentials and every fd that came
// with the message, which the caller closes: baton keeps none (closing
// one is how a barrier is answered).
func readControl(oob []byte) (cred *unix.Ucred, fds []int) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, nil
	}
	for _, m := range msgs {
		if m.Header.Level != syscall.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case syscall.SCM_CREDENTIALS:
			if c, err := unix.ParseUnixCredentials(&m); err == nil {
				cred = c
			}
		case syscall.SCM_RIGHTS:
			got, _ := unix.ParseUnixRights(&m)
			fds = append(fds, got...)
		}
	}
	return cred, fds
}

// KeepOnExec makes the socket survive this process's exec (keep), or not,
// and returns its fd: an in-place upgrade hands it to the master's new
// image, with the messages queued on it.
func (s *Socket) KeepOnExec(keep bool) (int, error) {
	return fdexec.KeepConn(s.conn, keep)
}

// Adopt takes over a socket that survived this process's exec: fd is
// bound to path.
func Adopt(fd int, path string) (*Socket, error) {
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("notify socket %s: %w", path, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("notify socket %s: not a unix socket", path)
	}
	return &Socket{conn: uc, path: path}, nil
}
