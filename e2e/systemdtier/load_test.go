//go:build systemdtier

package systemdtier

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// appAddr is where contrib/systemd/app.socket listens, inside the
// container's own network namespace.
const appAddr = "127.0.0.1:8000"

var hostNetns = func() *os.File {
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		panic(err)
	}
	return f
}()

// dial connects to addr from inside the container's network namespace: the
// calling thread enters it for the socket(2) call and returns at once (a
// socket stays in the namespace it was made in).
func (c *container) dial(addr string, timeout time.Duration) (net.Conn, error) {
	runtime.LockOSThread()
	if err := unix.Setns(int(c.netns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("setns into the container's network: %w", err)
	}
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err := unix.Setns(int(hostNetns.Fd()), unix.CLONE_NEWNET); err != nil {
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

// response is one answer of the tier's app: "gen=N pid=P".
type response struct {
	status  int
	gen     string
	pid     string
	latency time.Duration
}

// get makes one request on a fresh connection (no retry, no keep-alive).
func (c *container) get(path string, timeout time.Duration) (response, error) {
	start := time.Now()
	conn, err := c.dial(appAddr, timeout)
	if err != nil {
		return response{}, err
	}
	defer conn.Close()
	conn.SetDeadline(start.Add(timeout))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n", path); err != nil {
		return response{}, err
	}
	data, err := io.ReadAll(conn)
	if err != nil {
		return response{}, err
	}
	r := response{latency: time.Since(start)}
	head, body, _ := strings.Cut(string(data), "\r\n\r\n")
	if _, err := fmt.Sscanf(head, "HTTP/1.1 %d", &r.status); err != nil {
		if len(data) == 0 {
			return r, io.EOF
		}
		return r, fmt.Errorf("not an HTTP response: %q", data)
	}
	for _, f := range strings.Fields(body) {
		if k, v, ok := strings.Cut(f, "="); ok {
			switch k {
			case "gen":
				r.gen = v
			case "pid":
				r.pid = v
			}
		}
	}
	return r, nil
}

// failureKind sorts a failed request: refused, reset, EOF, timeout, a
// status other than 200, or other.
func failureKind(r response, err error) string {
	var ne net.Error
	switch {
	case err == nil && r.status == 200:
		return ""
	case err == nil:
		return fmt.Sprintf("status %d", r.status)
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	default:
		return "other: " + err.Error()
	}
}

// load is a request loop: clients that each make one request after another,
// every one on a fresh connection, counting every answer and failure.
type load struct {
	c      *container
	stopCh chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	ok     int
	failed map[string]int
	gens   map[string]int
	maxLat time.Duration
}

func (c *container) startLoad(clients int, timeout time.Duration) *load {
	l := &load{c: c, stopCh: make(chan struct{}), failed: map[string]int{}, gens: map[string]int{}}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stopCh:
					return
				default:
				}
				r, err := c.get("/", timeout)
				l.mu.Lock()
				if kind := failureKind(r, err); kind != "" {
					l.failed[kind]++
				} else {
					l.ok++
					l.gens[r.gen]++
					l.maxLat = max(l.maxLat, r.latency)
				}
				l.mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	return l
}

// loadResult is what a request loop saw.
type loadResult struct {
	ok         int
	failed     map[string]int
	gens       map[string]int
	maxLatency time.Duration
}

func (r loadResult) failures() int {
	n := 0
	for _, v := range r.failed {
		n += v
	}
	return n
}

func (r loadResult) String() string {
	var gens []string
	for g, n := range r.gens {
		gens = append(gens, fmt.Sprintf("gen %s: %d", g, n))
	}
	sort.Strings(gens)
	var failed []string
	for k, n := range r.failed {
		failed = append(failed, fmt.Sprintf("%s: %d", k, n))
	}
	slices.Sort(failed)
	return fmt.Sprintf("%d ok, %d failed %v, answers by generation [%s], slowest %v",
		r.ok, r.failures(), failed, strings.Join(gens, ", "), r.maxLatency.Round(time.Millisecond))
}

func (l *load) snapshot() loadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := loadResult{ok: l.ok, failed: map[string]int{}, gens: map[string]int{}, maxLatency: l.maxLat}
	for k, v := range l.failed {
		r.failed[k] = v
	}
	for k, v := range l.gens {
		r.gens[k] = v
	}
	return r
}

// stop ends the loop, waiting for the requests in flight.
func (l *load) stop() loadResult {
	close(l.stopCh)
	l.wg.Wait()
	return l.snapshot()
}
