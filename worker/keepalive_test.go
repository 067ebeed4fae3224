package worker

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func TestKeepAlivePingsWhileHealthy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	sock := listenNotify(t, path)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "100000") // every 50 ms
	t.Setenv("WATCHDOG_PID", "")

	var healthy atomic.Bool
	healthy.Store(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { KeepAlive(ctx, healthy.Load); close(done) }()
	defer func() { cancel(); <-done }()

	for i := 0; i < 3; i++ {
		if got := receive(t, sock); got != "WATCHDOG=1" {
			t.Fatalf("ping %d: %q", i, got)
		}
	}
	// Unhealthy: the pings stop, so the manager replaces the process.
	healthy.Store(false)
	time.Sleep(120 * time.Millisecond) // a ping already in flight may arrive
	drain(sock)
	sock.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := sock.Read(make([]byte, 64)); err == nil {
		t.Fatalf("pinged while unhealthy (%d bytes)", n)
	}
}

func TestKeepAliveWithoutWatchdogReturns(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "")
	done := make(chan struct{})
	go func() { KeepAlive(context.Background(), nil); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("KeepAlive without WATCHDOG_USEC did not return")
	}
}

// drain discards datagrams already queued on sock.
func drain(sock interface {
	SetReadDeadline(time.Time) error
	Read([]byte) (int, error)
}) {
	buf := make([]byte, 64)
	for {
		sock.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := sock.Read(buf); err != nil {
			return
		}
	}
}
