// Package demo is the HTTP worker that baton runs when the user asks for a
// demonstration instead of an app of their own. It is an ordinary worker
// built on the public worker package: it serves every listener baton hands
// it, tells baton when it is ready, and drains in-flight requests on SIGTERM.
package demo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/baton-pm/baton/worker"
)

// shutdownTimeout caps the drain on SIGTERM so that a stuck client cannot hold
// the worker forever; it is meant to stay below baton's graceful timeout.
const shutdownTimeout = 25 * time.Second

// Run serves the demo until SIGTERM or SIGINT, then shuts down gracefully and
// returns nil. It fails when the process was not started by baton.
func Run() error {
	listeners, err := worker.ListenerList()
	if err != nil {
		return err
	}
	if len(listeners) == 0 {
		return errors.New("the demo worker must be started by baton: no LISTEN_FDS")
	}

	// Catch the signals before saying ready, so an early stop is not lost.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	serveErr := serveAll(srv, listeners)
	worker.Ready()

	select {
	case <-ctx.Done():
	case err := <-serveErr:
		return fmt.Errorf("demo worker: %w", err)
	}
	worker.Stopping()
	return shutdown(srv)
}

// hello answers every request with who served it.
func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "hello from baton worker %d (pid %d, generation %d)\n",
		worker.WorkerID(), os.Getpid(), worker.Generation())
}

// serveAll serves srv on every listener. The channel receives the first
// failure of any of them; Shutdown is not a failure.
func serveAll(srv *http.Server, listeners []net.Listener) <-chan error {
	errs := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() {
			if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
				errs <- err
			}
		}()
	}
	return errs
}

// shutdown stops accepting and waits for in-flight requests, at most
// shutdownTimeout.
func shutdown(srv *http.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		return fmt.Errorf("demo worker: graceful shutdown: %w", err)
	}
	return nil
}
