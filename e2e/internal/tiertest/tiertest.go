// Package tiertest is the client side that baton's end-to-end test packages
// (e2e, and the tiers e2e/systemdtier and e2e/containertier) share: reaching
// an app inside a container's network namespace, making requests that never
// retry, sorting how each one ended, running them as load and counting a
// period of it, and polling for a condition. It holds no test of baton: each
// package asserts what its own tier must show.
package tiertest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// WaitUntil calls cond every poll until it holds or timeout has passed, and
// returns its last result.
func WaitUntil(timeout, poll time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(poll)
	}
}

// Netns is a network namespace held open: a container's, whose loopback the
// tiers reach from inside it, so that no port of the host is taken.
type Netns struct {
	f *os.File
}

// OpenNetns holds process pid's network namespace open: it stays usable
// after the process has exited.
func OpenNetns(pid int) (*Netns, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, err
	}
	return &Netns{f: f}, nil
}

// Close lets the namespace go.
func (n *Netns) Close() error {
	return n.f.Close()
}

// Dial connects to addr over TCP from inside the namespace: the calling
// thread enters it for socket(2) and comes back at once (a socket stays in
// the namespace it was made in).
func (n *Netns) Dial(addr string, timeout time.Duration) (net.Conn, error) {
	runtime.LockOSThread()
	home, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer home.Close()
	if err := unix.Setns(int(n.f.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("setns into the container's network: %w", err)
	}
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked, so it ends with this goroutine and no
		// other goroutine ever runs in the container's namespace.
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("setns back to the host's network: %w", err)
	}
	runtime.UnlockOSThread()
	return conn, err
}

// Get makes one GET of path on a fresh connection to addr in the namespace:
// no keep-alive and no retry, so an error is exactly what the client saw.
// timeout bounds the whole request, the connect included. It returns the
// status and the body without the white space around it.
func (n *Netns) Get(addr, path string, timeout time.Duration) (status int, body string, err error) {
	deadline := time.Now().Add(timeout)
	conn, err := n.Dial(addr, timeout)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n", path); err != nil {
		return 0, "", err
	}
	data, err := io.ReadAll(conn)
	if err != nil {
		return 0, "", err
	}
	head, rest, _ := strings.Cut(string(data), "\r\n\r\n")
	if _, err := fmt.Sscanf(head, "HTTP/1.1 %d", &status); err != nil {
		if len(data) == 0 {
			return 0, "", io.EOF
		}
		return 0, "", fmt.Errorf("not an HTTP response: %q", data)
	}
	return status, strings.TrimSpace(rest), nil
}

// FailureKind sorts a request's outcome: "" for a 200, else refused, reset,
// EOF, timeout, "status N", or "other: " and the error.
func FailureKind(status int, err error) string {
	var ne net.Error
	switch {
	case err == nil && status == 200:
		return ""
	case err == nil:
		return fmt.Sprintf("status %d", status)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "other: " + err.Error()
}

// Outcome is one request of a Load.
type Outcome struct {
	Start, End time.Time
	Failure    string // "" for a success, else its kind
	Detail     string // what the request said of it: a success's answer, a failure's error
}

// Request makes one request on a fresh connection, without retry, and says
// how it ended.
type Request func() (failure, detail string)

// Load is clients that each make one request after another until stopped,
// keeping every outcome with its times, so that a test can count exactly
// the requests that ended in a period (a reload, a lame-duck delay).
type Load struct {
	mu       sync.Mutex
	outcomes []Outcome
	stopped  chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup
}

// StartLoad runs clients goroutines that each call request one after
// another, pausing for pause (0: not at all) between two.
func StartLoad(clients int, pause time.Duration, request Request) *Load {
	l := &Load{stopped: make(chan struct{})}
	for range clients {
		l.wg.Go(func() { l.client(pause, request) })
	}
	return l
}

func (l *Load) client(pause time.Duration, request Request) {
	for {
		select {
		case <-l.stopped:
			return
		default:
		}
		start := time.Now()
		failure, detail := request()
		l.mu.Lock()
		l.outcomes = append(l.outcomes, Outcome{Start: start, End: time.Now(), Failure: failure, Detail: detail})
		l.mu.Unlock()
		if pause > 0 {
			select {
			case <-l.stopped:
			case <-time.After(pause):
			}
		}
	}
}

// Len is how many requests have ended so far.
func (l *Load) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.outcomes)
}

// Stop ends the load, waiting for the requests in flight, and returns every
// outcome in the order the requests ended. Calling it again (from a
// t.Cleanup, say) waits and returns the same.
func (l *Load) Stop() []Outcome {
	l.stopOnce.Do(func() { close(l.stopped) })
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.outcomes)
}

// Window counts the outcomes of a period.
type Window struct {
	OK      int
	Failed  map[string]int // failures by kind
	Answers map[string]int // successes by Detail
	Samples []string       // the Detail of the first few failures, for messages
}

// maxSamples is how many failure details a Window keeps.
const maxSamples = 5

// Count counts the outcomes that ended in [from, to).
func Count(outcomes []Outcome, from, to time.Time) Window {
	w := Window{Failed: map[string]int{}, Answers: map[string]int{}}
	for _, o := range outcomes {
		if o.End.Before(from) || !o.End.Before(to) {
			continue
		}
		if o.Failure == "" {
			w.OK++
			w.Answers[o.Detail]++
			continue
		}
		w.Failed[o.Failure]++
		if len(w.Samples) < maxSamples {
			w.Samples = append(w.Samples, o.Detail)
		}
	}
	return w
}

// SyncBuffer is a bytes.Buffer that a process's output copiers and a test
// may use at once.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
