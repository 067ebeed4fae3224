package master

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/listener"
	"golang.org/x/sys/unix"
)

// withListeners opens real listeners for the master (the test bed has
// none otherwise); they are closed when the test ends.
func withListeners(t *testing.T, specs ...listener.Spec) (func(m *Master), []*listener.Listener) {
	ls, err := listener.Open(specs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { listener.CloseAll(ls) })
	return func(m *Master) { m.listeners = ls }, ls
}

func TestAListenerAWorkerShutDownIsReArmedWhenItExits(t *testing.T) {
	setup, ls := withListeners(t, listener.Spec{Name: "web", Network: "tcp", Address: "127.0.0.1:0", Backlog: 16})
	inBubbleWith(t, options(gen(2)), setup, func(t *testing.T, tb *testbed) {
		tb.ready(tb.workers(1, "starting")...)
		// What a worker without the guard does on its way out.
		if err := unix.Shutdown(ls[0].FD(), unix.SHUT_RDWR); err != nil {
			t.Fatal(err)
		}
		if ls[0].Check() == nil {
			t.Fatal("Check does not see the shutdown")
		}
		tb.exit(tb.workers(1, "ready")[0], 0)
		if err := ls[0].Check(); err != nil {
			t.Fatalf("not re-armed after the worker's exit: %v", err)
		}
		if st := tb.status(); st.Listeners[0].State != "listening" {
			t.Errorf("status says the listener is %s: %q", st.Listeners[0].State, st.Listeners[0].Error)
		}
	})
}

func TestAListenerIsCheckedOnATimerToo(t *testing.T) {
	setup, ls := withListeners(t, listener.Spec{Name: "web", Network: "tcp", Address: "127.0.0.1:0", Backlog: 16})
	inBubbleWith(t, options(gen(1)), setup, func(t *testing.T, tb *testbed) {
		tb.ready(tb.workers(1, "starting")...)
		unix.Shutdown(ls[0].FD(), unix.SHUT_RDWR)
		tb.wait(listenerCheckEvery)
		if err := ls[0].Check(); err != nil {
			t.Fatalf("not re-armed %v after the shutdown: %v", listenerCheckEvery, err)
		}
	})
}

// A unix listener keeps a shutdown for good: the master says it is down,
// /readyz says 503, and reloads fail until baton is restarted.
func TestAUnixListenerShutDownIsReportedDownAndFailsReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	setup, ls := withListeners(t, listener.Spec{Name: "app", Network: "unix", Address: path, Backlog: 16, UnixMode: 0o600})
	inBubbleWith(t, options(gen(1)), setup, func(t *testing.T, tb *testbed) {
		tb.ready(tb.workers(1, "starting")...)
		unix.Shutdown(ls[0].FD(), unix.SHUT_RDWR)
		tb.wait(listenerCheckEvery)
		st := tb.status()
		if st.Listeners[0].State != "down" || !strings.Contains(st.Listeners[0].Error, "shut down") {
			t.Fatalf("status of the listener: %+v, want it down", st.Listeners[0])
		}
		snap, err := metricsSource{tb.m}.Health(context.Background())
		if err != nil || len(snap.ListenersDown) != 1 {
			t.Fatalf("health snapshot %+v, %v: want the listener down, so /readyz says 503", snap, err)
		}
		r := tb.result(tb.reloadAsync())
		if r.OK || !strings.Contains(r.Reason, "listener app is shut down: ") {
			t.Fatalf("reload with a listener down: %+v, want a failure naming it", r)
		}
		tb.wait(time.Minute) // it stays down: reported once, not re-armed in a loop
		if st := tb.status(); st.Listeners[0].State != "down" {
			t.Error("the listener came back by itself")
		}
	})
}

// The suspects of a listener shutdown are kept for seconds, not for the
// master's life: back-to-back reloads must not grow the master.
func TestRecentlyStoppedWorkersAreForgotten(t *testing.T) {
	serving(t, options(gen(2)), func(t *testing.T, tb *testbed) {
		for gen := 2; gen <= 11; gen++ {
			res := tb.reloadAsync()
			tb.ready(tb.workers(gen, "starting")...)
			tb.result(res)
			tb.wait(stoppedRecently)
		}
		var n int
		if err := tb.m.call(context.Background(), func() { n = len(tb.m.recentlyStopped) }); err != nil {
			t.Fatal(err)
		}
		if n > 2 {
			t.Errorf("%d stopped workers remembered after 10 reloads, want only the last reload's", n)
		}
	})
}
