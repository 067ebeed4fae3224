package worker

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestNotifyWithoutSocketDoesNothing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET") // t.Setenv restores the original afterwards
	for name, send := range map[string]func() error{
		"Notify":   func() error { return Notify("READY=1") },
		"Ready":    Ready,
		"Stopping": Stopping,
		"Watchdog": Watchdog,
		"Status":   func() error { return Status("idle") },
	} {
		if err := send(); err != nil {
			t.Errorf("%s without NOTIFY_SOCKET: %v", name, err)
		}
	}
}

func TestNotifyPathSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	sock := listenNotify(t, path)
	t.Setenv("NOTIFY_SOCKET", path)

	for _, tc := range []struct {
		send func() error
		want string
	}{
		{Ready, "READY=1"},
		{Stopping, "STOPPING=1"},
		{Watchdog, "WATCHDOG=1"},
		{func() error { return Status("warming\ncaches") }, "STATUS=warming caches"},
		{func() error { return Notify("READY=1\nSTATUS=serving") }, "READY=1\nSTATUS=serving"},
	} {
		if err := tc.send(); err != nil {
			t.Fatalf("sending %q: %v", tc.want, err)
		}
		if got := receive(t, sock); got != tc.want {
			t.Errorf("received %q, want %q", got, tc.want)
		}
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@baton-worker-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	sock := listenNotify(t, name)
	t.Setenv("NOTIFY_SOCKET", name)

	if err := Ready(); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, sock); got != "READY=1" {
		t.Errorf("received %q, want READY=1", got)
	}
}

func TestNotifyErrors(t *testing.T) {
	for _, socket := range []string{
		"relative/notify.sock",
		filepath.Join(t.TempDir(), "nobody-listens.sock"),
	} {
		t.Setenv("NOTIFY_SOCKET", socket)
		if err := Ready(); err == nil {
			t.Errorf("Ready() with NOTIFY_SOCKET=%q succeeded, want an error", socket)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		ok        bool
	}{
		{usec: "", pid: ""},
		{usec: "0", pid: ""},
		{usec: "soon", pid: ""},
		{usec: "-5", pid: ""},
		{usec: "99999999999999999", pid: ""},
		{usec: "500000", pid: "", want: 500 * time.Millisecond, ok: true},
		{usec: "500000", pid: self, want: 500 * time.Millisecond, ok: true},
		{usec: "500000", pid: "1"},
	} {
		t.Setenv("WATCHDOG_USEC", tc.usec)
		t.Setenv("WATCHDOG_PID", tc.pid)
		got, ok := WatchdogInterval()
		if got != tc.want || ok != tc.ok {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: WatchdogInterval() = %v, %v; want %v, %v",
				tc.usec, tc.pid, got, ok, tc.want, tc.ok)
		}
	}
}

func TestWorkerIDAndGeneration(t *testing.T) {
	t.Setenv("BATON_WORKER_ID", "3")
	t.Setenv("BATON_GENERATION", "7")
	if WorkerID() != 3 || Generation() != 7 {
		t.Errorf("WorkerID(), Generation() = %d, %d; want 3, 7", WorkerID(), Generation())
	}
	t.Setenv("BATON_WORKER_ID", "")
	t.Setenv("BATON_GENERATION", "seven")
	if WorkerID() != 0 || Generation() != 0 {
		t.Errorf("without valid values: WorkerID(), Generation() = %d, %d; want 0, 0", WorkerID(), Generation())
	}
}

// listenNotify opens a notify socket at name (a path or an @abstract name) and
// closes it, removing a path, when the test ends.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sock.Close() })
	return sock
}

func receive(t *testing.T, sock *net.UnixConn) string {
	t.Helper()
	sock.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := sock.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return string(buf[:n])
}
