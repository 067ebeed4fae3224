package worker

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// handOver plays a reload on one listening socket: server A serves, then is
// shut down by stop while server B takes over the same socket (as baton's
// next generation does), with clients connecting all the while on fresh
// connections. It returns how many requests got no complete response.
func handOver(t *testing.T, stop func(ctx context.Context, srv *http.Server, l net.Listener) error) (failed, total int64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A second reference keeps the socket (and its queue of not yet
	// accepted connections) alive when A closes its listener.
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	addr := l.Addr().String()

	var clients sync.WaitGroup
	done := make(chan struct{})
	for range 8 {
		clients.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				atomic.AddInt64(&total, 1)
				if err := request(addr); err != nil {
					atomic.AddInt64(&failed, 1)
				}
			}
		})
	}

	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	srvA := &http.Server{Handler: ok}
	stopped := make(chan error, 1)
	go func() { stopped <- stop(context.Background(), srvA, l) }()
	time.Sleep(100 * time.Millisecond)

	lB, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	srvB := &http.Server{Handler: ok}
	go srvB.Serve(lB)
	defer srvB.Close()
	// A stops only now, while B already accepts.
	<-stopped
	time.Sleep(50 * time.Millisecond)
	close(done)
	clients.Wait()
	return failed, total
}

func request(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	return resp.Body.Close()
}

func TestServeHTTPDropsNoRequestWhenHandingOver(t *testing.T) {
	var failed, total int64
	for range 10 {
		f, n := handOver(t, func(ctx context.Context, srv *http.Server, l net.Listener) error {
			serveCtx, cancel := context.WithCancel(ctx)
			go func() { time.Sleep(100 * time.Millisecond); cancel() }()
			return ServeHTTP(serveCtx, srv, []net.Listener{l})
		})
		failed, total = failed+f, total+n
	}
	t.Logf("%d of %d requests failed", failed, total)
	if failed != 0 {
		t.Fatalf("%d of %d requests got no response during the hand-over", failed, total)
	}
}

// TestServeHTTPAnswersAKeptAliveConnectionAfterTheStop plays the race
// Shutdown alone loses: a client sends its next request on a kept-alive
// connection just after the worker was told to stop. With Shutdown alone
// the idle connection is closed at once and the request gets EOF;
// ServeHTTP answers it, with Connection: close.
func TestServeHTTPAnswersAKeptAliveConnectionAfterTheStop(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- ServeHTTP(ctx, srv, []net.Listener{l}) }()

	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	get := func() (*http.Response, error) {
		if _, err := fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			return nil, err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp, err
	}
	if resp, err := get(); err != nil || resp.Close {
		t.Fatalf("first request: %v (close %v), want a kept-alive answer", err, resp != nil && resp.Close)
	}
	stop()
	time.Sleep(100 * time.Millisecond) // the worker is stopping; the connection is idle
	resp, err := get()
	if err != nil {
		t.Fatalf("a request on the kept-alive connection 100 ms into the stop got no answer: %v", err)
	}
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("answer during the stop: status %d, Connection: close %v; want 200 and close", resp.StatusCode, resp.Close)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("ServeHTTP: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeHTTP did not return after its last connection closed")
	}
}
