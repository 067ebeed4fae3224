package worker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"
)

// newConnGrace bounds how long ServeHTTP waits, after it stopped accepting,
// for accepted connections to deliver their first request. A client that
// connects and sends nothing is not waited for longer; net/http itself
// treats such a connection as idle after 5 s.
const newConnGrace = 5 * time.Second

// ServeHTTP serves srv on every listener until ctx is done, then shuts it
// down gracefully and returns nil; or it returns the first error a listener
// fails with, after shutting the others down.
//
// It exists because http.Server.Shutdown alone drops requests during every
// reload: a connection accepted just before Shutdown whose request is read
// just after it is closed without a response, and the client sees EOF on a
// fresh connection (golang/go#75591). ServeHTTP first turns keep-alives off
// and stops accepting, then waits until every accepted connection has
// delivered its request (bounded by 5 s), and only then calls Shutdown, which
// waits for the requests in flight. The process manager bounds the whole
// drain: baton sends SIGKILL after graceful_timeout.
//
// It sends STOPPING=1 when the shutdown begins; call Ready yourself once
// the app is ready to serve.
func ServeHTTP(ctx context.Context, srv *http.Server, listeners []net.Listener) error {
	if len(listeners) == 0 {
		return errors.New("worker: ServeHTTP needs at least one listener")
	}
	fresh := trackFreshConns(srv)
	closers := make([]*closeOnceListener, len(listeners))
	serveErrs := make(chan error, len(listeners))
	var serving sync.WaitGroup
	for i, l := range listeners {
		closers[i] = &closeOnceListener{Listener: l}
		serving.Add(1)
		go func() {
			defer serving.Done()
			serveErrs <- srv.Serve(closers[i])
		}()
	}

	var firstErr error
	select {
	case <-ctx.Done():
	case firstErr = <-serveErrs:
	}
	Stopping()
	srv.SetKeepAlivesEnabled(false)
	for _, c := range closers {
		c.Close()
	}
	// Serve tracks every connection it accepted before it returns.
	serving.Wait()
	fresh.waitDelivered(newConnGrace)
	if err := srv.Shutdown(context.Background()); err != nil && firstErr == nil {
		firstErr = err
	}
	if errors.Is(firstErr, net.ErrClosed) || errors.Is(firstErr, http.ErrServerClosed) {
		return nil
	}
	return firstErr
}

// closeOnceListener lets ServeHTTP close a listener that Shutdown closes
// again.
type closeOnceListener struct {
	net.Listener
	once sync.Once
	err  error
}

func (l *closeOnceListener) Close() error {
	l.once.Do(func() { l.err = l.Listener.Close() })
	return l.err
}

// freshConns counts connections that were accepted but have not yet begun
// a request (http.StateNew).
type freshConns struct {
	mu    sync.Mutex
	conns map[net.Conn]bool
}

// trackFreshConns hooks srv.ConnState, keeping any hook already set.
func trackFreshConns(srv *http.Server) *freshConns {
	f := &freshConns{conns: map[net.Conn]bool{}}
	next := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		f.mu.Lock()
		if st == http.StateNew {
			f.conns[c] = true
		} else {
			delete(f.conns, c)
		}
		f.mu.Unlock()
		if next != nil {
			next(c, st)
		}
	}
	return f
}

func (f *freshConns) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// waitDelivered waits until no connection is fresh, or max has passed.
func (f *freshConns) waitDelivered(max time.Duration) {
	deadline := time.Now().Add(max)
	for pause := time.Millisecond; f.count() > 0 && time.Now().Before(deadline); pause = min(2*pause, 50*time.Millisecond) {
		time.Sleep(pause)
	}
}
