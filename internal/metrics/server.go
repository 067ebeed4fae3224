package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/fdexec"
)

// options are the server's limits. Serve uses defaultOptions; tests
// shorten them.
type options struct {
	// readHeaderTimeout also closes a connection that never sends a byte:
	// http.Server sets it as the read deadline as soon as it accepts.
	readHeaderTimeout time.Duration
	readTimeout       time.Duration
	writeTimeout      time.Duration // above probeTimeout, so a slow master still gets its 503 out
	idleTimeout       time.Duration // between two requests of a keep-alive connection
	maxConns          int
}

// defaultOptions: the endpoints answer small bodies, so generous timeouts
// only serve to stop slow or idle clients from holding connections
// forever; the connection cap bounds what they hold meanwhile.
func defaultOptions() options {
	return options{
		readHeaderTimeout: 5 * time.Second,
		readTimeout:       10 * time.Second,
		writeTimeout:      30 * time.Second,
		idleTimeout:       60 * time.Second,
		maxConns:          MaxConns,
	}
}

const maxHeaderBytes = 64 << 10

// Server is the running metrics HTTP server.
type Server struct {
	srv  *http.Server
	ln   *limitListener
	done chan struct{} // closed when the serve goroutine has returned
	once sync.Once
	err  error
}

// Serve binds addr synchronously, so a busy port is reported to the caller
// (at startup or reload) rather than only logged, then serves h in a
// goroutine. It holds at most MaxConns connections at once (see
// limitListener). A nil log discards server errors.
func Serve(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	return serve(addr, h, log, defaultOptions())
}

func serve(addr string, h http.Handler, log *slog.Logger, opts options) (*Server, error) {
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, listenError(addr, err)
	}
	return serveOn(tcp, h, log, opts), nil
}

// ServeFD serves h on fd, a listening TCP socket that survived this
// process's exec (an in-place upgrade): no probe finds the port closed
// meanwhile.
func ServeFD(fd int, h http.Handler, log *slog.Logger) (*Server, error) {
	unix.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "metrics")
	defer f.Close()
	tcp, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("metrics: the listener kept across the upgrade: %w", err)
	}
	return serveOn(tcp, h, log, defaultOptions()), nil
}

// KeepOnExec makes the listening socket survive this process's exec
// (keep), or not, and returns its fd.
func (s *Server) KeepOnExec(keep bool) (int, error) {
	sc, ok := s.ln.Listener.(syscall.Conn)
	if !ok {
		return -1, errors.New("metrics: the listener has no file descriptor")
	}
	return fdexec.KeepConn(sc, keep)
}

func serveOn(tcp net.Listener, h http.Handler, log *slog.Logger, opts options) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln := newLimitListener(tcp, opts.maxConns, log)
	s := &Server{
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: opts.readHeaderTimeout,
			ReadTimeout:       opts.readTimeout,
			WriteTimeout:      opts.writeTimeout,
			IdleTimeout:       opts.idleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ConnState:         ln.connState,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
		ln:   ln,
		done: make(chan struct{}),
	}
	go s.serve(log)
	return s
}

func listenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("metrics: cannot listen on %s: address already in use (another process, or another baton, holds it): %w", addr, err)
	}
	return fmt.Errorf("metrics: cannot listen on %s: %w", addr, err)
}

func (s *Server) serve(log *slog.Logger) {
	defer close(s.done)
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("metrics server stopped", "addr", s.Addr(), "err", err)
	}
}

// Addr returns the bound address, with the real port when addr had port 0.
func (s *Server) Addr() string {
	return s.ln.Addr().String()
}

// Close stops the server at once, closing open connections, and waits for
// the serve goroutine to return. It does not drain in-flight scrapes: it is
// called when the master exits or moves the endpoint, and a scrape lost then
// is harmless. Close is safe to call more than once.
func (s *Server) Close() error {
	s.once.Do(func() {
		s.err = s.srv.Close()
		<-s.done
	})
	return s.err
}
