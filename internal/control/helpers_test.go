package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fakeHandler records calls and answers with canned values; the func
// fields, when set, replace the canned behaviour.
type fakeHandler struct {
	status Status
	result ReloadResult // what Reload and Upgrade return by default
	err    error        // returned by every method, if set

	reload  func(ctx context.Context, progress func(Progress)) (ReloadResult, error)
	trigger func(ctx context.Context) error

	mu      sync.Mutex
	calls   []string
	workers int
	quick   bool
}

func (h *fakeHandler) record(call string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, call)
}

// Calls returns the methods called so far, in order.
func (h *fakeHandler) Calls() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.calls...)
}

func (h *fakeHandler) Status(ctx context.Context) (Status, error) {
	h.record("Status")
	return h.status, h.err
}

func (h *fakeHandler) Reload(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
	h.record("Reload")
	return h.runReload(ctx, progress)
}

func (h *fakeHandler) Upgrade(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
	h.record("Upgrade")
	return h.runReload(ctx, progress)
}

func (h *fakeHandler) runReload(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
	if h.reload != nil {
		return h.reload(ctx, progress)
	}
	progress(Progress{Generation: h.result.Generation, Workers: 2, Phase: "starting"})
	return h.result, h.err
}

func (h *fakeHandler) TriggerReload(ctx context.Context) error {
	h.record("TriggerReload")
	return h.runTrigger(ctx)
}

func (h *fakeHandler) TriggerUpgrade(ctx context.Context) error {
	h.record("TriggerUpgrade")
	return h.runTrigger(ctx)
}

func (h *fakeHandler) runTrigger(ctx context.Context) error {
	if h.trigger != nil {
		return h.trigger(ctx)
	}
	return h.err
}

func (h *fakeHandler) Scale(ctx context.Context, workers int) error {
	h.record("Scale")
	h.mu.Lock()
	h.workers = workers
	h.mu.Unlock()
	return h.err
}

func (h *fakeHandler) Stop(ctx context.Context, quick bool) error {
	h.record("Stop")
	h.mu.Lock()
	h.quick = quick
	h.mu.Unlock()
	return h.err
}

// logBuffer collects a logger's output for assertions; loggers write to it
// from the server's goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testServer is a server on a socket in the test's temp dir, serving until
// the test ends.
type testServer struct {
	*Server
	path   string
	logs   *logBuffer
	served chan struct{} // closed when Serve returns
}

// testOptions are short limits so that tests of timeouts are fast.
func testOptions() options {
	o := defaultOptions()
	o.readTimeout = 2 * time.Second
	o.writeTimeout = 2 * time.Second
	o.closeGrace = time.Second
	return o
}

func startServer(t testing.TB, h Handler, adjust ...func(*options)) *testServer {
	t.Helper()
	return startServerAt(t, filepath.Join(t.TempDir(), "ctl.sock"), h, adjust...)
}

func startServerAt(t testing.TB, path string, h Handler, adjust ...func(*options)) *testServer {
	t.Helper()
	opts := testOptions()
	for _, f := range adjust {
		f(&opts)
	}
	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv, err := listen(path, h, log, opts)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ts := &testServer{Server: srv, path: path, logs: logs, served: make(chan struct{})}
	go func() {
		defer close(ts.served)
		srv.Serve()
	}()
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		select {
		case <-ts.served:
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return after Close")
		}
	})
	return ts
}

// call makes one request with the package's client.
func call(t testing.TB, path string, req Request, onProgress func(Progress)) (Response, error) {
	t.Helper()
	c, err := Dial(path)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return c.Call(ctx, req, onProgress)
}

// rawExchange sends data as it is, shuts down the sending side, and returns
// every line the server writes until it closes the connection.
func rawExchange(t testing.TB, path string, data []byte) []string {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		// The server may stop reading early (a line too long) and
		// close: then this write fails, which is fine.
		conn.Write(data)
		conn.(*net.UnixConn).CloseWrite()
	}()
	return readAllLines(t, conn)
}

// readAllLines reads lines until the server closes the connection.
func readAllLines(t testing.TB, conn net.Conn) []string {
	t.Helper()
	var lines []string
	sc := bufio.NewScanner(conn)
	sc.Buffer(nil, maxResponseLine)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) && !isConnGone(err) {
		t.Fatalf("reading the server's lines: %v (so far: %q)", err, lines)
	}
	return lines
}

// decodeLine decodes one response line, failing the test if it is not one.
func decodeLine(t testing.TB, line string) Response {
	t.Helper()
	var resp Response
	dec := json.NewDecoder(bytes.NewReader([]byte(line)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&resp); err != nil {
		t.Fatalf("response line %q: %v", line, err)
	}
	if resp.V != Version {
		t.Fatalf("response line %q has v=%d, want %d", line, resp.V, Version)
	}
	return resp
}

// waitFor polls cond until it holds or a few seconds have passed.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
