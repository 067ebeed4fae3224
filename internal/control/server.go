package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/fdexec"
)

// options are the server's limits. Listen uses defaultOptions; tests shorten
// the timeouts and open the socket's mode.
type options struct {
	readTimeout  time.Duration // to receive the whole request line
	writeTimeout time.Duration // to write one response line
	maxRequest   int           // bytes in the request line, without its '\n'
	maxConns     int           // connections served at once; more are told "busy"
	socketMode   os.FileMode   // of the socket file
	closeGrace   time.Duration // Close waits this long for connections to finish
}

// MaxConns is how many control connections the server holds at once; more
// are told "busy". Each is one of the master's file descriptors.
const MaxConns = 64

func defaultOptions() options {
	return options{
		readTimeout:  10 * time.Second,
		writeTimeout: 10 * time.Second,
		maxRequest:   maxRequestLine,
		maxConns:     MaxConns,
		socketMode:   0o600,
		closeGrace:   2 * time.Second,
	}
}

// rejectWriteTimeout bounds the one line written to a connection that is
// refused before it is served. The line goes into a fresh connection's empty
// buffer, so it never needs long; the bound keeps the accept loop moving.
const rejectWriteTimeout = 100 * time.Millisecond

// Server serves the control socket: one request per connection, answered by
// a Handler, for the master's own uid and root only.
type Server struct {
	path string
	file fileID // the socket file we bound, so Close removes only ours
	ln   *net.UnixListener
	h    Handler
	log  *slog.Logger
	uid  int // the master's uid; it and root may connect
	opts options

	ctx    context.Context // cancelled by Close; every connection's context derives from it
	cancel context.CancelFunc
	slots  chan struct{}  // one token per connection being served
	wg     sync.WaitGroup // connections being served

	mu     sync.Mutex
	closed bool
	conns  map[*net.UnixConn]struct{}
}

// Listen creates the control socket at path, mode 0600, replacing a stale
// socket file left by a master that died. A live socket, or a path that
// exists and is not a socket, is an error and is left alone. log may be nil.
//
// When path is in the private directory of DefaultPath's last case, Listen
// creates that directory (0700) if need be and checks it first.
//
// The error matches ErrTakenByAnotherUser (errors.Is) when the path, or
// that directory, belongs to another user, and ErrUnsafeDirectory when
// that directory is ours but not private: a master should not start then,
// even on a default path, since its clients would find either nothing or
// someone else there.
func Listen(path string, h Handler, log *slog.Logger) (*Server, error) {
	return listen(path, h, log, defaultOptions())
}

func listen(path string, h Handler, log *slog.Logger, opts options) (*Server, error) {
	if h == nil {
		return nil, errors.New("control: nil Handler")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkSocketPath(path); err != nil {
		return nil, err
	}
	// The default path's private directory is baton's to create and check.
	if dir := privateDir(os.Getuid()); filepath.Clean(filepath.Dir(path)) == filepath.Clean(dir) {
		if err := ensurePrivateDir(dir, os.Getuid()); err != nil {
			return nil, err
		}
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, id, err := bindSocket(path, opts.socketMode)
	if err != nil {
		return nil, err
	}
	return newServer(path, id, ln, h, log, opts), nil
}

// Adopt serves the control socket at path through fd, its listening
// socket, which survived this process's exec (an in-place upgrade): no
// client finds the socket missing meanwhile.
func Adopt(fd int, path string, h Handler, log *slog.Logger) (*Server, error) {
	if h == nil {
		return nil, errors.New("control: nil Handler")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ul, ok := ln.(*net.UnixListener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: not a unix socket", path)
	}
	ul.SetUnlinkOnClose(false) // Close removes the file only if it is still ours
	id, err := socketFileID(path)
	if err != nil {
		ul.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	return newServer(path, id, ul, h, log, defaultOptions()), nil
}

// KeepOnExec makes the listening socket survive this process's exec
// (keep), or not, and returns its fd.
func (s *Server) KeepOnExec(keep bool) (int, error) {
	return fdexec.KeepConn(s.ln, keep)
}

func newServer(path string, id fileID, ln *net.UnixListener, h Handler, log *slog.Logger, opts options) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		path:   path,
		file:   id,
		ln:     ln,
		h:      h,
		log:    log,
		uid:    os.Getuid(),
		opts:   opts,
		ctx:    ctx,
		cancel: cancel,
		slots:  make(chan struct{}, opts.maxConns),
		conns:  make(map[*net.UnixConn]struct{}),
	}
}

// Serve accepts connections until Close, and returns then.
func (s *Server) Serve() {
	var backoff time.Duration
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			if s.isClosed() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors, most likely: wait and try again
			// rather than spin or give up on the control socket.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("control socket: accept failed", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		s.admit(conn)
	}
}

// Close stops accepting, cancels every connection's context, removes the
// socket file if it is still ours, and waits a little for connections to
// finish their last line. A handler that ignores its context is not waited
// for beyond that: its connection is closed under it.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()

	// Remove the file first, so a client arriving now finds no socket
	// rather than a refused connection.
	err := removeIfOurs(s.path, s.file)
	if cerr := s.ln.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	s.cancel()
	if !s.waitConns(s.opts.closeGrace) {
		s.closeConns()
	}
	return err
}

// Retire stops taking connections at once (the socket file goes, so a
// client arriving now finds none), lets the connections being served end
// on their own for up to wait, and then closes as Close does. A master
// whose control socket moves, or that hands the service to a new master,
// retires the old socket this way, so that a client waiting there for a
// reload or upgrade reads its result instead of being cut off.
func (s *Server) Retire(wait time.Duration) error {
	if s.isClosed() {
		return nil
	}
	err := removeIfOurs(s.path, s.file)
	if cerr := s.ln.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	s.waitConns(wait)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

// waitConns waits up to d for every connection to end, and says if they did.
func (s *Server) waitConns(d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// closeConns closes every connection still open, so that its client sees
// the master go away even while a handler is stuck.
func (s *Server) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for conn := range s.conns {
		conn.Close()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// admit decides whether to serve a new connection: the peer must be the
// master's uid or root, and there must be a free slot. It runs on the
// accept loop, so it only ever writes one short line itself.
func (s *Server) admit(conn *net.UnixConn) {
	cred, err := peerCred(conn)
	if err != nil {
		s.log.Warn("control socket: cannot read the peer's credentials; closing", "err", err)
		conn.Close()
		return
	}
	if int(cred.Uid) != s.uid && cred.Uid != 0 {
		s.log.Warn("control socket: refused a connection from another user",
			"uid", cred.Uid, "pid", cred.Pid, "master_uid", s.uid)
		reject(conn, fmt.Sprintf("permission denied: uid %d is not the master's uid %d or root", cred.Uid, s.uid))
		return
	}
	select {
	case s.slots <- struct{}{}:
	default:
		s.log.Warn("control socket: too many connections; refusing one", "max", s.opts.maxConns, "pid", cred.Pid)
		reject(conn, fmt.Sprintf("busy: the master is already serving %d control connections; try again", s.opts.maxConns))
		return
	}
	if !s.track(conn) {
		<-s.slots
		reject(conn, "the master is shutting down")
		return
	}
	go s.serveConn(conn, cred)
}

// track registers a connection to be served, unless the server is closed.
// Registering under the lock that Close takes keeps wg.Add from racing
// with Close's wg.Wait.
func (s *Server) track(conn *net.UnixConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	return true
}

// untrack closes a served connection and frees its slot.
func (s *Server) untrack(conn *net.UnixConn) {
	conn.Close()
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
	<-s.slots
	s.wg.Done()
}

// reject writes one error line to a connection that will not be served,
// and closes it.
func reject(conn *net.UnixConn, msg string) {
	w := &lineWriter{conn: conn, timeout: rejectWriteTimeout}
	w.send(Response{Type: TypeError, Error: msg})
	conn.Close()
}

// peerCred is who connected, as the kernel recorded it at connect time.
func peerCred(conn *net.UnixConn) (*unix.Ucred, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	err = rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil {
		return nil, err
	}
	return cred, credErr
}
