package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// ErrConnClosed is returned by Call when the master closes the connection
// before its final line. After a stop request that is expected: the master
// may exit before it answers.
var ErrConnClosed = errors.New("the master closed the connection")

// maxResponseLine bounds one response line. A status with many workers is a
// few hundred KiB at most; the bound only protects the CLI from a broken peer.
const maxResponseLine = 16 << 20

// dialTimeout bounds connecting; a unix connect does not normally wait at all.
const dialTimeout = 5 * time.Second

// Client is one connection to a master's control socket, for one request.
type Client struct {
	conn *net.UnixConn
	r    *bufio.Reader
}

// Dial connects to the control socket at path, and checks who answers
// there before it sends anything: the process serving the socket must run
// as the caller's own uid or as root. Anyone else may have bound the path
// first (a default path in a shared directory, a stale path in /tmp) and
// would answer whatever it likes; that is an *UntrustedServerError.
func Dial(path string) (*Client, error) {
	if err := checkSocketPath(path); err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: dialTimeout}
	conn, err := d.Dial("unix", sockaddrName(path))
	if err != nil {
		return nil, dialError(path, err)
	}
	uc := conn.(*net.UnixConn)
	if err := checkServer(path, uc); err != nil {
		uc.Close()
		return nil, err
	}
	return &Client{conn: uc, r: bufio.NewReader(conn)}, nil
}

// checkServer reads the credentials the kernel recorded for the process
// that created the listening socket (SO_PEERCRED on a connected unix
// socket), and refuses a server that is neither us nor root.
func checkServer(path string, conn *net.UnixConn) error {
	cred, err := peerCred(conn)
	if err != nil {
		return fmt.Errorf("cannot tell who serves the control socket %s (%v): refusing to talk to it", path, err)
	}
	if me := os.Getuid(); int(cred.Uid) != me && cred.Uid != 0 {
		return &UntrustedServerError{Path: path, Server: int(cred.Uid), Pid: int(cred.Pid), Self: me}
	}
	return nil
}

// UntrustedServerError is Dial's error when the control socket is served
// by a process of another user than the caller and root.
type UntrustedServerError struct {
	Path   string
	Server int // the uid serving the socket
	Pid    int // the pid that created the listening socket, as the kernel recorded it
	Self   int // the caller's uid
}

func (e *UntrustedServerError) Error() string {
	you := fmt.Sprintf("you (uid %d) or root", e.Self)
	if e.Self == 0 {
		you = "you (root)"
	}
	return fmt.Sprintf("the control socket %s is served by %s, not by %s: refusing to talk to it",
		e.Path, describeUID(e.Server), you)
}

// dialError says what a failed connect means for the user, and still
// unwraps to the system error.
func dialError(path string, err error) error {
	var msg string
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ENOTDIR),
		errors.Is(err, syscall.ECONNREFUSED): // ECONNREFUSED: a stale socket file, or not a socket
		msg = fmt.Sprintf("no baton master is listening at %s (is it running? give --control or --pid)", path)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		msg = fmt.Sprintf("permission denied connecting to the control socket %s (run this as the master's user or root)", path)
	default:
		msg = fmt.Sprintf("cannot connect to the control socket %s: %v", path, err)
	}
	return &explainedError{msg: msg, err: err}
}

type explainedError struct {
	msg string
	err error
}

func (e *explainedError) Error() string { return e.msg }
func (e *explainedError) Unwrap() error { return e.err }

// Call sends req (with V set) and reads the answer: each progress line goes
// to onProgress (which may be nil), and the final line is returned. A final
// error line is returned as an error with the master's text, along with the
// line itself. If the master closes the connection first, the error is
// ErrConnClosed; if ctx ends first, ctx's error.
func (c *Client) Call(ctx context.Context, req Request, onProgress func(Progress)) (Response, error) {
	if err := ctx.Err(); err != nil {
		return Response{}, err
	}
	defer c.interruptOn(ctx)()

	req.V = Version
	sendErr := c.send(req)
	// Even if sending failed, read: a master that refused the connection
	// (wrong uid, busy) wrote why before it closed, and that is the
	// message to show.
	for {
		resp, err := c.readResponse()
		if err != nil {
			if sendErr != nil && !errors.Is(err, errBadResponse) {
				err = sendErr
			}
			return Response{}, c.ioError(ctx, err)
		}
		switch resp.Type {
		case TypeProgress:
			if onProgress != nil && resp.Progress != nil {
				onProgress(*resp.Progress)
			}
		case TypeDone:
			return resp, nil
		case TypeError:
			if resp.Error == "" {
				resp.Error = "the master answered with an error without a message"
			}
			return resp, errors.New(resp.Error)
		}
		// Any other type comes from a newer master and is not for us.
	}
}

// WaitClosed reads until the master closes the connection, which it does
// when it exits; `baton stop` uses it after a stop request. It returns nil
// then, or ctx's error if ctx ends first.
func (c *Client) WaitClosed(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	defer c.interruptOn(ctx)()
	_, err := io.Copy(io.Discard, c.r)
	if err == nil || isConnGone(err) {
		return nil
	}
	return c.ioError(ctx, err)
}

// Close closes the connection.
func (c *Client) Close() error {
	return c.conn.Close()
}

// errBadResponse marks a line from the master that is not a response.
var errBadResponse = errors.New("bad response from the master")

func (c *Client) send(req Request) error {
	line, err := json.Marshal(req)
	if err != nil {
		return err
	}
	_, err = c.conn.Write(append(line, '\n'))
	return err
}

func (c *Client) readResponse() (Response, error) {
	line, err := readLine(c.r, maxResponseLine)
	if err != nil {
		if errors.Is(err, errLineTooLong) {
			return Response{}, fmt.Errorf("%w: a line over %d bytes", errBadResponse, maxResponseLine)
		}
		return Response{}, err // io.EOF also when the line was cut short
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return Response{}, fmt.Errorf("%w: %v", errBadResponse, err)
	}
	return resp, nil
}

// ioError turns a failed read or write into the error Call returns.
func (c *Client) ioError(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case isConnGone(err):
		return ErrConnClosed
	default:
		return err
	}
}

func isConnGone(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// interruptOn makes the connection's blocked reads and writes return when
// ctx ends, until the returned function is called; once that has returned,
// no deadline is being set behind the caller's back.
func (c *Client) interruptOn(ctx context.Context) (release func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	interrupted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(interrupted)
		c.conn.SetDeadline(time.Unix(1, 0)) // in the past: pending I/O fails now
	})
	return func() {
		if !stop() {
			<-interrupted
		}
	}
}
