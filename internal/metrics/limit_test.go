package metrics

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"
)

// testServe serves h with opts on a random local port for the test.
func testServe(t *testing.T, h http.Handler, opts options) *Server {
	t.Helper()
	srv, err := serve("127.0.0.1:0", h, nil, opts)
	if err != nil {
		t.Fatalf("serve: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// longOptions are the defaults with a cap of n: no timeout fires during a
// test.
func longOptions(n int) options {
	o := defaultOptions()
	o.maxConns = n
	return o
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer reports whether the server closed c within wait: a read
// that ends in EOF or a reset, not a timeout. c must not have been sent a
// request (a reply would count as data, which is reported as an error).
func closedByServer(t *testing.T, c net.Conn, wait time.Duration) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(wait))
	var b [1]byte
	n, err := c.Read(b[:])
	var ne net.Error
	switch {
	case n > 0:
		t.Fatalf("the server sent %q on a connection that asked nothing", b[:n])
	case errors.As(err, &ne) && ne.Timeout():
		return false
	}
	return true
}

// request sends GET path on c and reads the reply's status.
func request(c net.Conn, path string) (int, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func waitOpen(t *testing.T, srv *Server, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for srv.ln.open() != want {
		if time.Now().After(deadline) {
			t.Fatalf("the server holds %d connections, want %d", srv.ln.open(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A flood of connections that send nothing holds at most the cap: each new
// one beyond it closes the oldest idle one, and a real request is still
// answered in the middle of the flood.
func TestCapEvictsTheLongestIdle(t *testing.T) {
	t.Parallel()
	const max, extra = 4, 6
	srv := testServe(t, okHandler(), longOptions(max))
	var conns []net.Conn
	for i := range max {
		conns = append(conns, dial(t, srv.Addr()))
		waitOpen(t, srv, i+1)
	}
	for range extra {
		conns = append(conns, dial(t, srv.Addr()))
		waitOpen(t, srv, max) // the accept loop has taken it
	}
	for i, c := range conns {
		want := i < extra
		wait := 200 * time.Millisecond // to see that it stays open
		if want {
			wait = 5 * time.Second
		}
		if closed := closedByServer(t, c, wait); closed != want {
			t.Errorf("connection %d (of %d, cap %d): closed %v, want %v (the oldest go first)", i, len(conns), max, closed, want)
		}
	}
	// A probe during the flood gets a slot and its answer.
	if code, err := request(dial(t, srv.Addr()), "/"); err != nil || code != http.StatusOK {
		t.Errorf("a request at the cap: %d, %v; want 200", code, err)
	}
	if n := srv.ln.open(); n > max {
		t.Errorf("%d connections open, over the cap %d", n, max)
	}
}

// When every connection is in a request, a new connection is closed at once
// (not queued), and served again once a request ends.
func TestCapRefusesWhileAllBusy(t *testing.T) {
	t.Parallel()
	const max = 3
	entered := make(chan struct{}, max)
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/busy", func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	mux.Handle("/", okHandler())
	srv := testServe(t, mux, longOptions(max))

	busy := make([]chan error, max)
	for i := range max {
		c := dial(t, srv.Addr())
		busy[i] = make(chan error, 1)
		go func() {
			code, err := request(c, "/busy")
			if err == nil && code != http.StatusOK {
				err = fmt.Errorf("status %d", code)
			}
			busy[i] <- err
		}()
		<-entered
	}
	for i := range 3 {
		start := time.Now()
		c, err := net.DialTimeout("tcp", srv.Addr(), 5*time.Second)
		if err != nil {
			// The reset came before connect(2) returned.
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("connection %d: %v", i, err)
			}
			continue
		}
		defer c.Close()
		if !closedByServer(t, c, 2*time.Second) {
			t.Fatalf("connection %d beyond the cap of busy connections was not closed", i)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("refusing took %v; want at once", d)
		}
	}
	close(release)
	for i, ch := range busy {
		if err := <-ch; err != nil {
			t.Errorf("busy request %d: %v", i, err)
		}
	}
	// Their connections are idle now (keep-alive): a new one gets a slot.
	if code, err := request(dial(t, srv.Addr()), "/"); err != nil || code != http.StatusOK {
		t.Errorf("a request once the busy ones ended: %d, %v; want 200", code, err)
	}
}

// A connection that never sends a byte is closed after readHeaderTimeout
// (http.Server arms it at accept), and a keep-alive connection after
// idleTimeout once its request is answered: neither holds a slot for long.
func TestIdleConnectionsAreClosed(t *testing.T) {
	t.Parallel()
	o := longOptions(MaxConns)
	o.readHeaderTimeout = 300 * time.Millisecond
	o.idleTimeout = 600 * time.Millisecond
	srv := testServe(t, okHandler(), o)

	silent := dial(t, srv.Addr())
	start := time.Now()
	if !closedByServer(t, silent, 5*time.Second) {
		t.Fatal("a silent connection was still open after 5s")
	}
	if d := time.Since(start); d < o.readHeaderTimeout/2 {
		t.Errorf("a silent connection was closed after %v, before readHeaderTimeout %v", d, o.readHeaderTimeout)
	}

	kept := dial(t, srv.Addr())
	if code, err := request(kept, "/"); err != nil || code != http.StatusOK {
		t.Fatalf("request: %d, %v", code, err)
	}
	start = time.Now()
	if !closedByServer(t, kept, 5*time.Second) {
		t.Fatal("an idle keep-alive connection was still open after 5s")
	}
	if d := time.Since(start); d < o.idleTimeout/2 {
		t.Errorf("an idle keep-alive connection was closed after %v, before idleTimeout %v", d, o.idleTimeout)
	}
	waitOpen(t, srv, 0)
}

// The defaults close a silent connection within a few seconds and cap the
// connections at MaxConns.
func TestDefaultLimits(t *testing.T) {
	o := defaultOptions()
	if o.readHeaderTimeout <= 0 || o.readHeaderTimeout > 5*time.Second {
		t.Errorf("readHeaderTimeout %v: a silent connection must go within a few seconds", o.readHeaderTimeout)
	}
	if o.maxConns != MaxConns || MaxConns <= 0 {
		t.Errorf("maxConns %d, MaxConns %d", o.maxConns, MaxConns)
	}
}

// The server's own descriptors stay within the cap whatever the flood: a
// refused or evicted connection's descriptor is closed at once, not held
// until a timeout.
// Not parallel: it counts the process's descriptors.
func TestFloodHoldsNoMoreDescriptorsThanTheCap(t *testing.T) {
	const max, flood = 8, 200
	srv := testServe(t, okHandler(), longOptions(max))
	before := openFDs(t)
	var conns []net.Conn
	for range flood {
		conns = append(conns, dial(t, srv.Addr()))
	}
	// Every connection is accepted and all but max closed again. A dial
	// returns before the server accepts, so the last of the flood may be
	// accepted (and closed at once) after the count first fell within the
	// cap: the count must come within it and stay there, well before the
	// server's own timeouts (readHeaderTimeout) would close what it held.
	serverSide := func() int { return openFDs(t) - before - flood } // the flood's client ends are ours too
	deadline := time.Now().Add(defaultOptions().readHeaderTimeout / 2)
	got := serverSide()
	for got > max || !stays(serverSide, max) {
		if time.Now().After(deadline) {
			t.Fatalf("the server holds %d descriptors for a flood of %d, over the cap %d", got, flood, max)
		}
		time.Sleep(5 * time.Millisecond)
		got = serverSide()
	}
	t.Logf("%d client connections: %d server-side descriptors", flood, got)
	for _, c := range conns {
		c.Close()
	}
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal("the test counts its fds in /proc/self/fd:", err)
	}
	return len(entries)
}

// stays reports whether count stays at most max over 100 ms.
func stays(count func() int, max int) bool {
	for range 10 {
		time.Sleep(10 * time.Millisecond)
		if count() > max {
			return false
		}
	}
	return true
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
