package readiness

import (
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// listenerFile opens a real listening socket and returns it as a file to
// pass to a child as fd 3, with its inode.
func listenerFile(t *testing.T) (*os.File, uint64) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	l.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	ino, err := SocketInode(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return f, ino
}

// startPython runs a Python snippet with the listener as fd 3.
func startPython(t *testing.T, f *os.File, code string) *exec.Cmd {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed for this test")
	}
	cmd := exec.Command(py, "-c", "import socket, select, time, os\n"+code)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill the whole group: some snippets fork.
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	return cmd
}

func waitUntilWaiting(t *testing.T, p *Probe, pid int) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !p.Waiting(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never seen waiting on the listener", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const wrapFD3 = "s = socket.socket(fileno=3)\n"

func TestDetectsEachWayOfWaiting(t *testing.T) {
	cases := map[string]string{
		"blocking accept": wrapFD3 + "s.setblocking(True)\ns.accept()",
		"select":          wrapFD3 + "select.select([s], [], [])",
		"poll":            wrapFD3 + "p = select.poll()\np.register(s, select.POLLIN)\np.poll()",
		"epoll":           wrapFD3 + "e = select.epoll()\ne.register(s.fileno(), select.EPOLLIN)\ne.poll()",
		// a dup of the fd, as uvicorn --fd makes, must match by inode
		"epoll on a dup": "s = socket.socket(fileno=os.dup(3))\ne = select.epoll()\ne.register(s.fileno(), select.EPOLLIN)\ne.poll()",
		// the listener is waited on by a child process, as with gunicorn
		"child process": "if os.fork() == 0:\n    " + wrapFD3 + "    select.select([s], [], [])\nos.wait()",
	}
	for name, code := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f, ino := listenerFile(t)
			cmd := startPython(t, f, code)
			waitUntilWaiting(t, NewProbe([]uint64{ino}), cmd.Process.Pid)
		})
	}
}

func TestNotWaitingWhileBootingOrOnAnotherSocket(t *testing.T) {
	cases := map[string]string{
		"sleeping with the fd open": wrapFD3 + "time.sleep(60)",
		"select on another socket":  "o = socket.socket()\no.bind(('127.0.0.1', 0))\no.listen()\nselect.select([o], [], [])",
		"epoll without EPOLLIN":     wrapFD3 + "e = select.epoll()\ne.register(s.fileno(), select.EPOLLOUT)\ne.poll()",
	}
	for name, code := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f, ino := listenerFile(t)
			cmd := startPython(t, f, code)
			p := NewProbe([]uint64{ino})
			// Give the snippet time to reach its blocking call; a
			// positive case above is seen well within this.
			for i := 0; i < 25; i++ {
				if p.Waiting(cmd.Process.Pid) {
					t.Fatal("reported waiting, but the process does not wait on the listener")
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

func TestParseEpollTarget(t *testing.T) {
	got, ok := parseEpollTarget("tfd:        7 events:       19 data:                7  pos:0 ino:1a2b sdev:8")
	if want := (epollTarget{fd: 7, ino: 0x1a2b, events: 0x19}); !ok || got != want {
		t.Fatalf("got %+v %v, want %+v", got, ok, want)
	}
	if _, ok := parseEpollTarget("pos:\t0"); ok {
		t.Fatal("parsed a non-target line")
	}
}

func TestParseSyscall(t *testing.T) {
	s, ok := parseSyscall("288 0x3 0x7ffd0 0x0 0x80800 0x0 0x0 0x7ffc 0x7f12\n")
	if !ok || s.nr != 288 || s.args[0] != 3 || s.args[3] != 0x80800 {
		t.Fatalf("got %+v %v", s, ok)
	}
	for _, line := range []string{"running", "-1 0x7ffd 0x7f12"} {
		if _, ok := parseSyscall(line); ok {
			t.Errorf("%q parsed as a syscall", line)
		}
	}
}
