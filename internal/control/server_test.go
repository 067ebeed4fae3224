package control

import (
	"context"
	"errors"
	"net"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestStatusRoundTrip(t *testing.T) {
	started := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	want := Status{
		Pid: 42, Version: "1.2.3", Started: started, Uptime: 12.5, ConfigFile: "/etc/baton.toml",
		Listeners:  []Listener{{Name: "http", Addr: "127.0.0.1:8000"}},
		Generation: 3, Workers: 2,
		LastReload: &ReloadResult{Generation: 3, OK: true, Started: started, Duration: 1.5},
		WorkerList: []Worker{{Slot: 0, Pid: 100, Generation: 3, State: "ready", Started: started, RSS: 1 << 20}},
	}
	h := &fakeHandler{status: want}
	ts := startServer(t, h)

	resp, err := call(t, ts.path, Request{Cmd: CmdStatus}, nil)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if resp.Type != TypeDone || resp.Status == nil {
		t.Fatalf("status response = %+v, want done with a status", resp)
	}
	if !reflect.DeepEqual(*resp.Status, want) {
		t.Errorf("status = %+v\nwant %+v", *resp.Status, want)
	}
}

func TestReloadWaitStreamsProgressThenResult(t *testing.T) {
	received := make(chan Progress, 10)
	h := &fakeHandler{}
	h.reload = func(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
		progress(Progress{Generation: 2, Workers: 2, Starting: 2, Phase: "starting"})
		// Return only once the client has seen progress, so the test
		// does not depend on how the pump and the final line interleave.
		select {
		case <-received:
		case <-ctx.Done():
			return ReloadResult{}, ctx.Err()
		}
		progress(Progress{Generation: 2, Workers: 2, Ready: 2, Phase: "handing over"})
		return ReloadResult{Generation: 2, OK: true, Duration: 0.5}, nil
	}
	ts := startServer(t, h)

	var seen []Progress
	resp, err := call(t, ts.path, Request{Cmd: CmdReload, Wait: true}, func(p Progress) {
		seen = append(seen, p)
		received <- p
	})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	if resp.Type != TypeDone || resp.Reload == nil || !resp.Reload.OK || resp.Reload.Generation != 2 {
		t.Fatalf("reload response = %+v, want done with ok generation 2", resp)
	}
	if len(seen) < 1 || seen[0].Phase != "starting" {
		t.Fatalf("progress seen = %+v, want the starting phase first", seen)
	}
	if last := seen[len(seen)-1]; last.Phase != "handing over" {
		t.Errorf("last progress = %+v, want the last one reported (handing over) before the result", last)
	}
	if got := h.Calls(); !reflect.DeepEqual(got, []string{"Reload"}) {
		t.Errorf("handler calls = %v, want [Reload]", got)
	}
}

func TestFailedReloadIsDoneWithOKFalse(t *testing.T) {
	h := &fakeHandler{result: ReloadResult{Generation: 5, OK: false, Reason: "boot timeout", Stderr: []string{"ImportError"}}}
	ts := startServer(t, h)

	resp, err := call(t, ts.path, Request{Cmd: CmdReload, Wait: true}, nil)
	if err != nil {
		t.Fatalf("a failed reload is an answer, not an error: %v", err)
	}
	if resp.Type != TypeDone || resp.Reload == nil || resp.Reload.OK || resp.Reload.Reason != "boot timeout" ||
		!reflect.DeepEqual(resp.Reload.Stderr, []string{"ImportError"}) {
		t.Fatalf("response = %+v (reload %+v), want done with ok=false and the reason", resp, resp.Reload)
	}
}

func TestUpgradeWaitCallsUpgrade(t *testing.T) {
	h := &fakeHandler{result: ReloadResult{Generation: 1, OK: true}}
	ts := startServer(t, h)

	resp, err := call(t, ts.path, Request{Cmd: CmdUpgrade, Wait: true}, nil)
	if err != nil || resp.Reload == nil || !resp.Reload.OK {
		t.Fatalf("upgrade = %+v, %v; want done ok", resp, err)
	}
	if got := h.Calls(); !reflect.DeepEqual(got, []string{"Upgrade"}) {
		t.Errorf("handler calls = %v, want [Upgrade]", got)
	}
}

func TestWithoutWaitOnlyTriggers(t *testing.T) {
	for _, tc := range []struct{ cmd, method string }{
		{CmdReload, "TriggerReload"},
		{CmdUpgrade, "TriggerUpgrade"},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			h := &fakeHandler{}
			ts := startServer(t, h)
			resp, err := call(t, ts.path, Request{Cmd: tc.cmd}, func(Progress) { t.Error("progress without wait") })
			if err != nil || resp.Type != TypeDone || resp.Reload != nil {
				t.Fatalf("%s = %+v, %v; want a bare done", tc.cmd, resp, err)
			}
			if got := h.Calls(); !reflect.DeepEqual(got, []string{tc.method}) {
				t.Errorf("handler calls = %v, want [%s]", got, tc.method)
			}
		})
	}
}

func TestScale(t *testing.T) {
	h := &fakeHandler{}
	ts := startServer(t, h)
	resp, err := call(t, ts.path, Request{Cmd: CmdScale, Workers: 7}, nil)
	if err != nil || resp.Type != TypeDone {
		t.Fatalf("scale = %+v, %v; want done", resp, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.workers != 7 {
		t.Errorf("Scale got %d workers, want 7", h.workers)
	}
}

// TestScaleToTheCeilingIsPassedOn: MaxWorkers itself is allowed; one more
// is refused before the handler sees it (robustness_test.go).
func TestScaleToTheCeilingIsPassedOn(t *testing.T) {
	h := &fakeHandler{}
	ts := startServer(t, h)
	resp, err := call(t, ts.path, Request{Cmd: CmdScale, Workers: MaxWorkers}, nil)
	if err != nil || resp.Type != TypeDone {
		t.Fatalf("scale %d = %+v, %v; want done", MaxWorkers, resp, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.workers != MaxWorkers {
		t.Errorf("Scale got %d workers, want %d", h.workers, MaxWorkers)
	}
}

func TestStopAnswersThenHoldsTheConnectionUntilClose(t *testing.T) {
	h := &fakeHandler{}
	ts := startServer(t, h)

	c, err := Dial(ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Call(ctx, Request{Cmd: CmdStop, Quick: true}, nil)
	if err != nil || resp.Type != TypeDone {
		t.Fatalf("stop = %+v, %v; want done", resp, err)
	}
	h.mu.Lock()
	quick := h.quick
	h.mu.Unlock()
	if !quick {
		t.Errorf("Stop was not asked for a quick stop")
	}

	closed := make(chan error, 1)
	go func() { closed <- c.WaitClosed(ctx) }()
	select {
	case err := <-closed:
		t.Fatalf("WaitClosed returned (%v) while the master is still running", err)
	case <-time.After(50 * time.Millisecond):
	}
	ts.Close()
	if err := <-closed; err != nil {
		t.Fatalf("WaitClosed after the master closed: %v", err)
	}
}

func TestHandlerErrorBecomesClientError(t *testing.T) {
	h := &fakeHandler{err: errors.New("config: workers must be > 0")}
	ts := startServer(t, h)
	for _, req := range []Request{
		{Cmd: CmdStatus}, {Cmd: CmdReload}, {Cmd: CmdReload, Wait: true}, {Cmd: CmdScale, Workers: 2}, {Cmd: CmdStop},
	} {
		resp, err := call(t, ts.path, req, nil)
		if err == nil || err.Error() != "config: workers must be > 0" || resp.Type != TypeError {
			t.Errorf("%+v: got %+v, %v; want the handler's error", req, resp, err)
		}
	}
}

func TestHandlerPanicFailsOnlyThatRequest(t *testing.T) {
	h := &fakeHandler{}
	h.reload = func(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
		progress(Progress{Phase: "starting"})
		panic("boom")
	}
	ts := startServer(t, h)
	_, err := call(t, ts.path, Request{Cmd: CmdReload, Wait: true}, nil)
	if err == nil || !strings.Contains(err.Error(), "internal error") || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("err = %v, want an internal error naming the panic", err)
	}
	if !strings.Contains(ts.logs.String(), "handler panicked") {
		t.Errorf("the panic was not logged; log:\n%s", ts.logs)
	}
	assertStillServes(t, ts.path)
}

func TestUnencodableResultStillGetsAFinalLine(t *testing.T) {
	h := &fakeHandler{result: ReloadResult{OK: true, Started: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}}
	ts := startServer(t, h)
	_, err := call(t, ts.path, Request{Cmd: CmdReload, Wait: true}, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot encode") {
		t.Fatalf("err = %v, want an encoding error", err)
	}
}

// A client that never reads must not slow the handler down: the progress
// callback returns at once however many times it is called.
func TestProgressNeverBlocksTheHandler(t *testing.T) {
	const reports = 100000
	took := make(chan time.Duration, 1)
	h := &fakeHandler{}
	h.reload = func(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
		start := time.Now()
		for i := range reports {
			progress(Progress{Generation: i, Phase: strings.Repeat("x", 100)})
		}
		took <- time.Since(start)
		return ReloadResult{OK: true}, nil
	}
	ts := startServer(t, h, func(o *options) { o.writeTimeout = 200 * time.Millisecond })

	conn, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(`{"v":1,"cmd":"reload","wait":true}` + "\n")); err != nil {
		t.Fatal(err)
	}
	// Never read.
	select {
	case d := <-took:
		if d > 2*time.Second {
			t.Errorf("%d progress reports took %v with a client that does not read", reports, d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler is blocked by a client that does not read")
	}
}

func TestClientHangupCancelsTheHandler(t *testing.T) {
	running := make(chan struct{})
	cancelled := make(chan struct{})
	h := &fakeHandler{}
	h.reload = func(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
		close(running)
		select {
		case <-ctx.Done():
			close(cancelled)
			return ReloadResult{}, ctx.Err()
		case <-time.After(10 * time.Second):
			return ReloadResult{OK: true}, nil
		}
	}
	ts := startServer(t, h)

	c, err := Dial(ts.path)
	if err != nil {
		t.Fatal(err)
	}
	go c.Call(context.Background(), Request{Cmd: CmdReload, Wait: true}, nil)
	<-running
	c.Close()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's context was not cancelled when the client hung up")
	}
}

// A client that shuts down only its sending side after the request (as
// `nc -N` does) is still waiting for the answer: that is not a hang-up.
func TestHalfCloseIsNotAHangup(t *testing.T) {
	release := make(chan struct{})
	h := &fakeHandler{}
	h.reload = func(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
		select {
		case <-ctx.Done():
			return ReloadResult{}, ctx.Err()
		case <-release:
			return ReloadResult{Generation: 9, OK: true}, nil
		}
	}
	ts := startServer(t, h)

	go func() {
		time.Sleep(100 * time.Millisecond) // long enough for a wrong cancel to happen
		close(release)
	}()
	lines := rawExchange(t, ts.path, []byte(`{"v":1,"cmd":"reload","wait":true}`))
	if len(lines) != 1 {
		t.Fatalf("lines = %q, want one final line", lines)
	}
	if resp := decodeLine(t, lines[0]); resp.Type != TypeDone || resp.Reload == nil || resp.Reload.Generation != 9 {
		t.Fatalf("response = %q, want the reload's result", lines[0])
	}
}

func TestCloseCancelsHandlersAndAnswers(t *testing.T) {
	running := make(chan struct{})
	h := &fakeHandler{}
	h.reload = func(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
		close(running)
		<-ctx.Done()
		return ReloadResult{}, ctx.Err()
	}
	ts := startServer(t, h)

	errc := make(chan error, 1)
	go func() {
		_, err := call(t, ts.path, Request{Cmd: CmdReload, Wait: true}, nil)
		errc <- err
	}()
	<-running
	ts.Close()
	if err := <-errc; err == nil || err.Error() != "the master is shutting down" {
		t.Fatalf("err = %v, want the master is shutting down", err)
	}
}

// A retired socket takes no new client, but the one waiting for a
// reload's result gets it, and is not told the master is shutting down.
func TestRetireLetsServedClientsReadTheirResult(t *testing.T) {
	running := make(chan struct{})
	finish := make(chan struct{})
	h := &fakeHandler{}
	h.reload = func(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
		close(running)
		select {
		case <-finish:
			return ReloadResult{Generation: 7, OK: true}, nil
		case <-ctx.Done():
			return ReloadResult{}, ctx.Err()
		}
	}
	ts := startServer(t, h)
	type answer struct {
		resp Response
		err  error
	}
	answers := make(chan answer, 1)
	go func() {
		resp, err := call(t, ts.path, Request{Cmd: CmdReload, Wait: true}, nil)
		answers <- answer{resp, err}
	}()
	<-running
	retired := make(chan error, 1)
	go func() { retired <- ts.Retire(10 * time.Second) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(ts.path); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the socket file is still there after Retire")
		}
		time.Sleep(time.Millisecond)
	}
	if c, err := Dial(ts.path); err == nil {
		c.Close()
		t.Fatal("a new client connected to a retired socket")
	}
	close(finish)
	a := <-answers
	if a.err != nil || a.resp.Reload == nil || a.resp.Reload.Generation != 7 {
		t.Fatalf("the waiting client got %+v, %v; want generation 7's result", a.resp, a.err)
	}
	if err := <-retired; err != nil {
		t.Fatalf("Retire: %v", err)
	}
}

func TestCloseDoesNotWaitForeverForAStuckHandler(t *testing.T) {
	running := make(chan struct{})
	unstick := make(chan struct{})
	defer close(unstick)
	h := &fakeHandler{}
	h.reload = func(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
		close(running)
		<-unstick // ignores ctx
		return ReloadResult{}, nil
	}
	ts := startServer(t, h, func(o *options) { o.closeGrace = 100 * time.Millisecond })

	errc := make(chan error, 1)
	go func() {
		_, err := call(t, ts.path, Request{Cmd: CmdReload, Wait: true}, nil)
		errc <- err
	}()
	<-running
	start := time.Now()
	ts.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v with a stuck handler", d)
	}
	if err := <-errc; !errors.Is(err, ErrConnClosed) {
		t.Errorf("client err = %v, want ErrConnClosed", err)
	}
}

func TestBusyBeyondMaxConns(t *testing.T) {
	running := make(chan struct{})
	release := make(chan struct{})
	h := &fakeHandler{}
	h.reload = func(ctx context.Context, progress func(Progress)) (ReloadResult, error) {
		close(running)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ReloadResult{OK: true}, nil
	}
	ts := startServer(t, h, func(o *options) { o.maxConns = 1 })

	first := make(chan error, 1)
	go func() {
		_, err := call(t, ts.path, Request{Cmd: CmdReload, Wait: true}, nil)
		first <- err
	}()
	<-running
	_, err := call(t, ts.path, Request{Cmd: CmdStatus}, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "busy") {
		t.Fatalf("second connection: err = %v, want busy", err)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatalf("first connection: %v", err)
	}
	waitFor(t, "the slot to be freed", func() bool { return len(ts.slots) == 0 })
	assertStillServes(t, ts.path)
}

// assertStillServes checks that a plain status request works.
func assertStillServes(t *testing.T, path string) {
	t.Helper()
	resp, err := call(t, path, Request{Cmd: CmdStatus}, nil)
	if err != nil || resp.Type != TypeDone || resp.Status == nil {
		t.Fatalf("status after the bad request: %+v, %v", resp, err)
	}
}
