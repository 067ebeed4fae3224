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
	"runtime/debug"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// maxRequestLine is the longest request line the server reads. Real
// requests are under 100 bytes; the limit only stops a client from making
// the master buffer without end.
const maxRequestLine = 64 << 10

// validCommands is listed in the error for an unknown command.
const validCommands = "status, reload, upgrade, scale, stop"

// serveConn serves the one request of an admitted connection.
func (s *Server) serveConn(conn *net.UnixConn, peer *unix.Ucred) {
	defer s.untrack(conn)

	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	// A client that stops reading is as gone as one that hung up.
	w := &lineWriter{conn: conn, timeout: s.opts.writeTimeout, broken: cancel}

	line, err := s.readRequest(conn)
	if err != nil {
		w.send(errorResponse(s.opts.readErrorText(err)))
		return
	}

	watched := make(chan struct{})
	go func() {
		defer close(watched)
		watchHangup(conn, cancel)
	}()
	// Closing conn ends the watcher; wait for it, so nothing is left
	// reading conn once this connection is done.
	defer func() { conn.Close(); <-watched }()

	req, resp := s.answer(ctx, line, w)
	s.log.Debug("control request", "cmd", req.Cmd, "uid", peer.Uid, "pid", peer.Pid, "type", resp.Type, "error", resp.Error)
	if req.Cmd == CmdStop && resp.Type == TypeDone {
		// `baton stop` waits for the master to exit by waiting for EOF:
		// keep the connection open until the server closes (or the
		// client gives up).
		<-ctx.Done()
	}
}

// readRequest reads the request line, within the size limit and the time
// limit for the whole line, however slowly it trickles in.
func (s *Server) readRequest(conn *net.UnixConn) ([]byte, error) {
	if err := conn.SetReadDeadline(time.Now().Add(s.opts.readTimeout)); err != nil {
		return nil, err
	}
	line, err := readLine(bufio.NewReaderSize(conn, 4096), s.opts.maxRequest)
	if errors.Is(err, io.EOF) && len(line) > 0 {
		err = nil // a last line without '\n' (`printf ... | nc -N -U`) is still a request
	}
	if err != nil {
		return nil, err
	}
	// From here on, reads only watch for the client hanging up.
	return line, conn.SetReadDeadline(time.Time{})
}

// readErrorText is the error line for a request that could not be read.
func (o options) readErrorText(err error) string {
	switch {
	case errors.Is(err, errLineTooLong):
		return fmt.Sprintf("request too large (the limit is %d bytes)", o.maxRequest)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Sprintf("timed out waiting for a request (%s)", o.readTimeout)
	case errors.Is(err, io.EOF):
		return "no request received"
	default:
		return "reading the request: " + err.Error()
	}
}

// answer parses one request line, carries it out and writes its response
// lines: zero or more progress lines, then exactly one final line, which it
// also returns.
func (s *Server) answer(ctx context.Context, line []byte, w *lineWriter) (Request, Response) {
	req, err := parseRequest(line)
	var resp Response
	if err != nil {
		resp = errorResponse(err.Error())
	} else {
		resp = s.dispatch(ctx, req, w)
	}
	w.send(resp)
	return req, resp
}

// parseRequest decodes and checks a request line. Unknown fields are
// ignored, so that newer clients can add optional ones.
func parseRequest(line []byte) (Request, error) {
	var req Request
	if err := json.Unmarshal(line, &req); err != nil {
		return Request{}, fmt.Errorf(`malformed request: %v (send one JSON object on one line, like {"v":1,"cmd":"status"})`, err)
	}
	if req.V != Version {
		return req, fmt.Errorf("unsupported protocol version %d: this master speaks version %d", req.V, Version)
	}
	switch req.Cmd {
	case CmdStatus, CmdReload, CmdUpgrade, CmdStop:
	case CmdScale:
		if req.Workers < 1 || req.Workers > MaxWorkers {
			return req, fmt.Errorf("scale needs workers >= 1 and <= %d (baton's ceiling), got %d", MaxWorkers, req.Workers)
		}
	case "":
		return req, fmt.Errorf("the request has no cmd (valid commands: %s)", validCommands)
	default:
		return req, fmt.Errorf("unknown command %s (valid commands: %s)", quoteShort(req.Cmd), validCommands)
	}
	return req, nil
}

// quoteShort quotes s for an error message, cut to a readable length.
func quoteShort(s string) string {
	const limit = 40
	if len(s) > limit {
		return fmt.Sprintf("%q...", s[:limit])
	}
	return fmt.Sprintf("%q", s)
}

// dispatch calls the handler for a valid request and turns what it returns
// into the final response. A panicking handler fails this request, not the
// master that runs the workers.
func (s *Server) dispatch(ctx context.Context, req Request, w *lineWriter) (resp Response) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("control socket: handler panicked", "cmd", req.Cmd, "panic", p, "stack", string(debug.Stack()))
			resp = errorResponse(fmt.Sprintf("internal error in the master while handling %s: %v", req.Cmd, p))
		}
	}()
	switch req.Cmd {
	case CmdStatus:
		st, err := s.h.Status(ctx)
		if err != nil {
			return s.handlerError(req.Cmd, err)
		}
		return Response{Type: TypeDone, Status: &st}
	case CmdReload:
		return s.reloadOrUpgrade(ctx, req, w, s.h.Reload, s.h.TriggerReload)
	case CmdUpgrade:
		return s.reloadOrUpgrade(ctx, req, w, s.h.Upgrade, s.h.TriggerUpgrade)
	case CmdScale:
		return s.doneOrError(req.Cmd, s.h.Scale(ctx, req.Workers))
	case CmdStop:
		return s.doneOrError(req.Cmd, s.h.Stop(ctx, req.Quick))
	}
	return errorResponse("unknown command " + quoteShort(req.Cmd)) // parseRequest let it through: a bug
}

// reloadOrUpgrade runs a reload or an upgrade: with wait, streaming its
// progress and ending with its result (a failed reload is still "done",
// with ok false); without, just starting it.
func (s *Server) reloadOrUpgrade(ctx context.Context, req Request, w *lineWriter,
	run func(context.Context, func(Progress)) (ReloadResult, error),
	trigger func(context.Context) error,
) Response {
	if !req.Wait {
		return s.doneOrError(req.Cmd, trigger(ctx))
	}
	res, err := runWithProgress(ctx, w, run)
	if err != nil {
		return s.handlerError(req.Cmd, err)
	}
	return Response{Type: TypeDone, Reload: &res}
}

// runWithProgress runs fn with a progress callback that relays to w, and
// returns once the last progress line is out of the way of the final one.
func runWithProgress(ctx context.Context, w *lineWriter,
	fn func(context.Context, func(Progress)) (ReloadResult, error),
) (ReloadResult, error) {
	pump := startProgressPump(w)
	defer pump.finish()
	return fn(ctx, pump.report)
}

func (s *Server) doneOrError(cmd string, err error) Response {
	if err != nil {
		return s.handlerError(cmd, err)
	}
	return Response{Type: TypeDone}
}

// handlerError is the error line for a handler's error.
func (s *Server) handlerError(cmd string, err error) Response {
	msg := err.Error()
	switch {
	case errors.Is(err, context.Canceled) && s.ctx.Err() != nil:
		msg = "the master is shutting down"
	case msg == "":
		msg = cmd + " failed" // an empty error field would vanish from the line
	}
	return errorResponse(msg)
}

func errorResponse(msg string) Response {
	return Response{Type: TypeError, Error: msg}
}

// lineWriter writes response lines to a connection, each within its own
// deadline, so a client that stops reading cannot hold a goroutine of the
// master for longer than that. After one failed write it writes nothing
// more. It is not safe for concurrent use.
type lineWriter struct {
	conn    net.Conn
	timeout time.Duration
	broken  func() // called when a write fails: nobody is reading any more
	err     error
}

func (w *lineWriter) send(resp Response) error {
	if w.err != nil {
		return w.err
	}
	resp.V = Version
	line, err := json.Marshal(resp)
	if err != nil {
		// A handler returned something JSON cannot carry (a NaN, a
		// year past 9999): the client still gets its one final line.
		line, _ = json.Marshal(Response{V: Version, Type: TypeError, Error: "internal error: cannot encode the response: " + err.Error()})
	}
	line = append(line, '\n')
	if err := w.conn.SetWriteDeadline(time.Now().Add(w.timeout)); err == nil {
		_, err = w.conn.Write(line)
	}
	if err != nil {
		w.err = err
		if w.broken != nil {
			w.broken()
		}
	}
	return w.err
}

// progressPump relays a handler's progress reports to the client without
// ever making the handler wait: report only records the newest progress,
// and the pump's goroutine writes whatever is newest whenever the
// connection can take a line. A slow reader sees fewer lines; the reload
// never slows down for it.
type progressPump struct {
	w       *lineWriter
	mu      sync.Mutex
	latest  *Progress     // reported and not yet written, guarded by mu
	wake    chan struct{} // capacity 1: latest has changed
	stop    chan struct{}
	stopped chan struct{}
}

func startProgressPump(w *lineWriter) *progressPump {
	p := &progressPump{
		w:       w,
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go p.run()
	return p
}

// report is the handler's progress callback. It never blocks on the
// connection, and may be called even after the handler has returned.
func (p *progressPump) report(pr Progress) {
	p.mu.Lock()
	p.latest = &pr
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default: // a wake-up is already pending; it will pick this one up
	}
}

func (p *progressPump) run() {
	defer close(p.stopped)
	for {
		select {
		case <-p.wake:
			p.writeLatest()
		case <-p.stop:
			p.writeLatest() // the last progress goes out before the final line
			return
		}
	}
}

func (p *progressPump) writeLatest() {
	p.mu.Lock()
	pr := p.latest
	p.latest = nil
	p.mu.Unlock()
	if pr != nil {
		p.w.send(Response{Type: TypeProgress, Progress: pr})
	}
}

// finish writes the newest unwritten progress and stops the pump; after it
// returns, the caller owns the writer again.
func (p *progressPump) finish() {
	close(p.stop)
	<-p.stopped
}

// watchHangup calls hangup when the client goes away: a full close or a
// reset. A half-close is not a hangup: a client that shuts down its sending
// side after the request (as `nc -N` does) is still reading the answer.
// Bytes after the request line are ignored. It returns when conn is closed.
func watchHangup(conn *net.UnixConn, hangup func()) {
	defer hangup()
	buf := make([]byte, 512)
	for {
		_, err := conn.Read(buf)
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			waitForFullClose(conn)
		}
		return
	}
}

// waitForFullClose returns when the peer, having shut down its sending
// side, closes its end completely, or when conn is closed here. On a unix
// stream socket the kernel reports POLLHUP only once both directions are
// shut down, which is how a half-closed client is told from a gone one.
// The runtime's poller wakes us for every change on the socket; each
// wake-up checks for POLLHUP.
func waitForFullClose(conn *net.UnixConn) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool { return peerGone(int(fd)) })
}

// peerGone polls fd without waiting and says if the peer has fully closed
// or the socket is in error.
func peerGone(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err != nil || fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
	}
}
