package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// reply is one HTTP response.
type reply struct {
	status int
	body   []byte
}

// dialTarget turns a listener address from baton's log into what net.Dial
// takes: "127.0.0.1:8000" or "unix:/path".
func dialTarget(addr string) (network, address string) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix", path
	}
	return "tcp", addr
}

// get makes one GET request on a fresh connection, with no retry: an error
// is exactly what the client saw.
func get(addr, path string, timeout time.Duration) (reply, error) {
	network, address := dialTarget(addr)
	conn, err := net.DialTimeout(network, address, timeout)
	if err != nil {
		return reply{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: baton-e2e\r\nConnection: close\r\n\r\n", path); err != nil {
		return reply{}, err
	}
	return readReply(conn)
}

// readReply reads one whole HTTP response from conn.
func readReply(conn net.Conn) (reply, error) {
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return reply{status: resp.StatusCode}, err
	}
	return reply{status: resp.StatusCode, body: body}, nil
}

// flexString takes a JSON string or number as text: the test worker's
// fields are compared as the environment has them.
type flexString string

func (f *flexString) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*f = flexString(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(data, &n); err != nil {
		return err
	}
	*f = flexString(n.String())
	return nil
}

// workerInfo is the test worker's answer to GET /.
type workerInfo struct {
	Pid              int        `json:"pid"`
	PPid             int        `json:"ppid"`
	WorkerID         flexString `json:"worker_id"`
	Generation       flexString `json:"generation"`
	Listener         string     `json:"listener"`
	ListenFDs        flexString `json:"listen_fds"`
	ListenFDNames    string     `json:"listen_fdnames"`
	ListenPidMatched bool       `json:"listen_pid_matched"`
	ChildPID         int        `json:"child_pid"` // with -spawn-child
}

// fetchInfo asks the test worker behind addr who it is.
func fetchInfo(addr string) (workerInfo, error) {
	r, err := get(addr, "/", 10*time.Second)
	if err != nil {
		return workerInfo{}, err
	}
	if r.status != http.StatusOK {
		return workerInfo{}, fmt.Errorf("GET /: status %d: %s", r.status, r.body)
	}
	var info workerInfo
	if err := json.Unmarshal(r.body, &info); err != nil {
		return workerInfo{}, fmt.Errorf("GET /: %v in %q", err, r.body)
	}
	return info, nil
}

// collectWorkers asks GET / on fresh connections (4 at a time) until want
// distinct pids have answered, or timeout, or 2000 requests; it returns one
// answer per pid. Any failed request fails the test.
func collectWorkers(t testing.TB, addr string, want int, timeout time.Duration) map[int]workerInfo {
	t.Helper()
	var (
		mu       sync.Mutex
		seen     = map[int]workerInfo{}
		requests int
		firstErr error
	)
	deadline := time.Now().Add(timeout)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				mu.Lock()
				stop := len(seen) >= want || firstErr != nil || requests >= 2000 || time.Now().After(deadline)
				requests++
				mu.Unlock()
				if stop {
					return
				}
				info, err := fetchInfo(addr)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				if err == nil {
					seen[info.Pid] = info
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatalf("request to %s failed: %v", addr, firstErr)
	}
	if len(seen) < want {
		t.Fatalf("only %d distinct workers (%v) answered on %s in %d requests, want %d", len(seen), sortedKeys(seen), addr, requests, want)
	}
	return seen
}

func sortedKeys[V any](m map[int]V) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}

// ---------------------------------------------------------------------------
// Load

// Kinds of request outcome, counted separately.
const (
	outcomeOK      = "ok"
	outcomeRefused = "refused" // ECONNREFUSED
	outcomeReset   = "reset"   // ECONNRESET, EPIPE
	outcomeEOF     = "eof"     // connection closed before a whole response
	outcomeTimeout = "timeout"
	outcomeNon2xx  = "non-2xx"
	outcomeOther   = "other"
)

// classify names the kind of a request's failure.
func classify(r reply, err error) string {
	var netErr net.Error
	switch {
	case err == nil && r.status >= 200 && r.status < 300:
		return outcomeOK
	case err == nil:
		return outcomeNon2xx
	case errors.Is(err, syscall.ECONNREFUSED):
		return outcomeRefused
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return outcomeReset
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return outcomeEOF
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return outcomeTimeout
	}
	return outcomeOther
}

// loadResult counts a load run's outcomes by kind, and which worker pids
// answered.
type loadResult struct {
	OK, Refused, Reset, EOF, Timeout, Non2xx, Other int
	Pids                                            map[int]int // pid -> successful requests
	Samples                                         []string    // the first few errors, for messages
}

func (r loadResult) Total() int {
	return r.OK + r.Failures()
}

func (r loadResult) Failures() int {
	return r.Refused + r.Reset + r.EOF + r.Timeout + r.Non2xx + r.Other
}

func (r loadResult) String() string {
	return fmt.Sprintf("%d requests: ok=%d refused=%d reset=%d eof=%d timeout=%d non-2xx=%d other=%d, pids %v, errors %q",
		r.Total(), r.OK, r.Refused, r.Reset, r.EOF, r.Timeout, r.Non2xx, r.Other, sortedKeys(r.Pids), r.Samples)
}

func (r *loadResult) count(kind string, pid int, sample string) {
	switch kind {
	case outcomeOK:
		r.OK++
		r.Pids[pid]++
		return
	case outcomeRefused:
		r.Refused++
	case outcomeReset:
		r.Reset++
	case outcomeEOF:
		r.EOF++
	case outcomeTimeout:
		r.Timeout++
	case outcomeNon2xx:
		r.Non2xx++
	default:
		r.Other++
	}
	if len(r.Samples) < 10 {
		r.Samples = append(r.Samples, sample)
	}
}

func (r loadResult) clone() loadResult {
	c := r
	c.Pids = make(map[int]int, len(r.Pids))
	for k, v := range r.Pids {
		c.Pids[k] = v
	}
	c.Samples = append([]string(nil), r.Samples...)
	return c
}

// loadOptions bound a load run.
type loadOptions struct {
	addr        string
	path        string        // default "/"
	concurrency int           // goroutines, each one request at a time
	maxDuration time.Duration // stop after this long at the latest
	maxRequests int           // stop after this many requests at the latest (0: no limit)
	timeout     time.Duration // per request; default 10s
	// pause between one goroutine's requests (0: none), so that several
	// tests' loads at once leave the machine's cores to the servers.
	pause time.Duration
}

// load is a running load: concurrency goroutines, each making requests on
// fresh connections without retries until stopped or a bound is reached.
type load struct {
	mu      sync.Mutex
	res     loadResult
	started int
	stopped chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

func startLoad(opts loadOptions) *load {
	if opts.path == "" {
		opts.path = "/"
	}
	if opts.timeout == 0 {
		opts.timeout = 10 * time.Second
	}
	l := &load{res: loadResult{Pids: map[int]int{}}, stopped: make(chan struct{})}
	deadline := time.Now().Add(opts.maxDuration)
	for range opts.concurrency {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stopped:
					return
				default:
				}
				l.mu.Lock()
				over := opts.maxRequests > 0 && l.started >= opts.maxRequests
				l.started++
				l.mu.Unlock()
				if over || time.Now().After(deadline) {
					return
				}
				r, err := get(opts.addr, opts.path, opts.timeout)
				kind := classify(r, err)
				sample := ""
				if err != nil {
					sample = err.Error()
				} else if kind != outcomeOK {
					sample = fmt.Sprintf("status %d", r.status)
				}
				l.mu.Lock()
				l.res.count(kind, pidFromBody(r.body), sample)
				l.mu.Unlock()
				if opts.pause > 0 {
					select {
					case <-l.stopped:
					case <-time.After(opts.pause):
					}
				}
			}
		})
	}
	return l
}

// snapshot returns the counts so far.
func (l *load) snapshot() loadResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.res.clone()
}

// wait waits until the load has reached one of its bounds and returns the
// final counts.
func (l *load) wait() loadResult {
	l.wg.Wait()
	return l.snapshot()
}

// stop ends the load, waits for the requests in flight and returns the
// final counts.
func (l *load) stop() loadResult {
	l.once.Do(func() { close(l.stopped) })
	l.wg.Wait()
	return l.snapshot()
}

// pidFromBody finds the answering pid: the test worker's JSON {"pid": N},
// or a body that is just the pid (the node interop worker).
func pidFromBody(body []byte) int {
	var v struct {
		Pid int `json:"pid"`
	}
	if json.Unmarshal(body, &v) == nil && v.Pid > 0 {
		return v.Pid
	}
	if n, err := strconv.Atoi(strings.TrimSpace(string(body))); err == nil {
		return n
	}
	return 0
}
