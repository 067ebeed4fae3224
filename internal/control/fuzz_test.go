package control

import (
	"bytes"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// fuzzMaxRequest is the request size limit while fuzzing: small, so that
// the fuzzer reaches the too-large path with small inputs, which it can
// mutate and minimize quickly.
const fuzzMaxRequest = 200

// FuzzRequest sends arbitrary bytes as a request and checks the answer:
// progress lines, then exactly one final line, then nothing; and the
// server survives.
func FuzzRequest(f *testing.F) {
	for _, seed := range []string{
		`{"v":1,"cmd":"status"}`,
		`{"v":1,"cmd":"reload","wait":true}`,
		`{"v":1,"cmd":"reload"}`,
		`{"v":1,"cmd":"upgrade","wait":true}`,
		`{"v":1,"cmd":"upgrade"}`,
		`{"v":1,"cmd":"scale","workers":4}`,
		`{"v":1,"cmd":"scale","workers":0}`,
		`{"v":1,"cmd":"stop","quick":true}`,
		`{"v":2,"cmd":"status"}`,
		`{"v":1,"cmd":"nope"}`,
		`{"v":1,"cmd":"status","extra":[1,{"a":null}]}`,
		`{"v":1,"cmd":"status"}` + "\n" + `{"v":1,"cmd":"stop"}`,
		`{"v":1e400}`,
		`{"v":1,"cmd":"\u0000\ud800"}`,
		`null`,
		`[]`,
		"",
		"\n",
		"\xff\xfe\x00",
		strings.Repeat(" ", fuzzMaxRequest+1),
		`{"v":1,"cmd":"status","pad":"` + strings.Repeat("x", fuzzMaxRequest) + `"}`,
	} {
		f.Add([]byte(seed))
	}
	h := &fakeHandler{result: ReloadResult{Generation: 2, OK: true}}
	ts := startServer(f, h, func(o *options) {
		o.readTimeout = time.Second
		o.maxRequest = fuzzMaxRequest
	})

	f.Fuzz(func(t *testing.T, data []byte) {
		stopsBefore := countCalls(h, "Stop")
		conn, err := net.Dial("unix", ts.path)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		go func() {
			conn.Write(data)
			conn.(*net.UnixConn).CloseWrite()
		}()

		lines := readAllLinesOrHold(t, conn, func() bool { return countCalls(h, "Stop") > stopsBefore })
		if len(lines) == 0 {
			t.Fatalf("no answer to %q", data)
		}
		for _, line := range lines[:len(lines)-1] {
			if resp := decodeLine(t, line); resp.Type != TypeProgress || resp.Progress == nil {
				t.Fatalf("answer to %q: line %q before the final one is not progress", data, line)
			}
		}
		final := decodeLine(t, lines[len(lines)-1])
		if final.Type != TypeDone && !(final.Type == TypeError && final.Error != "") {
			t.Fatalf("answer to %q: the last line %q is not final", data, lines[len(lines)-1])
		}
	})
}

// readAllLinesOrHold reads an answer: until the server closes the
// connection, or, after a stop (when held() says the stop happened), until
// the final line, after which the server keeps the connection open.
func readAllLinesOrHold(t *testing.T, conn net.Conn, held func() bool) []string {
	t.Helper()
	var lines []string
	buf := &bytes.Buffer{}
	chunk := make([]byte, 4096)
	for {
		if i := bytes.IndexByte(buf.Bytes(), '\n'); i >= 0 {
			line := string(buf.Next(i + 1))
			lines = append(lines, strings.TrimSuffix(line, "\n"))
			if isFinal(line) && held() && buf.Len() == 0 {
				return lines
			}
			continue
		}
		n, err := conn.Read(chunk)
		buf.Write(chunk[:n])
		if err != nil {
			if buf.Len() > 0 {
				t.Fatalf("unterminated line %q", buf.String())
			}
			if !isConnGone(err) {
				t.Fatalf("reading the answer: %v (lines so far %q)", err, lines)
			}
			return lines
		}
	}
}

func isFinal(line string) bool {
	return strings.HasPrefix(line, `{"v":1,"type":"done"`) || strings.HasPrefix(line, `{"v":1,"type":"error"`)
}

func countCalls(h *fakeHandler, method string) int {
	calls := h.Calls()
	return len(slices.DeleteFunc(calls, func(c string) bool { return c != method }))
}
