package worker_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/baton-pm/baton/worker"
)

// A web server that serves on every listener baton hands it, says when it is
// ready, and on SIGTERM lets in-flight requests finish before it exits.
func Example() {
	listeners, err := worker.ListenerList()
	if err != nil {
		log.Fatal(err)
	}
	if len(listeners) == 0 {
		log.Fatal("no inherited listeners: start me with baton run")
	}

	// Catch SIGTERM before saying ready, so an early stop is not lost.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	worker.Ready()

	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from worker %d (pid %d)\n", worker.WorkerID(), os.Getpid())
		}),
	}
	// Serve until SIGTERM, then stop accepting and finish every request
	// already accepted; baton sends SIGKILL once its graceful_timeout runs
	// out.
	if err := worker.ServeHTTP(ctx, srv, listeners); err != nil {
		log.Fatal(err)
	}
}
