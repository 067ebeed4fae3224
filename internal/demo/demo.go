// Package demo is the HTTP worker that baton runs when the user asks for a
// demonstration instead of an app of their own. It is an ordinary worker
// built on the public worker package: it serves every listener baton hands
// it, tells baton when it is ready, and drains in-flight requests on SIGTERM.
package demo

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/baton-pm/baton/worker"
)

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
	worker.Ready()
	if err := worker.ServeHTTP(ctx, &http.Server{Handler: http.HandlerFunc(hello)}, listeners); err != nil {
		return fmt.Errorf("demo worker: %w", err)
	}
	return nil
}

// hello answers every request with who served it.
func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "hello from baton worker %d (pid %d, generation %d)\n",
		worker.WorkerID(), os.Getpid(), worker.Generation())
}
