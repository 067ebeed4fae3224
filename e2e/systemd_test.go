package e2e

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// notification is one datagram baton sent to "systemd", with its sender.
type notification struct {
	pid    int32
	fields map[string]string
}

// fakeSystemd is a unix datagram socket playing systemd's notify socket.
type fakeSystemd struct {
	path string
	got  chan notification
}

func newFakeSystemd(t *testing.T) *fakeSystemd {
	t.Helper()
	f := &fakeSystemd{path: filepath.Join(t.TempDir(), "notify.sock"), got: make(chan notification, 256)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: f.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := conn.SyscallConn()
	raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				close(f.got)
				return
			}
			msg := notification{pid: -1, fields: map[string]string{}}
			if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(cmsgs) > 0 {
				if cred, err := unix.ParseUnixCredentials(&cmsgs[0]); err == nil {
					msg.pid = cred.Pid
				}
			}
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					msg.fields[k] = v
				}
			}
			f.got <- msg
		}
	}()
	return f
}

// next waits for the next notification that sets key.
func (f *fakeSystemd) next(t *testing.T, key string, from int) notification {
	t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case m := <-f.got:
			if int(m.pid) != from {
				t.Errorf("notification %v came from pid %d, not the master %d: a worker reached systemd's socket", m.fields, m.pid, from)
			}
			if _, ok := m.fields[key]; ok {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s= notification within %v", key, waitTimeout)
		}
	}
}

func TestSystemdNotifyProtocol(t *testing.T) {
	t.Parallel()
	sd := newFakeSystemd(t)
	// Workers that notify too: their READY=1 must go to baton, never to
	// systemd's socket.
	b := launch(t, batonSpec{
		args: []string{"run", "-w", "2", "--", testworkerBin, "-notify-ready", "-boot-delay", "300ms"},
		// systemd's watchdog: ping at least every 200 ms.
		env: []string{"NOTIFY_SOCKET=" + sd.path, "WATCHDOG_USEC=200000"},
	})
	b.waitStarted(t)

	ready := sd.next(t, "READY", b.Pid)
	if !strings.Contains(ready.fields["STATUS"], "2/2 workers ready") {
		t.Errorf("READY=1 with STATUS %q, want 2/2 workers ready", ready.fields["STATUS"])
	}
	// The master had both ready before it sent READY=1.
	if st := b.mustStatus(t); len(inState(st, "ready")) != 2 {
		t.Errorf("READY=1 sent with %d workers ready, want 2: %+v", len(inState(st, "ready")), st.WorkerList)
	}

	// The master's loop pings systemd's watchdog, again and again.
	first := time.Now()
	sd.next(t, "WATCHDOG", b.Pid)
	sd.next(t, "WATCHDOG", b.Pid)
	if took := time.Since(first); took > 2*time.Second {
		t.Errorf("two WATCHDOG=1 took %v; WATCHDOG_USEC asks for one every 200 ms", took)
	}

	b.signal(t, syscall.SIGHUP)
	reloading := sd.next(t, "RELOADING", b.Pid)
	if reloading.fields["MONOTONIC_USEC"] == "" {
		t.Errorf("RELOADING=1 without MONOTONIC_USEC: %v", reloading.fields)
	}
	again := sd.next(t, "READY", b.Pid)
	if !strings.Contains(again.fields["STATUS"], "reload of generation 2 succeeded") {
		t.Errorf("READY=1 after the reload with STATUS %q", again.fields["STATUS"])
	}

	b.signal(t, syscall.SIGTERM)
	sd.next(t, "STOPPING", b.Pid)
	if code := b.waitExit(t, exitTimeout); code != 0 {
		t.Errorf("exit %d", code)
	}
}

func TestSystemdSocketActivation(t *testing.T) {
	t.Parallel()
	activator := requireTool(t, "systemd-socket-activate")
	sock := filepath.Join(t.TempDir(), "web.sock")
	ctl := filepath.Join(t.TempDir(), "baton.sock")
	// systemd-socket-activate listens, and on the first connection execs
	// baton with the socket as fd 3, named web.
	cmd := exec.Command(activator, "-l", sock, "--fdname=web",
		batonBin, "run", "-b", "systemd:web", "-w", "2", "--control", ctl, "--", testworkerBin)
	cmd.Env = cleanEnv()
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	done := make(chan struct{})
	go func() { waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})
	waitFor(t, waitTimeout, "the activator's socket", func() bool { _, err := os.Stat(sock); return err == nil })

	// This very request starts baton, waits in the backlog and is served.
	info, err := fetchInfo("unix:" + sock)
	if err != nil {
		t.Fatalf("first request through the activated socket: %v", err)
	}
	if info.Listener != "web" || info.ListenFDNames != "web" || !info.ListenPidMatched {
		t.Errorf("worker saw %+v; want the listener named web, activated for it", info)
	}
	master := cmd.Process.Pid // the activator exec'd baton in its place
	workers := childrenOf(master)
	if len(workers) != 2 {
		t.Errorf("baton has %d workers, want 2", len(workers))
	}
	syscall.Kill(master, syscall.SIGTERM)
	select {
	case <-done:
		var exit *exec.ExitError
		if errors.As(waitErr, &exit) {
			t.Errorf("baton exited %d after TERM, want 0", exit.ExitCode())
		}
	case <-time.After(exitTimeout):
		t.Fatal("baton did not exit after TERM")
	}
	for _, w := range workers {
		if processAlive(w) {
			t.Errorf("worker %d outlived the master", w)
		}
	}
}
