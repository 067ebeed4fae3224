package forkserver

import (
	"encoding/json"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// peer is the template's end of a pair, read and written raw.
func newPeer(t *testing.T) (*Conn, int) {
	t.Helper()
	conn, child, err := NewPair()
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Dup(int(child.Fd()))
	child.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(); unix.Close(fd) })
	return conn, fd
}

// TestConnFork: a fork request carries the env and two fds, the worker's
// stderr write end and the go pipe's read end; Go writes one byte, Abort
// none; baton keeps no copy of the passed ends. Not parallel: it counts
// the process's fds.
func TestConnFork(t *testing.T) {
	conn, peer := newPeer(t)
	for _, abort := range []bool{false, true} {
		before := openFDs(t)
		pending, err := conn.Fork(3, []string{"A=1", "B=x=y"})
		if err != nil {
			t.Fatal(err)
		}
		buf, oob := make([]byte, MaxMessage), make([]byte, unix.CmsgSpace(3*4))
		n, oobn, _, _, err := unix.Recvmsg(peer, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		var m Message
		if err := json.Unmarshal(buf[:n], &m); err != nil || m.Type != TypeFork || m.ID != 3 || strings.Join(m.Env, " ") != "A=1 B=x=y" {
			t.Fatalf("request %q (%v); want fork 3 with the env", buf[:n], err)
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		if len(msgs) != 1 {
			t.Fatalf("%d control messages, want 1", len(msgs))
		}
		fds, _ := unix.ParseUnixRights(&msgs[0])
		if len(fds) != 2 {
			t.Fatalf("%d fds, want 2", len(fds))
		}
		stderrW, goR := os.NewFile(uintptr(fds[0]), "stderr"), os.NewFile(uintptr(fds[1]), "go")
		stderrW.WriteString("oops\n")
		stderrW.Close()
		if abort {
			pending.Abort()
		} else {
			pending.Stderr().SetReadDeadline(time.Now().Add(patience))
			got, _ := io.ReadAll(pending.Stderr())
			if string(got) != "oops\n" {
				t.Errorf("stderr read end gave %q, want oops (and EOF: baton must hold no write end)", got)
			}
			pending.Stderr().Close()
			if err := pending.Go(); err != nil {
				t.Fatal(err)
			}
		}
		got, _ := io.ReadAll(goR) // EOF only once baton's write end is closed
		goR.Close()
		if want := map[bool]string{false: "g", true: ""}[abort]; string(got) != want {
			t.Errorf("abort=%v: the go pipe gave %q, want %q", abort, got, want)
		}
		if after := openFDs(t); after != before {
			t.Errorf("abort=%v: %d fds open before Fork, %d after the worker's pipes are done: baton kept one", abort, before, after)
		}
	}
}

func TestConnForkTooLarge(t *testing.T) {
	t.Parallel()
	conn, _ := newPeer(t)
	_, err := conn.Fork(1, []string{"BIG=" + strings.Repeat("x", MaxMessage)})
	if err == nil || !strings.Contains(err.Error(), "its environment is too large") {
		t.Errorf("error %v; want the environment too large", err)
	}
}

// TestConnReceive: messages arrive in order; a stray fd is closed; a
// datagram that is not a message ends Receive with an error naming it;
// the peer's close ends it with nil. Not parallel: it counts the process's fds.
func TestConnReceive(t *testing.T) {
	for _, tc := range []struct {
		name    string
		send    []string
		wantErr string
	}{
		{"eof", []string{`{"type":"ready","pid":5,"preloaded":["a"]}`, `{"type":"forked","id":1,"pid":6}`}, ""},
		{"garbage", []string{`{"type":"forked","id":1,"pid":6}`, `Traceback (most recent call last)`}, `the template sent "Traceback (most recent call last)", not a protocol message`},
		{"no type", []string{`{"id":1}`}, "not a protocol message"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, peer := newPeer(t)
			stray, err := os.Open("/dev/null")
			if err != nil {
				t.Fatal(err)
			}
			defer stray.Close()
			for _, s := range tc.send {
				if err := unix.Sendmsg(peer, []byte(s), unix.UnixRights(int(stray.Fd())), nil, 0); err != nil {
					t.Fatal(err)
				}
			}
			if tc.wantErr == "" {
				unix.Shutdown(peer, unix.SHUT_WR)
			}
			before := openFDs(t)
			var got []Message
			err = conn.Receive(func(m Message) { got = append(got, m) })
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Receive: %v; want %q", err, tc.wantErr)
			}
			if tc.name == "eof" && (len(got) != 2 || got[0].Pid != 5 || got[0].Preloaded[0] != "a" || got[1].Type != TypeForked) {
				t.Errorf("messages %+v", got)
			}
			if after := openFDs(t); after > before {
				t.Errorf("%d fds open after Receive, %d before: the fds the peer sent were kept", after, before)
			}
		})
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}
