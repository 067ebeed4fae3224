// Package worker lets a Go program run as a worker under baton, or as a
// socket-activated service under systemd. It uses the standard library only.
//
// baton (like systemd) binds the listening sockets once and hands them to
// every worker as inherited file descriptors 3, 4, ... described by the
// environment variables LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES. The worker
// tells its manager how it is doing with short text datagrams sent to the unix
// socket named by NOTIFY_SOCKET ("READY=1", "STOPPING=1", "WATCHDOG=1",
// "STATUS=..."). Both protocols are systemd's, so a program written with this
// package also runs unchanged as a systemd service with Type=notify.
//
// A typical worker takes its listeners, serves on all of them, says it is
// ready, and drains in-flight requests when asked to stop with SIGTERM:
//
//	func main() {
//		listeners, err := worker.ListenerList()
//		if err != nil {
//			log.Fatal(err)
//		}
//		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
//		defer stop()
//		worker.Ready()
//		srv := &http.Server{Handler: http.HandlerFunc(hello)}
//		// Serves until SIGTERM, then drains without dropping a request.
//		if err := worker.ServeHTTP(ctx, srv, listeners); err != nil {
//			log.Fatal(err)
//		}
//	}
//
// Every function is safe to call when the program was not started by baton or
// systemd: Listeners returns no listeners, and the notify functions do nothing.
package worker
