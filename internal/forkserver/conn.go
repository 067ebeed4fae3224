package forkserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// MaxMessage is the largest datagram either side sends: one JSON object.
const MaxMessage = 64 << 10

// Message types (docs/forkserver.md).
const (
	TypeReady      = "ready"       // template: the preload modules are imported
	TypeError      = "error"       // template: they are not (it exits 1)
	TypeForked     = "forked"      // template: request ID is worker Pid, now baton's child
	TypeForkFailed = "fork_failed" // template: request ID has no worker
	TypeFork       = "fork"        // baton: fork worker ID with Env, and two fds
)

// Message is one datagram of the protocol, either way.
type Message struct {
	Type string `json:"type"`
	// ID names a fork request and its answer.
	ID int `json:"id,omitempty"`
	// Pid is the template's (ready) or the worker's (forked).
	Pid int `json:"pid,omitempty"`
	// Python is the interpreter's version ("3.11.2").
	Python string `json:"python,omitempty"`
	// Preloaded lists the modules imported for --preload; ServerModules
	// those of the command's own entry point the template imported too.
	Preloaded     []string `json:"preloaded,omitempty"`
	ServerModules []string `json:"server_modules,omitempty"`
	// ImportSeconds is how long the imports took.
	ImportSeconds float64 `json:"import_seconds,omitempty"`
	// Error is one line (error, fork_failed); Traceback Python's whole
	// traceback (error), cut in the middle when it is too long.
	Error     string `json:"error,omitempty"`
	Traceback string `json:"traceback,omitempty"`
	// Env is the worker's whole environment, "K=V" (fork).
	Env []string `json:"env,omitempty"`
}

// Conn is baton's end of a template's control socket, a SOCK_SEQPACKET
// unix socket: message boundaries are kept, and the template's exit (or
// its Close) ends the stream. Receive runs on one goroutine while Fork is
// called from another.
type Conn struct {
	conn *net.UnixConn
	// sendMu keeps a fork request and its fds one sendmsg apart from another.
	sendMu sync.Mutex
}

// NewPair makes a control socket pair: the Conn for baton, and the
// template's end, close-on-exec (whoever starts the template puts it at
// fd 3+L, which clears the flag on that copy, and then closes this one).
func NewPair() (*Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("forkserver: socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "forkserver-control")
	child := os.NewFile(uintptr(fds[1]), "forkserver-control-child")
	fc, err := net.FileConn(ours) // dups: ours is closed below either way
	ours.Close()
	if err != nil {
		child.Close()
		return nil, nil, fmt.Errorf("forkserver: control socket: %w", err)
	}
	return &Conn{conn: fc.(*net.UnixConn)}, child, nil
}

// Receive reads the template's messages and calls handle with each, in
// order, until the template closes its end (it exited) or Close is called;
// then it returns nil. A datagram that is not a protocol message ends it
// with an error: that template is not one baton can trust.
func (c *Conn) Receive(handle func(Message)) error {
	buf := make([]byte, MaxMessage+1)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, flags, _, err := c.conn.ReadMsgUnix(buf, oob)
		closeReceivedFDs(oob[:oobn])
		switch {
		case errors.Is(err, net.ErrClosed), errors.Is(err, io.EOF):
			return nil // Close, or the template's end is closed
		case err != nil:
			return fmt.Errorf("forkserver: read the control socket: %w", err)
		case n > MaxMessage || flags&unix.MSG_TRUNC != 0:
			return fmt.Errorf("forkserver: the template sent a message over %d bytes", MaxMessage)
		}
		var m Message
		if err := json.Unmarshal(buf[:n], &m); err != nil || m.Type == "" {
			return fmt.Errorf("forkserver: the template sent %q, not a protocol message", truncate(buf[:n], 200))
		}
		handle(m)
	}
}

// closeReceivedFDs closes descriptors a confused template passed to baton:
// none is expected.
func closeReceivedFDs(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for _, msg := range msgs {
		fds, err := unix.ParseUnixRights(&msg)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// Pending is a worker the template forked (or is forking) that waits for
// go: until Go, none of the command's code runs in it.
type Pending struct {
	goW    *os.File
	stderr *os.File
}

// Fork asks the template to fork worker id with the environment env (the
// whole environment a worker gets; the worker adds LISTEN_PID when
// LISTEN_FDS is set). The answer comes to Receive: forked with the worker's
// pid, or fork_failed. The worker's stderr is a new pipe whose read end
// Pending.Stderr returns; it starts the command on Pending.Go.
func (c *Conn) Fork(id int, env []string) (*Pending, error) {
	req, err := json.Marshal(Message{Type: TypeFork, ID: id, Env: env})
	if err != nil {
		return nil, fmt.Errorf("forkserver: fork request %d: %w", id, err)
	}
	if len(req) > MaxMessage {
		return nil, fmt.Errorf("forkserver: fork request %d is %d bytes (its environment is too large); the limit is %d", id, len(req), MaxMessage)
	}
	stderrR, stderrW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("forkserver: fork request %d: stderr pipe: %w", id, err)
	}
	goR, goW, err := os.Pipe()
	if err != nil {
		stderrR.Close()
		stderrW.Close()
		return nil, fmt.Errorf("forkserver: fork request %d: go pipe: %w", id, err)
	}
	// The template holds its own copies once the message is sent; ours of
	// the passed ends must go, or the worker's EOFs would never come.
	defer stderrW.Close()
	defer goR.Close()
	c.sendMu.Lock()
	_, _, err = c.conn.WriteMsgUnix(req, unix.UnixRights(int(stderrW.Fd()), int(goR.Fd())), nil)
	c.sendMu.Unlock()
	if err != nil {
		stderrR.Close()
		goW.Close()
		return nil, fmt.Errorf("forkserver: send fork request %d: %w", id, err)
	}
	return &Pending{goW: goW, stderr: stderrR}, nil
}

// Stderr is the read end of the worker's stderr; the caller reads and
// closes it (unless it calls Abort).
func (p *Pending) Stderr() *os.File { return p.stderr }

// Go lets the worker start the command.
func (p *Pending) Go() error {
	_, err := p.goW.Write([]byte{'g'})
	if cerr := p.goW.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("forkserver: go: %w", err)
	}
	return nil
}

// Abort makes the worker exit 0 at once without running anything (or
// never start, if the fork has not happened yet), and closes its stderr.
func (p *Pending) Abort() {
	p.goW.Close()
	p.stderr.Close()
}

// Close closes baton's end: the template exits when it reads the EOF, and
// Receive returns.
func (c *Conn) Close() error { return c.conn.Close() }
