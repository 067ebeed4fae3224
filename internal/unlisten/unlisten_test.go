package unlisten

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/readiness"
)

// The test binary doubles as the helper, as baton's binary does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == Arg {
		os.Exit(Main(os.Args[2:]))
	}
	if n, err := strconv.Atoi(os.Getenv(epollWorkerEnv)); err == nil {
		epollWorker(n)
		os.Exit(0)
	}
	if os.Getenv("GORACE") == "" {
		// A -race helper otherwise sleeps a second at exit.
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	os.Exit(m.Run())
}

func TestRemovesTheListenerFromAnotherProcesssEpollSet(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ino, err := readiness.SocketInode(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed for this test")
	}
	// A worker that registers a dup of its listener (at another fd number)
	// in an epoll set, as uvicorn does, and waits.
	cmd := exec.Command(py, "-c", `import os, select, time
e = select.epoll()
e.register(os.dup(3), select.EPOLLIN)
time.sleep(60)`)
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	probe := readiness.NewProbe([]uint64{ino})
	var regs []readiness.Registration
	for deadline := time.Now().Add(15 * time.Second); len(regs) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the worker never registered its listener")
		}
		regs = probe.Registrations(cmd.Process.Pid)
	}
	r := regs[0]
	if r.FD == 3 {
		t.Fatal("want the dup's fd number, not 3: the test would not show that numbers are matched")
	}

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pid, err := Start(self, []Target{{Pid: r.Pid, EpollFD: r.EpollFD, FD: r.FD, ListenerFD: int(f.Fd())}})
	if err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	if !ws.Exited() || ws.ExitStatus() != 0 {
		t.Fatalf("helper: %v", ws)
	}
	if left := probe.Registrations(cmd.Process.Pid); len(left) != 0 {
		t.Fatalf("the listener is still registered: %+v", left)
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the worker did not survive: %v", err)
	}
}

func TestHelperReportsWhatFailed(t *testing.T) {
	for _, args := range [][]string{{"1"}, {"x", "1", "1"}, {"999999999", "3", "4"}, {"999999999:3:4"}, {"1:2:3", "4:5"}} {
		if code := Main(args); code == 0 {
			t.Errorf("Main(%q) = 0, want a failure", args)
		}
	}
}
