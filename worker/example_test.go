package worker_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

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

	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from worker %d (pid %d)\n", worker.WorkerID(), os.Getpid())
		}),
	}
	serveErr := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { serveErr <- srv.Serve(l) }()
	}
	worker.Ready()

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	select {
	case <-stop:
	case err := <-serveErr:
		log.Fatal(err)
	}

	// Stop accepting, finish what is in flight, but not forever: baton sends
	// SIGKILL once its graceful timeout runs out.
	worker.Stopping()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Printf("shutdown: %v", err)
	}
}
