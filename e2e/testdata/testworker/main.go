// Command testworker is the HTTP server that baton's end-to-end tests run as
// a worker. It reports what it inherited (pid, listeners, environment, the
// blocking mode of fd 3) and misbehaves on request: slow boot, failed boot,
// ignoring SIGTERM, leaving a child process behind, exiting mid-flight.
//
// Endpoints:
//
//	GET /            JSON: pid, ppid, worker_id, generation, listener (the name
//	                 of the listener that accepted the request), listen_fds,
//	                 listen_fdnames, listen_pid_matched, child_pid
//	GET /slow?ms=N   sleeps N ms, then replies "slow done"
//	GET /gated       creates gated.started in the working directory, then
//	                 replies like GET / once gated.release exists there (at
//	                 most 60 s; 503 after): an in-flight request whose end
//	                 the test decides (the interop matrix's drain check)
//	GET /exit?code=N replies, then exits with code N
//	GET /nonblock    JSON {"fd3_nonblocking": {"at_start": bool, "now": bool}}
//
// With -version-file F, the worker reads F at start, as an app reads its
// code, and GET / reports it as "version"; it fails at boot, saying why,
// when it cannot (a broken deploy).
//
// SIGTERM drains in-flight requests (at most -graceful) and exits 0; SIGINT
// exits 0 at once. -epoll-sets N makes N idle epoll sets that each watch
// fd 3, as an app with many event loops would: with the one of Go's poller,
// the worker has N+1 registrations of the listener for drain_unlisten.
// With -shutdown-listener-on-term, SIGTERM first calls shutdown(SHUT_RDWR)
// on the listener inherited as fd 3 (through its duplicate: fd 3 itself is
// closed by then), as servers do to wake their threads blocked in accept:
// that shuts the socket down for every process sharing it (issue 11,
// point 5).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-pm/baton/worker"
)

type options struct {
	bootDelay   time.Duration
	exitAtStart int
	ignoreTerm  bool
	spawnChild  bool
	notifyReady bool
	watchdogFor time.Duration
	graceful    time.Duration
	epollSets   int
	shutdownFD3 bool
	versionFile string
}

func parseFlags() options {
	var o options
	flag.DurationVar(&o.bootDelay, "boot-delay", 0, "sleep this long before serving (a slow import)")
	flag.IntVar(&o.exitAtStart, "exit-at-start", -1, "exit with this code at once (-1: don't)")
	flag.BoolVar(&o.ignoreTerm, "ignore-term", false, "ignore SIGTERM, so that only SIGKILL stops the worker")
	flag.BoolVar(&o.spawnChild, "spawn-child", false, "start `sleep 3600` in the worker's process group")
	flag.BoolVar(&o.notifyReady, "notify-ready", false, "send READY=1 once serving (and STOPPING=1 on SIGTERM)")
	flag.DurationVar(&o.watchdogFor, "watchdog-for", 0, "send WATCHDOG=1 every 100 ms for this long, then fall silent while still serving (a hang)")
	flag.DurationVar(&o.graceful, "graceful", 30*time.Second, "how long SIGTERM waits for in-flight requests")
	flag.IntVar(&o.epollSets, "epoll-sets", 0, "make this many epoll sets that each watch fd 3 for input")
	flag.BoolVar(&o.shutdownFD3, "shutdown-listener-on-term", false, "on SIGTERM, shutdown(SHUT_RDWR) the listener inherited as fd 3 before the graceful stop")
	flag.StringVar(&o.versionFile, "version-file", "", "read the app's version from this file at start (GET / reports it)")
	flag.Parse()
	return o
}

// startState is what the worker found at start, before worker.Listeners
// unset the activation variables and duplicated the descriptors.
type startState struct {
	listenFDs, listenFDNames string
	listenPIDMatched         bool
	fd3NonblockingAtStart    bool
	childPID                 int
	version                  string // from -version-file
}

func recordStartState() startState {
	nonblocking, err := fdNonblocking(3)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testworker: fd 3 at start: %v\n", err)
	}
	return startState{
		listenFDs:             os.Getenv("LISTEN_FDS"),
		listenFDNames:         os.Getenv("LISTEN_FDNAMES"),
		listenPIDMatched:      os.Getenv("LISTEN_PID") == strconv.Itoa(os.Getpid()),
		fd3NonblockingAtStart: nonblocking,
	}
}

func main() {
	opts := parseFlags()
	if opts.exitAtStart >= 0 {
		fmt.Fprintln(os.Stderr, "testworker: failing at boot as asked")
		os.Exit(opts.exitAtStart)
	}
	// Signals first: a SIGTERM during boot must not kill us with the default action.
	signals := watchSignals(opts.ignoreTerm)
	start := recordStartState()
	start.version = readVersion(opts.versionFile)
	// Before taking the listeners, like an app's slow import: Go's poller
	// registers a listener as soon as it is made, and baton's auto
	// readiness would see that as ready.
	time.Sleep(opts.bootDelay)

	// Before takeListeners closes fd 3: each registration stays in its
	// set, as (listener, fd 3), while the listener's duplicate keeps the
	// socket open.
	watchFD3(opts.epollSets)
	listeners, names := takeListeners()
	if opts.spawnChild {
		// After taking the listeners: they are close-on-exec by then, so the
		// child holds no socket, only a place in our process group.
		start.childPID = spawnSleep()
	}

	w := &testWorker{start: start, fd3: listeners[0]}
	ctx, stopServing := context.WithCancel(context.Background())
	servers, serveErr := w.serve(ctx, listeners, names)
	fmt.Fprintf(os.Stderr, "testworker: serving pid=%d worker=%s listeners=%d\n",
		os.Getpid(), os.Getenv("BATON_WORKER_ID"), len(listeners))
	if opts.watchdogFor > 0 {
		go pingWatchdog(opts.watchdogFor)
	}
	if opts.notifyReady {
		notify(worker.Ready())
	}

	select {
	case err := <-serveErr:
		fail(err)
	case sig := <-signals:
		if sig == syscall.SIGINT {
			os.Exit(0)
		}
		if opts.shutdownFD3 {
			shutdownListener(w.fd3)
		}
	}
	stopServing() // ServeHTTP sends STOPPING=1
	shutdown(servers, opts.graceful)
	os.Exit(0)
}

// readVersion is the trimmed content of file ("" when none is named); a
// file that cannot be read fails the boot, as a broken deploy would.
func readVersion(file string) string {
	if file == "" {
		return ""
	}
	data, err := os.ReadFile(file)
	if err != nil {
		fail(fmt.Errorf("reading the app's version: %w", err))
	}
	return strings.TrimSpace(string(data))
}

func watchSignals(ignoreTerm bool) <-chan os.Signal {
	signals := make(chan os.Signal, 2)
	if ignoreTerm {
		signal.Ignore(syscall.SIGTERM)
		signal.Notify(signals, syscall.SIGINT)
	} else {
		signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	}
	return signals
}

// takeListeners returns the inherited listeners in fd order with their names.
func takeListeners() ([]net.Listener, map[net.Listener]string) {
	byName, err := worker.Listeners()
	if err != nil {
		fail(err)
	}
	list, err := worker.ListenerList()
	if err != nil {
		fail(err)
	}
	if len(list) == 0 {
		fail(errors.New("no inherited listeners (LISTEN_PID/LISTEN_FDS not for this process)"))
	}
	names := make(map[net.Listener]string)
	for name, ls := range byName {
		for _, l := range ls {
			names[l] = name
		}
	}
	return list, names
}

// epollSets are the sets watchFD3 made, kept open for the worker's life.
var epollSets []int

// watchFD3 makes n epoll sets, each watching fd 3 for input.
func watchFD3(n int) {
	for range n {
		ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			fail(fmt.Errorf("epoll_create1: %w", err))
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: 3}
		if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, 3, &ev); err != nil {
			fail(fmt.Errorf("epoll_ctl(ADD fd 3): %w", err))
		}
		epollSets = append(epollSets, ep)
	}
}

func spawnSleep() int {
	child := exec.Command("sleep", "3600")
	if err := child.Start(); err != nil {
		fail(err)
	}
	go child.Wait() // reap it if it is killed while we live
	fmt.Fprintf(os.Stderr, "testworker: spawned child pid=%d\n", child.Process.Pid)
	return child.Process.Pid
}

// testWorker answers the requests.
type testWorker struct {
	start startState
	fd3   net.Listener // the listener made from fd 3
}

// serve runs one http.Server per listener, so that every handler knows
// which listener accepted its request.
func (w *testWorker) serve(ctx context.Context, listeners []net.Listener, names map[net.Listener]string) (done *sync.WaitGroup, errs <-chan error) {
	failed := make(chan error, len(listeners))
	done = &sync.WaitGroup{}
	for _, l := range listeners {
		// One server per listener, so a handler knows which one accepted.
		srv := &http.Server{Handler: w.routes(names[l])}
		done.Go(func() {
			if err := worker.ServeHTTP(ctx, srv, []net.Listener{l}); err != nil {
				failed <- err
			}
		})
	}
	return done, failed
}

func (w *testWorker) routes(listenerName string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(rw http.ResponseWriter, r *http.Request) {
		w.whoami(rw, listenerName)
	})
	mux.HandleFunc("GET /slow", slow)
	mux.HandleFunc("GET /gated", func(rw http.ResponseWriter, r *http.Request) {
		if !gated(r.Context()) {
			http.Error(rw, "gated.release did not appear", http.StatusServiceUnavailable)
			return
		}
		w.whoami(rw, listenerName)
	})
	mux.HandleFunc("GET /exit", exitAfterReply)
	mux.HandleFunc("GET /nonblock", w.nonblock)
	mux.HandleFunc("GET /grow", grow)
	return mux
}

func (w *testWorker) whoami(rw http.ResponseWriter, listenerName string) {
	writeJSON(rw, struct {
		PID              int    `json:"pid"`
		PPID             int    `json:"ppid"`
		WorkerID         string `json:"worker_id"`
		Generation       string `json:"generation"`
		Listener         string `json:"listener"`
		ListenFDs        string `json:"listen_fds"`
		ListenFDNames    string `json:"listen_fdnames"`
		ListenPIDMatched bool   `json:"listen_pid_matched"`
		ChildPID         int    `json:"child_pid"`
		Version          string `json:"version,omitempty"`
	}{
		PID:              os.Getpid(),
		PPID:             os.Getppid(),
		WorkerID:         os.Getenv("BATON_WORKER_ID"),
		Generation:       os.Getenv("BATON_GENERATION"),
		Listener:         listenerName,
		ListenFDs:        w.start.listenFDs,
		ListenFDNames:    w.start.listenFDNames,
		ListenPIDMatched: w.start.listenPIDMatched,
		ChildPID:         w.start.childPID,
		Version:          w.start.version,
	})
}

func slow(rw http.ResponseWriter, r *http.Request) {
	ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
		fmt.Fprint(rw, "slow done")
	case <-r.Context().Done(): // the client gave up
	}
}

// gated creates gated.started, then waits until gated.release exists (true),
// the client gives up or 60 s pass (false).
func gated(ctx context.Context) bool {
	if err := os.WriteFile("gated.started", nil, 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "testworker: %v\n", err)
		return false
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); {
		if _, err := os.Stat("gated.release"); err == nil {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
	return false
}

func exitAfterReply(rw http.ResponseWriter, r *http.Request) {
	code, _ := strconv.Atoi(r.URL.Query().Get("code"))
	body := fmt.Sprintf("exiting with %d\n", code)
	rw.Header().Set("Connection", "close")
	rw.Header().Set("Content-Length", strconv.Itoa(len(body)))
	fmt.Fprint(rw, body)
	// Flush hands the whole response to the kernel, which still delivers it
	// after the process is gone.
	http.NewResponseController(rw).Flush()
	os.Exit(code)
}

// nonblock reports whether the shared socket of fd 3 is in non-blocking
// mode, at start and now. O_NONBLOCK belongs to the open file description,
// which every process holding the socket shares: a master that hands it to
// exec via (*os.File).Fd() clears it for all of them (golang/go#43894).
func (w *testWorker) nonblock(rw http.ResponseWriter, r *http.Request) {
	now, err := listenerNonblocking(w.fd3)
	if err != nil {
		http.Error(rw, err.Error(), http.StatusInternalServerError)
		return
	}
	type modes struct {
		AtStart bool `json:"at_start"`
		Now     bool `json:"now"`
	}
	writeJSON(rw, struct {
		FD3Nonblocking modes `json:"fd3_nonblocking"`
	}{modes{AtStart: w.start.fd3NonblockingAtStart, Now: now}})
}

// listenerNonblocking reads O_NONBLOCK from the listener's own (duplicated)
// descriptor. Control, unlike File or Fd, leaves the blocking mode alone.
func listenerNonblocking(l net.Listener) (bool, error) {
	conn, ok := l.(syscall.Conn)
	if !ok {
		return false, fmt.Errorf("listener %T has no descriptor", l)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return false, err
	}
	var nonblocking bool
	var fdErr error
	if err := raw.Control(func(fd uintptr) { nonblocking, fdErr = fdNonblocking(fd) }); err != nil {
		return false, err
	}
	return nonblocking, fdErr
}

// shutdownListener calls shutdown(SHUT_RDWR) on l's socket. fd 3 itself is
// closed by now (worker.Listeners works on a duplicate), but shutdown acts
// on the socket, which the duplicate, fd 3 and every other process share.
func shutdownListener(l net.Listener) {
	var shutErr error
	raw, err := l.(syscall.Conn).SyscallConn()
	if err == nil {
		err = raw.Control(func(fd uintptr) { shutErr = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) })
	}
	if err = errors.Join(err, shutErr); err != nil {
		fmt.Fprintf(os.Stderr, "testworker: shutdown of the fd 3 listener: %v\n", err)
		return
	}
	fmt.Fprintf(os.Stderr, "testworker: pid=%d shut the fd 3 listener down (SHUT_RDWR)\n", os.Getpid())
}

func fdNonblocking(fd uintptr) (bool, error) {
	flags, _, errno := syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFL, 0)
	if errno != 0 {
		return false, fmt.Errorf("fcntl(%d, F_GETFL): %w", fd, errno)
	}
	return flags&syscall.O_NONBLOCK != 0, nil
}

func writeJSON(rw http.ResponseWriter, v any) {
	rw.Header().Set("Content-Type", "application/json")
	json.NewEncoder(rw).Encode(v)
}

// shutdown drains every server at once, within the graceful timeout.
// shutdown waits for the servers to drain, at most graceful.
func shutdown(done *sync.WaitGroup, graceful time.Duration) {
	drained := make(chan struct{})
	go func() { done.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(graceful):
		fmt.Fprintln(os.Stderr, "testworker: graceful shutdown timed out")
	}
}

func notify(err error) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "testworker: %v\n", err)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "testworker: %v\n", err)
	os.Exit(1)
}

// pingWatchdog sends WATCHDOG=1 every 100 ms for d, then stops, as a worker
// whose event loop hung would.
func pingWatchdog(d time.Duration) {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		notify(worker.Watchdog())
	}
}

// ballast is memory /grow allocated and keeps, to push the worker past a
// memory limit.
var ballast [][]byte

// grow allocates ?mb=N MiB, touches every page so it is resident, and keeps it.
func grow(rw http.ResponseWriter, r *http.Request) {
	mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
	b := make([]byte, mb<<20)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	ballast = append(ballast, b)
	fmt.Fprintf(rw, "grew %d MiB\n", mb)
}
