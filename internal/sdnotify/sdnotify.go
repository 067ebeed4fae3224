// Package sdnotify speaks systemd's notify protocol on the receiving side:
// one datagram socket per worker, so any process of that worker (even
// `systemd-notify --ready` run from a wrapper script) is attributed to it by
// the socket it writes to, not by its pid.
package sdnotify

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
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

// Socket receives one worker's notifications on an abstract unix datagram
// socket: it needs no file, so nothing is left behind when the master dies,
// and sender credentials are checked instead of file permissions.
type Socket struct {
	conn *net.UnixConn
	addr string
	// workerUID is also trusted: the worker may run as another user.
	workerUID uint32
}

// Listen opens a new socket whose name starts with prefix.
func Listen(prefix string) (*Socket, error) {
	var r [6]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("@%s-%d-%s", prefix, os.Getpid(), hex.EncodeToString(r[:]))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	if err := passCredentials(conn); err != nil {
		conn.Close()
		return nil, fmt.Errorf("notify socket: SO_PASSCRED: %w", err)
	}
	return &Socket{conn: conn, addr: addr, workerUID: uint32(os.Getuid())}, nil
}

func passCredentials(conn *net.UnixConn) error {
	raw, err := conn.SyscallConn()
	if err != nil {
		return err
	}
	var sockErr error
	err = raw.Control(func(fd uintptr) {
		sockErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	})
	return errors.Join(err, sockErr)
}

// TrustUID accepts messages from uid too (a worker run as another user).
// Call it before Receive.
func (s *Socket) TrustUID(uid uint32) { s.workerUID = uid }

// Addr is the value for the worker's NOTIFY_SOCKET.
func (s *Socket) Addr() string { return s.addr }

// Close stops Receive.
func (s *Socket) Close() error { return s.conn.Close() }

// Receive calls handle for every message until the socket is closed.
// Messages from a uid that is neither ours nor root are dropped and passed
// to reject, so a stranger on the host cannot mark a worker ready.
func (s *Socket) Receive(handle func(Message), reject func(Message)) {
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
		if cred, ok := readControl(oob[:oobn]); ok {
			msg.Pid, msg.Uid = cred.Pid, cred.Uid
		}
		if msg.Uid != uint32(os.Getuid()) && msg.Uid != 0 && msg.Uid != s.workerUID {
			reject(msg)
			continue
		}
		handle(msg)
	}
}

// readControl returns the sender's credentials and closes every fd that
// came with the message: baton keeps none (closing one is how a barrier is
// answered).
func readControl(oob []byte) (cred *unix.Ucred, ok bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, false
	}
	for _, m := range msgs {
		if m.Header.Level != syscall.SOL_SOCKET {
			continue
		}
		switch m.Header.Type {
		case syscall.SCM_CREDENTIALS:
			if c, err := unix.ParseUnixCredentials(&m); err == nil {
				cred, ok = c, true
			}
		case syscall.SCM_RIGHTS:
			fds, _ := unix.ParseUnixRights(&m)
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
	return cred, ok
}
