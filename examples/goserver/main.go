// Command goserver is a minimal production-style web server for baton.
//
// baton binds the sockets and starts several copies of this program; each
// copy serves on the sockets it inherits, tells baton when it is ready, and
// on SIGTERM stops accepting and lets in-flight requests finish, which is
// what makes `baton reload` invisible to clients. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/baton-pm/baton/worker"
)

func main() {
	if err := run(); err != nil {
		log.Fatalf("goserver: %v", err)
	}
}

func run() error {
	// Register for SIGTERM before serving, so that a stop that comes right
	// after READY=1 is handled rather than killing the process outright.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	listeners, err := worker.ListenerList()
	if err != nil {
		return err
	}
	if len(listeners) == 0 {
		return errors.New("no inherited sockets: run me with `baton run -b ADDRESS -- ./goserver`")
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", hello)

	srv := &http.Server{
		Handler: mux,
		// Timeouts keep slow or idle clients from holding a worker forever.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	// Ready before serving is fine: the sockets already queue connections.
	if err := worker.Ready(); err != nil {
		log.Printf("goserver: telling baton we are ready: %v", err)
	}
	log.Printf("goserver: worker %d (pid %d, generation %d) serving on %d listener(s)",
		worker.WorkerID(), os.Getpid(), worker.Generation(), len(listeners))

	// ServeHTTP serves until SIGTERM, then stops accepting and lets every
	// accepted request finish; unlike srv.Shutdown alone it drops no request
	// that arrived just before the signal (golang/go#75591). baton bounds
	// the drain with its graceful_timeout.
	err = worker.ServeHTTP(ctx, srv, listeners)
	log.Printf("goserver: worker %d stopped", worker.WorkerID())
	return err
}

func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(w, "hello from worker %d (pid %d, generation %d)\n",
		worker.WorkerID(), os.Getpid(), worker.Generation())
}
