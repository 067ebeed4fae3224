package metrics

import (
	"context"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// fakeSource is a Source whose answers the test changes between requests.
type fakeSource struct {
	mu        sync.Mutex
	snap      Snapshot
	status    []byte
	err       error
	block     bool // Snapshot, Health and StatusJSON wait for ctx, like a stuck master
	snapCalls int
	// healthCalls counts Health, which reads no memory.
	healthCalls int
}

func (f *fakeSource) set(fn func(f *fakeSource)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeSource) Snapshot(ctx context.Context) (Snapshot, error) {
	f.mu.Lock()
	f.snapCalls++
	f.mu.Unlock()
	return f.answer(ctx)
}

func (f *fakeSource) Health(ctx context.Context) (Snapshot, error) {
	f.mu.Lock()
	f.healthCalls++
	f.mu.Unlock()
	return f.answer(ctx)
}

func (f *fakeSource) answer(ctx context.Context) (Snapshot, error) {
	f.mu.Lock()
	s, err, block := f.snap, f.err, f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return Snapshot{}, ctx.Err()
	}
	return s, err
}

func (f *fakeSource) StatusJSON(ctx context.Context) ([]byte, error) {
	f.mu.Lock()
	b, err, block := f.status, f.err, f.block
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return b, err
}

// typicalSnapshot is mid-reload: two ready workers of generation 3 and one
// generation-2 worker still draining.
func typicalSnapshot() Snapshot {
	return Snapshot{
		Generation: 3,
		Workers: []Worker{
			{Generation: 3, State: StateReady, RSS: 100 << 20},
			{Generation: 3, State: StateReady, RSS: 120 << 20},
			{Generation: 2, State: StateDraining, RSS: 90 << 20},
		},
	}
}

// start serves m's handler for src on a random local port for the test.
func start(t *testing.T, m *Metrics, src Source) string {
	t.Helper()
	srv, err := Serve("127.0.0.1:0", m.Handler(src), nil)
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	return "http://" + srv.Addr()
}

var client = &http.Client{Timeout: 10 * time.Second}

// do sends a request and returns the status code, headers and body.
func do(t *testing.T, method, url string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, url, err)
	}
	return resp.StatusCode, resp.Header, string(body)
}
