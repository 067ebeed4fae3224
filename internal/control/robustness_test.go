package control

import (
	"bytes"
	"net"
	"strings"
	"testing"
	"time"
)

func TestBadRequestsGetOneErrorLineAndTheServerCarriesOn(t *testing.T) {
	for _, tc := range []struct {
		name    string
		request string
		want    []string // substrings of the error
	}{
		{"malformed JSON", `{"v":1,"cmd":`, []string{"malformed request"}},
		{"not an object", `[1,2,3]`, []string{"malformed request"}},
		{"empty line", ``, []string{"malformed request"}},
		{"wrong type", `{"v":"1","cmd":"status"}`, []string{"malformed request"}},
		{"wrong version", `{"v":2,"cmd":"status"}`, []string{"version 2", "version 1"}},
		{"no version", `{"cmd":"status"}`, []string{"version 0", "version 1"}},
		{"unknown command", `{"v":1,"cmd":"restart"}`, []string{`unknown command "restart"`, "status, reload, upgrade, scale, stop"}},
		{"no command", `{"v":1}`, []string{"no cmd", "status, reload, upgrade, scale, stop"}},
		{"scale to zero", `{"v":1,"cmd":"scale","workers":0}`, []string{"workers >= 1", "got 0"}},
		{"scale negative", `{"v":1,"cmd":"scale","workers":-3}`, []string{"workers >= 1", "got -3"}},
		{"scale above the ceiling", `{"v":1,"cmd":"scale","workers":1025}`, []string{"workers >= 1 and <= 1024", "got 1025"}},
		{"scale far above the ceiling", `{"v":1,"cmd":"scale","workers":9223372036854775807}`, []string{"<= 1024", "got 9223372036854775807"}},
		{"trailing garbage", `{"v":1,"cmd":"status"} x`, []string{"malformed request"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &fakeHandler{}
			ts := startServer(t, h)
			lines := rawExchange(t, ts.path, []byte(tc.request+"\n"))
			assertOneError(t, lines, tc.want...)
			if calls := h.Calls(); len(calls) != 0 {
				t.Errorf("the handler was called (%v) for a bad request", calls)
			}
			assertStillServes(t, ts.path)
		})
	}
}

func TestUnknownFieldsAreIgnored(t *testing.T) {
	ts := startServer(t, &fakeHandler{})
	lines := rawExchange(t, ts.path, []byte(`{"v":1,"cmd":"status","from_the_future":{"x":[1]}}`+"\n"))
	if len(lines) != 1 || decodeLine(t, lines[0]).Type != TypeDone {
		t.Fatalf("lines = %q, want one done line", lines)
	}
}

func TestRequestWithoutNewlineBeforeEOF(t *testing.T) {
	ts := startServer(t, &fakeHandler{})
	lines := rawExchange(t, ts.path, []byte(`{"v":1,"cmd":"status"}`))
	if len(lines) != 1 || decodeLine(t, lines[0]).Type != TypeDone {
		t.Fatalf("lines = %q, want one done line", lines)
	}
}

func TestEmptyConnectionGetsAnErrorLine(t *testing.T) {
	ts := startServer(t, &fakeHandler{})
	assertOneError(t, rawExchange(t, ts.path, nil), "no request received")
	assertStillServes(t, ts.path)
}

func TestHugeRequestIsRefused(t *testing.T) {
	h := &fakeHandler{}
	ts := startServer(t, h)
	huge := append(bytes.Repeat([]byte("x"), 1<<20), '\n')
	assertOneError(t, rawExchange(t, ts.path, huge), "request too large")
	assertStillServes(t, ts.path)
}

func TestRequestAtTheSizeLimitIsRead(t *testing.T) {
	ts := startServer(t, &fakeHandler{})
	req := `{"v":1,"cmd":"status","pad":"` // unknown field, ignored
	req += strings.Repeat("x", maxRequestLine-len(req)-2) + `"}`
	if len(req) != maxRequestLine {
		t.Fatalf("test request is %d bytes, want %d", len(req), maxRequestLine)
	}
	lines := rawExchange(t, ts.path, []byte(req+"\n"))
	if len(lines) != 1 || decodeLine(t, lines[0]).Type != TypeDone {
		t.Fatalf("lines = %q, want one done line", lines)
	}
	assertOneError(t, rawExchange(t, ts.path, []byte(req+" \n")), "request too large")
}

func TestSilentClientIsTimedOut(t *testing.T) {
	ts := startServer(t, &fakeHandler{}, func(o *options) { o.readTimeout = 100 * time.Millisecond })
	conn, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	lines := readAllLines(t, conn) // sends nothing; the server must give up and close
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the server took %v to drop a silent client", d)
	}
	assertOneError(t, lines, "timed out waiting for a request")
	assertStillServes(t, ts.path)
}

// A client that trickles its request a byte at a time does not get more
// time: the deadline is for the whole line.
func TestTricklingClientIsTimedOut(t *testing.T) {
	ts := startServer(t, &fakeHandler{}, func(o *options) { o.readTimeout = 200 * time.Millisecond })
	conn, err := net.Dial("unix", ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
				if _, err := conn.Write([]byte(" ")); err != nil {
					return
				}
			}
		}
	}()
	assertOneError(t, readAllLines(t, conn), "timed out waiting for a request")
}

// Many silent clients at once: those beyond the limit are told "busy" at
// once, the others are timed out, and then a good client is served.
func TestManySilentClientsAtOnce(t *testing.T) {
	const clients, limit = 20, 8
	ts := startServer(t, &fakeHandler{}, func(o *options) {
		o.readTimeout = 500 * time.Millisecond
		o.maxConns = limit
	})
	var conns []net.Conn
	for range clients {
		conn, err := net.Dial("unix", ts.path)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		conns = append(conns, conn)
	}
	busy, timedOut := 0, 0
	for _, conn := range conns {
		lines := readAllLines(t, conn)
		switch {
		case len(lines) == 1 && strings.HasPrefix(decodeLine(t, lines[0]).Error, "busy"):
			busy++
		case len(lines) == 1 && strings.HasPrefix(decodeLine(t, lines[0]).Error, "timed out"):
			timedOut++
		default:
			t.Errorf("unexpected answer %q", lines)
		}
	}
	// Normally exactly limit are served; more only if the machine is so
	// slow that a slot is freed before every client has connected.
	if busy+timedOut != clients || timedOut < limit || busy == 0 {
		t.Errorf("%d busy and %d timed out, want %d and %d", busy, timedOut, clients-limit, limit)
	}
	waitFor(t, "all slots to be free", func() bool { return len(ts.slots) == 0 })
	assertStillServes(t, ts.path)
}

// assertOneError checks that lines are exactly one error line whose text
// contains each of want.
func assertOneError(t *testing.T, lines []string, want ...string) {
	t.Helper()
	if len(lines) != 1 {
		t.Fatalf("got %d lines %q, want exactly one error line", len(lines), lines)
	}
	resp := decodeLine(t, lines[0])
	if resp.Type != TypeError {
		t.Fatalf("line %q is not an error", lines[0])
	}
	for _, w := range want {
		if !strings.Contains(resp.Error, w) {
			t.Errorf("error %q does not contain %q", resp.Error, w)
		}
	}
}
