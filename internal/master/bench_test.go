package master

// Benchmarks of the master's hot paths through its own code and event
// loop: a worker's notify message reaching onNotify, and a control-socket
// status request answered by the master's handler. The workers are real
// processes started by m.spawn. They run only with -bench:
//
//	go test -run='^$' -bench=. -count=10 ./internal/master/
//
// Spawning itself is measured in internal/proc (BenchmarkStartReap): going
// through m.spawn there would also need the crash and restart policy
// disarmed for workers that exit at once.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/control"
	"github.com/baton-pm/baton/internal/listener"
	"github.com/baton-pm/baton/internal/proc"
	"github.com/baton-pm/baton/internal/readiness"
)

// TestMain lets this test binary be the shim: workerSpec re-executes
// /proc/self/exe with proc.ShimArg, which here is the test binary, so it
// must do what cmd/baton's main does with that argument.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == proc.ShimArg {
		os.Exit(proc.Shim(os.Args[2:]))
	}
	os.Exit(m.Run())
}

// startBenchMaster starts a master with n real workers (`sleep 3600`,
// started by generation.fill through m.spawn: notify socket, proc.Start,
// watchReadiness) and runs its event loop, and returns once every worker
// has sent READY=1 on its notify socket and is ready. afterEvent, if not
// nil, runs on the loop after each event; it must not block once m.quit is
// closed. Everything is stopped, killed,
// reaped and closed when the benchmark ends.
//
// Run itself is not used: it also takes signals, a pidfile and the real
// control socket path, and only returns on a shutdown signal. The loop
// below is its event loop without the signal case.
func startBenchMaster(b *testing.B, n int, afterEvent func(m *Master)) *Master {
	b.Helper()
	// notifyProgress tells systemd when every worker is ready; a
	// benchmark run from a systemd unit must not.
	b.Setenv("NOTIFY_SOCKET", "")
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		b.Fatal(err)
	}
	specs := []listener.Spec{{Name: "http", Network: "tcp", Address: "127.0.0.1:0", Backlog: 128}}
	opts := Options{
		Master: MasterOptions{Listeners: specs, Version: "bench"},
		Generation: GenerationOptions{
			Workers: n, Command: []string{"sleep", "3600"}, CommandPath: sleep,
			ListenEnv: true, StopSignal: syscall.SIGTERM, GracefulTimeout: time.Second,
			// Long enough never to fire during a benchmark, but set, so a
			// WATCHDOG=1 is handled as in production.
			WorkerTimeout: time.Hour, BootTimeout: time.Hour,
			Ready:    ReadyMode{Kind: ReadyNotify},
			Strategy: Surge,
		},
	}
	m := New(opts, nil, slog.New(slog.DiscardHandler), nil)
	ls, err := listener.Open(specs)
	if err != nil {
		b.Fatal(err)
	}
	m.listeners = ls // m.cleanup closes them
	m.world.inspect = procInspector{readiness.NewProbe(nil)}
	m.started = time.Now()

	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		// As in Run: workers are forked from this thread, and their
		// Pdeathsig fires when it exits.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for {
			select {
			case f := <-m.events:
				f()
				if afterEvent != nil {
					afterEvent(m)
				}
			case <-m.quit:
				return
			}
		}
	}()
	b.Cleanup(func() { stopBenchMaster(b, m, loopDone) })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var addrs []string
	err = m.call(ctx, func() {
		m.current = m.newGeneration(m.initial)
		m.current.fill(m)
		for _, w := range m.workers {
			addrs = append(addrs, w.notify.Addr())
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	if len(addrs) != n {
		b.Fatalf("%d workers started, want %d", len(addrs), n)
	}
	// Mark them ready the way a worker does it, so the status lists
	// ready workers with a STATUS= line.
	for _, addr := range addrs {
		sendNotify(b, addr, "READY=1\nSTATUS=serving")
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		var allReady bool
		if err := m.call(ctx, func() { allReady = m.current.allReady() }); err != nil {
			b.Fatal(err)
		}
		if allReady {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("workers not ready within 10s")
		}
	}
	// The loop does not reap (Run does that on SIGCHLD): a worker that
	// exited, say a shim that could not exec sleep, shows up here.
	for _, e := range proc.Reap() {
		b.Fatalf("worker %d exited during setup: %s", e.Pid, proc.Describe(e.Status))
	}
	return m
}

// stopBenchMaster ends the event loop, kills every worker's process group
// and closes the notify sockets and listeners (m.cleanup, as Run does on
// its way out), then reaps the workers.
func stopBenchMaster(b *testing.B, m *Master, loopDone <-chan struct{}) {
	close(m.quit) // also drops what timers and notify goroutines still post
	<-loopDone
	pending := map[int]*worker{}
	for pid, w := range m.workers {
		pending[pid] = w
	}
	m.cleanup()
	for deadline := time.Now().Add(10 * time.Second); len(pending) > 0; time.Sleep(time.Millisecond) {
		for _, e := range proc.Reap() {
			if w, ok := pending[e.Pid]; ok {
				delete(pending, e.Pid)
				<-w.proc.StderrClosed() // killed, so its stderr is closed
			}
		}
		if time.Now().After(deadline) {
			b.Errorf("%d workers not reaped within 10s of SIGKILL", len(pending))
			return
		}
	}
}

// sendNotify sends one datagram to a notify socket, as sd_notify(3) does.
func sendNotify(b *testing.B, addr, data string) {
	b.Helper()
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(data)); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkNotify measures a ready worker's notification through the
// master: the datagram on the worker's notify socket, sdnotify's Receive,
// m.post, the event loop, and onNotify, until the loop has run it. In
// steady state "READY=1\nSTATUS=x" updates the worker's status (it is
// ready already) and "WATCHDOG=1" is a worker-watchdog ping.
func BenchmarkNotify(b *testing.B) {
	for _, msg := range []struct{ name, data, status string }{
		{"ready-status", "READY=1\nSTATUS=x", "x"},
		{"watchdog", "WATCHDOG=1", "serving"},
	} {
		b.Run("msg="+msg.name, func(b *testing.B) {
			b.ReportAllocs()
			// While counting, every event the loop runs is one
			// handled message: nothing else posts during the timed
			// loop (the only timers are an hour away), and a rejected
			// message is caught by the check after it.
			var counting atomic.Bool
			handled := make(chan struct{})
			m := startBenchMaster(b, 1, func(m *Master) {
				if counting.Load() {
					select {
					case handled <- struct{}{}:
					case <-m.quit:
					}
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var w *worker
			if err := m.call(ctx, func() {
				for _, w = range m.workers {
				}
			}); err != nil {
				b.Fatal(err)
			}
			conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: w.notify.Addr(), Net: "unixgram"})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { conn.Close() })

			data := []byte(msg.data)
			timeout := time.NewTimer(time.Hour)
			defer timeout.Stop()
			counting.Store(true)
			for b.Loop() {
				if _, err := conn.Write(data); err != nil {
					b.Fatal(err)
				}
				timeout.Reset(10 * time.Second)
				select {
				case <-handled:
				case <-timeout.C:
					b.Fatal("message not handled within 10s")
				}
			}
			counting.Store(false)

			var status string
			var pinged bool
			ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := m.call(ctx, func() { status, pinged = w.status, w.watched }); err != nil {
				b.Fatal(err)
			}
			if status != msg.status || pinged != (msg.name == "watchdog") {
				b.Fatalf("worker status %q, watched %v after the messages: not handled by onNotify", status, pinged)
			}
		})
	}
}

// BenchmarkStatus measures `baton status` against the master: the control
// socket round trip (as in internal/control's BenchmarkStatus) with the
// master's own handler, which snapshots its state on the event loop and
// then reads every worker's process-group RSS from /proc.
func BenchmarkStatus(b *testing.B) {
	for _, n := range []int{4, 64} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			m := startBenchMaster(b, n, nil)
			path := filepath.Join(b.TempDir(), "ctl.sock")
			srv, err := control.Listen(path, m.ControlHandler(), m.log)
			if err != nil {
				b.Fatal(err)
			}
			served := make(chan struct{})
			go func() {
				defer close(served)
				srv.Serve()
			}()
			// Registered after startBenchMaster's, so it runs first:
			// the server goes before the master it asks.
			b.Cleanup(func() {
				if err := srv.Close(); err != nil {
					b.Errorf("Close: %v", err)
				}
				<-served
			})

			var st *control.Status
			for b.Loop() {
				st = statusRoundTrip(b, path)
			}
			if st == nil || len(st.WorkerList) != n {
				b.Fatalf("status = %+v, want %d workers", st, n)
			}
			for _, w := range st.WorkerList {
				if w.State != "ready" || w.RSS == 0 {
					b.Fatalf("worker %+v: want ready, with its RSS read from /proc", w)
				}
			}
		})
	}
}

// statusRoundTrip is the client side of `baton status` (fetchStatus in
// cmd/baton), without printing.
func statusRoundTrip(b *testing.B, path string) *control.Status {
	c, err := control.Dial(path)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Call(ctx, control.Request{Cmd: control.CmdStatus}, nil)
	if err != nil {
		b.Fatal(err)
	}
	return resp.Status
}
