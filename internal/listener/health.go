package listener

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"golang.org/x/sys/unix"
)

// A listening socket is shared by the master and every worker, and any of
// them can break it for all: shutdown(2) with SHUT_RD or SHUT_RDWR on an
// inherited listener (a common way for a server to wake its own threads
// blocked in accept when it stops) acts on the socket, not on the caller's
// descriptor. What Linux does then, measured on 6.18 (issue 11, point 5):
//
// TCP, IPv4 and IPv6 alike:
//   - The socket leaves the LISTEN state (TCP_CLOSE) for every process:
//     SO_ACCEPTCONN reads 0, poll(2) reports POLLHUP, and it disappears
//     from /proc/net/tcp{,6} and `ss -lt`. New connections are refused
//     (RST); connections already in the accept queue are reset (their
//     clients read ECONNRESET).
//   - Every process waiting on it is woken: a blocking accept(2) returns
//     EINVAL, poll returns POLLHUP, an edge-triggered epoll (Go's netpoller)
//     reports EPOLLHUP once and accept then fails with EINVAL (Go's
//     http.Server.Serve returns that error, so a Go worker stops serving),
//     a level-triggered epoll reports EPOLLHUP on every wait (a busy loop).
//   - listen(2) again on the same socket re-arms it: the state is LISTEN
//     again in every process, new connections are accepted, a worker forked
//     later sees SO_ACCEPTCONN 1, and the epoll registrations the workers
//     made before the shutdown deliver EPOLLIN for the new connections.
//   - The port survives the shutdown only if it was bound explicitly. A
//     socket bound to port 0 loses its kernel-chosen port at the shutdown
//     (another socket can bind it then), and a bare listen(2) would pick a
//     new random port: the address must be bound again first. bind(2) on a
//     socket that kept its port fails with EINVAL.
//   - SHUT_WR alone does nothing visible: the listener keeps accepting and
//     the connections it accepts can be written to.
//   - A shutdown of a socket that is already shut down (two workers stopping
//     at the same moment) fails with ENOTCONN but still sets the socket's
//     shutdown flags, and a bare listen(2) keeps them: the socket listens
//     (SO_ACCEPTCONN 1, POLLHUP gone, in `ss -lt`), yet every connection it
//     accepts is born shut down (the server reads EOF or an error, and its
//     write fails with EPIPE; clients see EOF). Only sock_diag shows it
//     (INET_DIAG_SHUTDOWN; `ss -ltne` prints "---" or "<--" instead of
//     "<->"). connect(2) with AF_UNSPEC clears the flags (tcp_disconnect).
//
// Unix stream sockets:
//   - shutdown(2) with SHUT_RD or SHUT_RDWR sets the socket's shutdown flags
//     but leaves its state LISTEN: SO_ACCEPTCONN still reads 1, and
//     /proc/net/unix and `ss -xl` show it as before. connect(2) is refused
//     (ECONNREFUSED). Connections already queued can still be accepted; with
//     the queue empty accept fails (EAGAIN on a non-blocking socket, so an
//     edge-triggered server is not even told; EINVAL when blocking).
//   - poll(2) on the listener reports POLLRDHUP (and POLLHUP for SHUT_RDWR),
//     which a healthy listener never does; sock_diag's UNIX_DIAG_SHUTDOWN
//     attribute shows the flags too (1 RD, 2 WR, 3 both), at the cost of a
//     netlink round trip.
//   - listen(2) again succeeds but does not clear the shutdown flags, and
//     nothing else does: a unix listener that was shut down refuses
//     connections until the last descriptor of it is closed. Only a new
//     socket, and new workers that inherit it, bring the path back.
//   - SHUT_WR alone does nothing visible to clients (UNIX_DIAG_SHUTDOWN 2).

// ErrNotListening is wrapped by the error of Check when the socket no
// longer accepts connections.
var ErrNotListening = errors.New("not accepting connections")

// ErrCannotRearm is wrapped by the error of Rearm when the socket can never
// listen again (a unix socket that was shut down): only a new socket, that
// is a restart of baton, brings the address back. Other errors of Rearm may
// go away on a later try.
var ErrCannotRearm = errors.New("cannot be re-armed")

// Check reports whether the listener still accepts connections: nil, or an
// error wrapping ErrNotListening that says what is wrong (or the error of
// the system call that failed). It never blocks and reads nothing from
// /proc, so it can run after every worker exit: a getsockopt(2) and a
// poll(2) with a zero timeout, and for a listening TCP socket one sock_diag
// netlink round trip (tens of microseconds).
//
// A TCP listener that a process sharing it shut down reads SO_ACCEPTCONN 0;
// a unix one still reads 1 but polls POLLRDHUP; a TCP listener that was
// made to listen again with its shutdown flags still set (see above) is
// seen through sock_diag only (if the kernel has no inet_diag, Check skips
// that part). A shutdown(SHUT_WR) alone leaves a listener working, and
// Check returns nil for it.
func (l *Listener) Check() error {
	accepting, err := unix.GetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return fmt.Errorf("listener %s (%s): SO_ACCEPTCONN: %w", l.Name, l.Addr, err)
	}
	if accepting == 0 {
		return fmt.Errorf("listener %s (%s): %w: the socket is not listening any more (a process that shares it called shutdown(2) on it)",
			l.Name, l.Addr, ErrNotListening)
	}
	revents, err := pollNow(l.fd, unix.POLLRDHUP)
	if err != nil {
		return fmt.Errorf("listener %s (%s): poll: %w", l.Name, l.Addr, err)
	}
	if revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0 {
		return fmt.Errorf("listener %s (%s): %w: the socket was shut down for reading by a process that shares it (shutdown(2)); it refuses connections",
			l.Name, l.Addr, ErrNotListening)
	}
	if l.family == unix.AF_INET || l.family == unix.AF_INET6 {
		if flags, err := inetShutdownFlags(l.fd, l.family); err == nil && flags != 0 {
			return fmt.Errorf("listener %s (%s): %w: the socket listens with its shutdown flags set (%s): every connection it accepts is shut down",
				l.Name, l.Addr, ErrNotListening, describeShutdown(flags))
		}
	}
	return nil
}

func describeShutdown(flags uint8) string {
	switch flags & (rcvShutdown | sendShutdown) {
	case rcvShutdown:
		return "SHUT_RD"
	case sendShutdown:
		return "SHUT_WR"
	}
	return "SHUT_RDWR"
}

// pollNow polls fd once without waiting and returns its revents.
func pollNow(fd int, events int16) (int16, error) {
	fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
	for {
		_, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return fds[0].Revents, err
	}
}

// Rearm makes a listener that Check found shut down accept connections
// again, on the same socket, so that every worker holding it serves again
// without a restart. It returns nil at once when Check finds nothing wrong.
//
// For TCP it clears the socket's shutdown flags (connect(2) with
// AF_UNSPEC), binds the socket's address again when the shutdown released
// the port (a listener bound to port 0; the error then says so if another
// socket took the port meanwhile), calls listen(2) with the listener's
// backlog, and checks that the socket listens on its old address; when
// it finds the socket shut down again at once (the other workers of a
// generation stop at the same moment) it tries again, three times in all.
// An error that does not wrap ErrCannotRearm may pass: try again later (the
// Watcher calls back at the next shutdown anyway). Rearm cannot save the connections the shutdown reset, nor workers whose accept
// failed and that gave up. For a unix listener it returns an error wrapping
// ErrCannotRearm: Linux keeps a unix socket's shutdown for good.
//
// Rearm may be called from several goroutines at once (they take turns,
// and the later ones find nothing to do): a Watch callback can re-arm at
// once, without waiting for the master's loop, and post only the outcome.
// Check may meanwhile see the socket closed for the moment a re-arm takes.
func (l *Listener) Rearm() error {
	l.rearm.Lock()
	defer l.rearm.Unlock()
	problem := l.Check()
	if problem == nil {
		return nil
	}
	if !errors.Is(problem, ErrNotListening) {
		return problem
	}
	switch l.family {
	case unix.AF_INET, unix.AF_INET6:
	case unix.AF_UNIX:
		return fmt.Errorf("listener %s (%s): %w: a unix socket that was shut down refuses connections for good "+
			"(listen(2) does not undo shutdown(2)); restart baton to make a new socket", l.Name, l.Addr, ErrCannotRearm)
	default:
		return fmt.Errorf("listener %s (%s): %w: socket family %d", l.Name, l.Addr, ErrCannotRearm, l.family)
	}
	if l.bound == nil {
		return fmt.Errorf("listener %s (%s): %w: its address is unknown", l.Name, l.Addr, ErrCannotRearm)
	}
	// Another worker may shut the socket down again at once (every worker
	// of a generation stops at the same moment): try a few times.
	for try := 1; ; try++ {
		err := l.listenAgain()
		if err == nil || !errors.Is(err, ErrNotListening) || try == rearmTries {
			return err
		}
	}
}

// rearmTries bounds Rearm's attempts when the socket is shut down again
// right after it listened again.
const rearmTries = 3

func (l *Listener) listenAgain() error {
	// Clears the shutdown flags that a shutdown of the already shut-down
	// socket set; without this, listen(2) would make a listener whose
	// connections are all born shut down.
	if err := disconnect(l.fd); err != nil {
		return fmt.Errorf("listener %s (%s): re-arm: connect(AF_UNSPEC): %w", l.Name, l.Addr, err)
	}
	// EINVAL: the socket still holds its port (it was bound explicitly).
	if err := unix.Bind(l.fd, l.bound); err != nil && !errors.Is(err, unix.EINVAL) {
		if errors.Is(err, unix.EADDRINUSE) {
			return fmt.Errorf("listener %s (%s): re-arm: the shutdown released the port and another socket took it meanwhile", l.Name, l.Addr)
		}
		return fmt.Errorf("listener %s (%s): re-arm: bind: %w", l.Name, l.Addr, err)
	}
	if err := unix.Listen(l.fd, l.backlog); err != nil {
		return fmt.Errorf("listener %s (%s): re-arm: listen: %w", l.Name, l.Addr, err)
	}
	if err := l.Check(); err != nil {
		return fmt.Errorf("re-arm: shut down again at once: %w", err)
	}
	if sa, err := unix.Getsockname(l.fd); err != nil || formatSockaddr(sa) != formatSockaddr(l.bound) {
		// Cannot happen after the bind above; never serve on a wrong port.
		_ = unix.Shutdown(l.fd, unix.SHUT_RDWR)
		return fmt.Errorf("listener %s (%s): re-arm: the socket listens on %v, not on its address (%v)", l.Name, l.Addr, formatSockaddr(sa), err)
	}
	return nil
}

// describe fills in what Rearm needs of a socket opened elsewhere: its
// family, its bound address and, for TCP, its backlog, which TCP_INFO
// reports for a listening socket (tcpi_sacked is sk_max_ack_backlog).
func (l *Listener) describe() {
	l.family, _ = unix.GetsockoptInt(l.fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if sa, err := unix.Getsockname(l.fd); err == nil {
		l.bound = sa
	}
	l.backlog = unix.SOMAXCONN
	if l.family == unix.AF_INET || l.family == unix.AF_INET6 {
		if info, err := unix.GetsockoptTCPInfo(l.fd, unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && info.Sacked > 0 {
			l.backlog = int(info.Sacked)
		}
	}
}

// Watcher learns the moment a process sharing a listener shuts it down, so
// that the master can re-arm it before clients notice: a check after the
// next worker exit can come a whole drain later, since the worker that shut
// the socket down usually is one that was asked to stop.
type Watcher struct {
	epfd, wakefd int
	done         chan struct{}
	closeOnce    sync.Once
}

// Watch starts a goroutine that calls found(l) whenever listener l changes
// state, which for a listening socket means that a process sharing it shut
// it down. found runs on the watcher's goroutine and must not block: it
// may call Rearm, which takes microseconds, and post the outcome to the
// master's loop (on a busy 2-core machine that loop answered 50 to 400 ms
// late several times a run, and a re-arm should not wait for it). It may
// be called when nothing is wrong (Rearm's own connect(AF_UNSPEC) is a state
// change too), so it must not conclude anything itself.
//
// The watcher costs nothing per connection: it waits in epoll for
// EPOLLRDHUP only (EPOLLHUP and EPOLLERR come unasked), edge-triggered, on
// the master's own descriptors. The kernel wakes a socket's waiters for a
// new connection with the EPOLLIN key, which epoll filters out for this
// registration, and with no key (a state change) for a shutdown, which
// passes: the shutdown of a TCP listener then polls POLLHUP, that of a unix
// one POLLRDHUP. Each new shutdown wakes it again, also after a Rearm.
//
// Close the watcher before closing the listeners: an epoll registration
// lives as long as the socket's open file, which the workers share.
func Watch(ls []*Listener, found func(*Listener)) (*Watcher, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("watch listeners: epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("watch listeners: eventfd: %w", err)
	}
	w := &Watcher{epfd: epfd, wakefd: wakefd, done: make(chan struct{})}
	add := func(fd int, events uint32, tag int32) error {
		ev := unix.EpollEvent{Events: events, Fd: tag}
		return unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev)
	}
	// Tags: -1 for the wake-up, i for ls[i].
	err = add(wakefd, unix.EPOLLIN, -1)
	for i, l := range ls {
		if err == nil {
			if err = add(l.fd, unix.EPOLLRDHUP|unix.EPOLLET, int32(i)); err != nil {
				err = fmt.Errorf("listener %s (%s): %w", l.Name, l.Addr, err)
			}
		}
	}
	if err != nil {
		unix.Close(wakefd)
		unix.Close(epfd)
		return nil, fmt.Errorf("watch listeners: epoll_ctl: %w", err)
	}
	ls = slices.Clone(ls)
	go w.run(ls, found)
	return w, nil
}

func (w *Watcher) run(ls []*Listener, found func(*Listener)) {
	defer close(w.done)
	events := make([]unix.EpollEvent, len(ls)+1)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return // EBADF and the like: nothing sensible is left to do
		}
		for _, ev := range events[:n] {
			if ev.Fd < 0 {
				return
			}
			found(ls[ev.Fd])
		}
	}
}

// Close stops the watcher and waits until found is not running any more.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		var one [8]byte
		one[0] = 1 // eventfd counters are host-endian; any non-zero value wakes
		unix.Write(w.wakefd, one[:])
		<-w.done
		unix.Close(w.wakefd)
		unix.Close(w.epfd)
	})
	return nil
}
