package control

// Benchmarks of the control socket's status request, as `baton status`
// makes it: Dial, Call with a timeout, Close, against a server opened with
// Listen (the production options) whose handler answers at once. The
// master's own handler, through its event loop and /proc, is measured by
// internal/master's BenchmarkStatus. They run only with -bench:
//
//	go test -run='^$' -bench=. -count=10 ./internal/control/

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// statusHandler answers Status with a canned value and every other
// command with an error.
type statusHandler struct {
	*fakeHandler
	status Status
}

// Status does not record the call, unlike fakeHandler's: the record would
// grow with b.N and show up in the allocations.
func (h statusHandler) Status(context.Context) (Status, error) { return h.status, nil }

// benchStatus is what a master with n ready workers reports: two
// listeners, a finished reload, and per worker its pid, uptime, RSS and a
// STATUS= line, so the JSON is as long as a real one.
func benchStatus(n int) Status {
	now := time.Now()
	started := now.Add(-26 * time.Hour)
	reloaded := now.Add(-2 * time.Hour)
	st := Status{
		Pid: 4242, Version: "1.4.0", Started: started, Uptime: now.Sub(started).Seconds(),
		ConfigFile: "/etc/baton/app.toml",
		Listeners: []Listener{
			{Name: "http", Addr: "0.0.0.0:8000"},
			{Name: "admin", Addr: "unix:/run/app/admin.sock"},
		},
		Generation: 7, Workers: n,
		LastReload: &ReloadResult{Generation: 7, OK: true, Started: reloaded, Duration: 2.31},
	}
	for i := 1; i <= n; i++ {
		st.WorkerList = append(st.WorkerList, Worker{
			Slot: i, Pid: 100000 + i, Generation: 7, State: "ready",
			Started: reloaded.Add(time.Duration(i) * time.Millisecond), Uptime: now.Sub(reloaded).Seconds(),
			RSS: 48<<20 + uint64(i)*4096, Restarts: i % 3,
			Status: "serving, " + strconv.Itoa(i*7%50) + " requests in flight",
		})
	}
	return st
}

// BenchmarkStatus measures one `baton status` round trip over a real unix
// socket: connect, peer-credential check, request line, handler, JSON
// encoding of the status, and the client's decoding of it.
func BenchmarkStatus(b *testing.B) {
	for _, n := range []int{4, 64} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			path := filepath.Join(b.TempDir(), "ctl.sock")
			h := statusHandler{fakeHandler: &fakeHandler{err: errors.New("not in this benchmark")}, status: benchStatus(n)}
			srv, err := Listen(path, h, nil)
			if err != nil {
				b.Fatal(err)
			}
			served := make(chan struct{})
			go func() {
				defer close(served)
				srv.Serve()
			}()
			// Close removes the socket file; wait for Serve so no
			// goroutine outlives the benchmark.
			b.Cleanup(func() {
				if err := srv.Close(); err != nil {
					b.Errorf("Close: %v", err)
				}
				<-served
			})

			var last Response
			for b.Loop() {
				last = statusRoundTrip(b, path)
			}
			if last.Status == nil || len(last.Status.WorkerList) != n {
				b.Fatalf("last response = %+v, want a status with %d workers", last, n)
			}
		})
	}
}

// statusRoundTrip is the client side of `baton status` (fetchStatus in
// cmd/baton), without printing.
func statusRoundTrip(b *testing.B, path string) Response {
	c, err := Dial(path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Call(ctx, Request{Cmd: CmdStatus}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return resp
}
