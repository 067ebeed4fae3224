package control

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestDialWithNoMaster(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.sock")
	makeStaleSocket(t, stale)
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, path := range map[string]string{
		"missing":      filepath.Join(dir, "missing.sock"),
		"missing dir":  filepath.Join(dir, "nodir", "ctl.sock"),
		"stale":        stale,
		"not a socket": regular,
		"under a file": filepath.Join(regular, "ctl.sock"),
	} {
		_, err := Dial(path)
		want := "no baton master is listening at " + path + " (is it running? give --control or --pid)"
		if err == nil || err.Error() != want {
			t.Errorf("%s: Dial = %v\nwant %s", name, err, want)
		}
	}
}

func TestDialErrorsUnwrap(t *testing.T) {
	_, err := Dial(filepath.Join(t.TempDir(), "missing.sock"))
	if !errors.Is(err, syscall.ENOENT) {
		t.Errorf("Dial error %v does not unwrap to ENOENT", err)
	}
	err = dialError("/run/x.sock", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.EACCES)})
	if !strings.Contains(err.Error(), "permission denied") || !strings.Contains(err.Error(), "/run/x.sock") {
		t.Errorf("EACCES: %v, want permission denied naming the path", err)
	}
}

// fakeMaster accepts one connection on a socket of its own and runs serve
// on it, to give the client answers the real server never gives.
func fakeMaster(t *testing.T, serve func(conn net.Conn, request string)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		line, _ := bufio.NewReader(conn).ReadString('\n')
		serve(conn, line)
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return path
}

func TestCallSetsTheVersion(t *testing.T) {
	got := make(chan string, 1)
	path := fakeMaster(t, func(conn net.Conn, request string) {
		got <- request
		conn.Write([]byte(`{"v":1,"type":"done"}` + "\n"))
	})
	if _, err := call(t, path, Request{V: 7, Cmd: CmdStatus}, nil); err != nil {
		t.Fatal(err)
	}
	if req := <-got; req != `{"v":1,"cmd":"status"}`+"\n" {
		t.Errorf("request line = %q", req)
	}
}

func TestCallWhenTheMasterClosesEarly(t *testing.T) {
	path := fakeMaster(t, func(conn net.Conn, request string) {
		conn.Write([]byte(`{"v":1,"type":"progress","progress":{"phase":"starting"}}` + "\n" + `{"v":1,"type":"do`))
	})
	var progress []Progress
	_, err := call(t, path, Request{Cmd: CmdStop}, func(p Progress) { progress = append(progress, p) })
	if !errors.Is(err, ErrConnClosed) || err.Error() != "the master closed the connection" {
		t.Fatalf("err = %v, want ErrConnClosed", err)
	}
	if len(progress) != 1 || progress[0].Phase != "starting" {
		t.Errorf("progress = %+v, want the one progress line", progress)
	}
}

func TestCallSkipsUnknownTypesAndRejectsGarbage(t *testing.T) {
	path := fakeMaster(t, func(conn net.Conn, request string) {
		conn.Write([]byte(`{"v":1,"type":"log","text":"hi"}` + "\n" + `{"v":1,"type":"done"}` + "\n"))
	})
	if resp, err := call(t, path, Request{Cmd: CmdStatus}, nil); err != nil || resp.Type != TypeDone {
		t.Fatalf("= %+v, %v; want done after skipping an unknown type", resp, err)
	}

	path = fakeMaster(t, func(conn net.Conn, request string) {
		conn.Write([]byte("hello\n"))
	})
	if _, err := call(t, path, Request{Cmd: CmdStatus}, nil); err == nil || !strings.Contains(err.Error(), "bad response") {
		t.Fatalf("err = %v, want a bad response error", err)
	}
}

func TestCallHonoursContext(t *testing.T) {
	path := fakeMaster(t, func(conn net.Conn, request string) {
		io.Copy(io.Discard, conn) // never answers; returns when the client hangs up
	})
	c, err := Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.Call(ctx, Request{Cmd: CmdStatus}, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's deadline", err)
	}
	if err := c.WaitClosed(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitClosed err = %v, want the context's deadline", err)
	}
}

func TestWaitClosedHonoursContext(t *testing.T) {
	ts := startServer(t, &fakeHandler{})
	c, err := Dial(ts.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Call(context.Background(), Request{Cmd: CmdStop}, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.WaitClosed(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitClosed = %v while the master runs, want the context's deadline", err)
	}
}
