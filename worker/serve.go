package worker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// newConnGrace bounds how long ServeHTTP waits, after it stopped accepting,
// for accepted connections to deliver their first request. A client that
// connects and sends nothing is not waited for longer; net/http itself
// treats such a connection as idle after 5 s.
const newConnGrace = 5 * time.Second

// keepAliveLinger bounds how long ServeHTTP keeps idle keep-alive
// connections open after it stopped accepting, so that a client's next
// request on one is answered (with Connection: close) instead of racing
// the close: a client that sends on a connection just as the server
// closes it gets EOF or a reset, and only clients that retry hide that.
// A connection idle for the whole linger is likely one its client's pool
// does not use; Shutdown closes it then.
const keepAliveLinger = time.Second

// ServeHTTP serves srv on every listener until ctx is done, then shuts it
// down gracefully and returns nil; or it returns the first error a listener
// fails with, after shutting the others down.
//
// It exists because http.Server.Shutdown alone drops requests during every
// reload: a connection accepted just before Shutdown whose request is read
// just after it is closed without a response, and the client sees EOF on a
// fresh connection (golang/go#75591). And Shutdown closes idle keep-alive
// connections at once, so a client that sends its next request on one in
// that instant gets EOF. ServeHTTP instead stops accepting and answers
// every request from then on with Connection: close; it waits until every
// accepted connection has delivered its request (bounded by 5 s) and until
// the kept-alive ones have been used once more and closed (bounded by 1 s),
// and only then calls Shutdown, which waits for the requests in flight.
// It wraps srv.Handler for this. The process manager bounds the whole
// drain: baton sends SIGKILL after graceful_timeout.
//
// It sends STOPPING=1 when the shutdown begins; call Ready yourself once
// the app is ready to serve.
func ServeHTTP(ctx context.Context, srv *http.Server, listeners []net.Listener) error {
	if len(listeners) == 0 {
		return errors.New("worker: ServeHTTP needs at least one listener")
	}
	conns := trackConns(srv)
	var stopping atomic.Bool
	closeWhenStopping(srv, &stopping)
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
	stopping.Store(true)
	for _, c := range closers {
		c.Close()
	}
	// Serve tracks every connection it accepted before it returns.
	serving.Wait()
	conns.waitUntil(newConnGrace, func(st http.ConnState) bool { return st != http.StateNew })
	conns.waitUntil(keepAliveLinger, func(st http.ConnState) bool { return st != http.StateIdle })
	// Requests still running that began before the stop: their
	// connections close after the response.
	srv.SetKeepAlivesEnabled(false)
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

// closeWhenStopping wraps srv's handler so that once stopping is set
// every response asks the client to close the connection.
func closeWhenStopping(srv *http.Server, stopping *atomic.Bool) {
	next := srv.Handler
	if next == nil {
		next = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if stopping.Load() {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

// connStates follows the state of every open connection.
type connStates struct {
	mu    sync.Mutex
	conns map[net.Conn]http.ConnState
}

// trackConns hooks srv.ConnState, keeping any hook already set.
func trackConns(srv *http.Server) *connStates {
	cs := &connStates{conns: map[net.Conn]http.ConnState{}}
	next := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		cs.mu.Lock()
		if st == http.StateClosed || st == http.StateHijacked {
			delete(cs.conns, c)
		} else {
			cs.conns[c] = st
		}
		cs.mu.Unlock()
		if next != nil {
			next(c, st)
		}
	}
	return cs
}

// all reports whether every open connection's state satisfies ok.
func (cs *connStates) all(ok func(http.ConnState) bool) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, st := range cs.conns {
		if !ok(st) {
			return false
		}
	}
	return true
}

// waitUntil waits until every open connection's state satisfies ok, or
// max has passed.
func (cs *connStates) waitUntil(max time.Duration, ok func(http.ConnState) bool) {
	deadline := time.Now().Add(max)
	for pause := time.Millisecond; !cs.all(ok) && time.Now().Before(deadline); pause = min(2*pause, 50*time.Millisecond) {
		time.Sleep(pause)
	}
}
