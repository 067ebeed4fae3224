package worker

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv switches the test binary, re-executed as a child, into the
// activated worker of TestListenersInChild.
const helperEnv = "BATON_WORKER_TEST_HELPER"

// TestListenersInChild passes two real listening sockets to a child process as
// fds 3 and 4, the way baton does, and checks that the child serves on each
// under the right name.
func TestListenersInChild(t *testing.T) {
	web, admin := listenTCP(t), listenTCP(t)

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperActivatedWorker$", "-test.v")
	// Only one name for two fds: the second must come out as "unknown".
	cmd.Env = append(os.Environ(), helperEnv+"=1", "LISTEN_FDS=2", "LISTEN_FDNAMES=web")
	cmd.ExtraFiles = []*os.File{dupFile(t, web), dupFile(t, admin)}
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill() // no-op error once it has exited
		<-exited
	})
	// The child holds its own copies now.
	for _, f := range cmd.ExtraFiles {
		f.Close()
	}

	for _, tc := range []struct {
		l    net.Listener
		want string
	}{{web, "web"}, {admin, "unknown"}} {
		if got := askName(t, tc.l.Addr().String()); got != tc.want {
			t.Errorf("listener %s answered %q, want %q", tc.l.Addr(), got, tc.want)
		}
	}

	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil || !strings.Contains(output.String(), "--- PASS: TestHelperActivatedWorker") {
			t.Fatalf("child failed: %v\n%s", err, output.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("child did not exit\n%s", output.String())
	}
}

// TestHelperActivatedWorker is not a test: it is the child process of
// TestListenersInChild.
func TestHelperActivatedWorker(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process for TestListenersInChild")
	}
	// What baton's exec shim does: only the child can know its own pid.
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))

	byName, err := Listeners()
	if err != nil {
		t.Fatal(err)
	}
	if len(byName) != 2 || len(byName["web"]) != 1 || len(byName["unknown"]) != 1 {
		t.Fatalf("Listeners() = %v, want one \"web\" and one \"unknown\"", byName)
	}
	for _, name := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if value, set := os.LookupEnv(name); set {
			t.Errorf("%s=%q is still set after Listeners()", name, value)
		}
	}
	list, err := ListenerList()
	if err != nil {
		t.Fatal(err)
	}
	want := []net.Listener{byName["web"][0], byName["unknown"][0]}
	if !slices.Equal(list, want) {
		t.Fatalf("ListenerList() = %v, want the same listeners as Listeners() in fd order %v", list, want)
	}
	again, err := Listeners()
	if err != nil || again["web"][0] != byName["web"][0] {
		t.Fatalf("second Listeners() = %v, %v; want the cached listeners", again, err)
	}

	names := []string{"web", "unknown"}
	for i, l := range list {
		if !closeOnExec(t, l) {
			t.Errorf("listener %s would leak into programs this worker starts", names[i])
		}
		answerName(t, l, names[i])
	}
}

// TestListenersNotForThisProcess: sockets announced for another pid are not ours.
func TestListenersNotForThisProcess(t *testing.T) {
	t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()+1))
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_FDNAMES", "web")

	list, err := listenersFromEnv()
	if err != nil || len(list) != 0 {
		t.Fatalf("listenersFromEnv() = %v, %v; want none and no error", list, err)
	}
	if os.Getenv("LISTEN_FDS") != "1" {
		t.Error("LISTEN_FDS was unset although the sockets are another process's")
	}
}

func TestParseActivation(t *testing.T) {
	const pid = 4242
	for _, tc := range []struct {
		listenPID, listenFDs, fdNames string
		ours                          bool
		count                         int
		names                         []string
		wantErr                       bool
	}{
		{listenPID: "", listenFDs: "2"},
		{listenPID: "4243", listenFDs: "2"},
		{listenPID: "4242", listenFDs: "", ours: true},
		{listenPID: "4242", listenFDs: "2", fdNames: "a:b", ours: true, count: 2, names: []string{"a", "b"}},
		{listenPID: "4242", listenFDs: "1", ours: true, count: 1},
		{listenPID: "x", listenFDs: "1", wantErr: true},
		{listenPID: "-1", listenFDs: "1", wantErr: true},
		{listenPID: "4242", listenFDs: "two", wantErr: true},
		{listenPID: "4242", listenFDs: "-1", wantErr: true},
	} {
		ours, count, names, err := parseActivation(pid, tc.listenPID, tc.listenFDs, tc.fdNames)
		if ours != tc.ours || count != tc.count || !slices.Equal(names, tc.names) || (err != nil) != tc.wantErr {
			t.Errorf("parseActivation(%d, %q, %q, %q) = %v, %d, %q, %v; want %v, %d, %q, error %v",
				pid, tc.listenPID, tc.listenFDs, tc.fdNames, ours, count, names, err,
				tc.ours, tc.count, tc.names, tc.wantErr)
		}
	}
}

func TestNameAt(t *testing.T) {
	names := []string{"web", "", "admin"}
	for i, want := range []string{"web", "unknown", "admin", "unknown"} {
		if got := nameAt(names, i); got != want {
			t.Errorf("nameAt(%q, %d) = %q, want %q", names, i, got, want)
		}
	}
}

func listenTCP(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// dupFile returns a duplicate of the listener's descriptor for cmd.ExtraFiles.
// Unlike (*net.TCPListener).File, handing it to exec does not switch the
// shared socket to blocking mode (golang/go#43894).
func dupFile(t *testing.T, l net.Listener) *os.File {
	t.Helper()
	raw, err := l.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	dup, dupErr := -1, error(nil)
	if err := raw.Control(func(fd uintptr) {
		syscall.ForkLock.RLock()
		defer syscall.ForkLock.RUnlock()
		if dup, dupErr = syscall.Dup(int(fd)); dupErr == nil {
			syscall.CloseOnExec(dup)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if dupErr != nil {
		t.Fatal(dupErr)
	}
	return os.NewFile(uintptr(dup), "listener")
}

// askName connects to addr and returns the line the worker answers.
func askName(t *testing.T, addr string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("reading from %s: %v", addr, err)
	}
	return strings.TrimSuffix(line, "\n")
}

// answerName accepts one connection on l and writes name to it.
func answerName(t *testing.T, l net.Listener, name string) {
	t.Helper()
	l.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
	conn, err := l.Accept()
	if err != nil {
		t.Fatalf("accept on %s: %v", name, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(name + "\n")); err != nil {
		t.Fatalf("write on %s: %v", name, err)
	}
}

// closeOnExec reports whether the listener's descriptor has FD_CLOEXEC.
func closeOnExec(t *testing.T, l net.Listener) bool {
	t.Helper()
	raw, err := l.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags uintptr
	var errno syscall.Errno
	if err := raw.Control(func(fd uintptr) {
		flags, _, errno = syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFD, 0)
	}); err != nil {
		t.Fatal(err)
	}
	if errno != 0 {
		t.Fatal(errno)
	}
	return flags&syscall.FD_CLOEXEC != 0
}
