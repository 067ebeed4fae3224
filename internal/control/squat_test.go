package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Tests of a control socket path taken by another user first: the client
// must not believe a server of another user, and Listen must neither use
// nor remove another user's file. The other users are real: helper
// processes (this test binary run again) as daemon (the squatter) and
// nobody (the victim).

const daemon = 1 // the squatter's uid and gid

const (
	// helperServeEnv makes TestHelperServer serve a control socket at the
	// path it names, answering every reload with "generation 99".
	helperServeEnv = "BATON_CONTROL_TEST_HELPER_SERVE"
	// helperListenFDEnv makes TestHelperServer listen on the bound socket
	// it inherits as fd 3 instead.
	helperListenFDEnv = "BATON_CONTROL_TEST_HELPER_LISTEN_FD"
)

// TestHelperServer is not a test: run as another user by the tests below,
// it serves until its stdin closes, then prints the handler's calls.
func TestHelperServer(t *testing.T) {
	path, fd := os.Getenv(helperServeEnv), os.Getenv(helperListenFDEnv)
	switch {
	case fd != "":
		if err := unix.Listen(3, 8); err != nil {
			fmt.Printf("LISTEN %v\n", err)
			os.Exit(2)
		}
		fmt.Println("LISTENING")
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	case path == "":
		return
	}
	h := &fakeHandler{result: ReloadResult{OK: true, Generation: 99}, status: Status{Pid: os.Getpid(), Generation: 99}}
	opts := testOptions()
	opts.socketMode = 0o666 // so that the victim's connect succeeds: a squatter makes it easy
	srv, err := listen(path, h, nil, opts)
	if err != nil {
		fmt.Printf("LISTEN %v\n", err)
		os.Exit(2)
	}
	go srv.Serve()
	fmt.Println("LISTENING")
	io.Copy(io.Discard, os.Stdin)
	srv.Close()
	fmt.Printf("CALLS %s\n", strings.Join(h.Calls(), ","))
	os.Exit(0)
}

// helperServer is a TestHelperServer process running as uid.
type helperServer struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// startHelperServer runs TestHelperServer as uid (its gid the same) with
// env, and waits until it listens.
func startHelperServer(t *testing.T, helper string, uid int, env []string, extra ...*os.File) *helperServer {
	t.Helper()
	cmd := exec.Command(helper, "-test.run=^TestHelperServer$", "-test.count=1")
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = filepath.Dir(helper)
	cmd.ExtraFiles = extra
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)},
		Pdeathsig:  syscall.SIGKILL,
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helperServer{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() {
		h.stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	started := make(chan string, 1)
	go func() {
		line, _ := h.out.ReadString('\n')
		started <- line
	}()
	select {
	case line := <-started:
		if line != "LISTENING\n" {
			t.Fatalf("the helper server as uid %d did not start: %q", uid, line)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the helper server as uid %d did not start within 30s", uid)
	}
	return h
}

// stop ends the helper server and returns the handler calls it had.
func (h *helperServer) stop(t *testing.T) string {
	t.Helper()
	h.stdin.Close()
	rest, _ := io.ReadAll(h.out)
	h.cmd.Wait()
	calls, ok := strings.CutPrefix(strings.TrimSpace(string(rest)), "CALLS")
	if !ok {
		t.Fatalf("the helper server's last words: %q", rest)
	}
	return strings.TrimSpace(calls)
}

// sharedTmp is a directory like /tmp: sticky and writable by everyone.
func sharedTmp(t *testing.T) string {
	t.Helper()
	dir := dirOthersCanEnter(t)
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	return dir
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Fatalf("this test runs helpers as uid %d (daemon) and %d (nobody), and only root can start them: "+
			"run the tests as root (running as uid %d)", daemon, nobody, os.Getuid())
	}
}

// A squatter (daemon) serves a control socket where the victim looks for
// its master. Neither root nor nobody believes it: Dial refuses before a
// request is sent, saying who serves the socket.
func TestClientRefusesAServerOfAnotherUser(t *testing.T) {
	requireRoot(t)
	tmp := sharedTmp(t)
	helper := copyTestBinary(t, tmp)
	path := filepath.Join(tmp, "baton.sock")
	squatter := startHelperServer(t, helper, daemon, []string{helperServeEnv + "=" + path})

	// As root.
	_, err := Dial(path)
	var untrusted *UntrustedServerError
	if !errors.As(err, &untrusted) || untrusted.Server != daemon || untrusted.Self != 0 || untrusted.Pid != squatter.cmd.Process.Pid {
		t.Fatalf("root's Dial of daemon's socket: %v, want an *UntrustedServerError naming uid 1 and pid %d", err, squatter.cmd.Process.Pid)
	}
	want := "the control socket " + path + " is served by uid 1 (daemon), not by you (root): refusing to talk to it"
	if err.Error() != want {
		t.Errorf("root's Dial: %q\nwant: %q", err, want)
	}

	// As nobody.
	out, code := runHelperClient(t, helper, nobody, path)
	want = "DIAL the control socket " + path + " is served by uid 1 (daemon), not by you (uid 65534) or root: refusing to talk to it\n"
	if code != 2 || !strings.Contains(out, want) {
		t.Errorf("nobody's Dial of daemon's socket: exit %d, output:\n%s\nwant: %s", code, out, want)
	}

	// The squatter got no request: root's and nobody's Dial sent none,
	// and its own server refused nobody's raw connection.
	if calls := squatter.stop(t); calls != "" {
		t.Errorf("the squatter's handler was called: %s", calls)
	}
}

// The same client believes a server of its own uid (and root, which
// TestPeerOfAnotherUserIsRefused shows).
func TestClientTrustsItsOwnUID(t *testing.T) {
	requireRoot(t)
	tmp := sharedTmp(t)
	helper := copyTestBinary(t, tmp)
	path := filepath.Join(tmp, "baton.sock")
	srv := startHelperServer(t, helper, nobody, []string{helperServeEnv + "=" + path})
	out, code := runHelperClient(t, helper, nobody, path)
	if code != 0 || !strings.Contains(out, "CLIENT <nil>\n") {
		t.Errorf("nobody's client of nobody's server: exit %d, output:\n%s", code, out)
	}
	if calls := srv.stop(t); calls != "Status,Status" {
		t.Errorf("calls %q, want the raw and the client's status", calls)
	}
}

// runHelperClient runs TestHelperClient as uid against path.
func runHelperClient(t *testing.T, helper string, uid int, path string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, helper, "-test.run=^TestHelperClient$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperSocketEnv+"="+path)
	cmd.Dir = filepath.Dir(helper)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("helper client: %v\n%s", err, out)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// Another user's file at the control socket path is never used and never
// removed, whatever it is, even by root: Listen says whose it is, with an
// error a master can tell from the others.
func TestListenLeavesAnotherUsersFile(t *testing.T) {
	requireRoot(t)
	tmp := sharedTmp(t)
	helper := copyTestBinary(t, tmp)

	stale := filepath.Join(tmp, "stale.sock")
	makeStaleSocket(t, stale)
	if err := os.Lchown(stale, daemon, daemon); err != nil {
		t.Fatal(err)
	}
	regular := filepath.Join(tmp, "regular")
	if err := os.WriteFile(regular, []byte("daemon's"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(regular, daemon, daemon); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(tmp, "live.sock")
	squatter := startHelperServer(t, helper, daemon, []string{helperServeEnv + "=" + live})

	for path, kind := range map[string]string{stale: "socket", regular: "regular file", live: "live socket"} {
		before, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = listen(path, &fakeHandler{}, nil, testOptions())
		want := fmt.Sprintf("the control socket path %s is taken by a %s that belongs to uid 1 (daemon), not to baton's user (uid 0): "+
			"baton will neither use nor remove another user's file", path, kind)
		var foreign *ForeignOwnerError
		if !errors.Is(err, ErrTakenByAnotherUser) || !errors.As(err, &foreign) || foreign.UID != daemon || foreign.Dir {
			t.Errorf("listen at daemon's %s: %v, want a *ForeignOwnerError matching ErrTakenByAnotherUser", kind, err)
		} else if !strings.HasPrefix(err.Error(), want) {
			t.Errorf("listen at daemon's %s: %q\nwant it to start with %q", kind, err, want)
		}
		if after, err := os.Lstat(path); err != nil || !os.SameFile(before, after) {
			t.Errorf("daemon's %s at %s was removed or replaced: %v", kind, path, err)
		}
	}
	if calls := squatter.stop(t); calls != "" {
		t.Errorf("the squatter's handler was called: %s", calls)
	}
}

// A socket file of our own, served by another user (bound by us, then
// listened on by them), is theirs too: Listen goes by who answers.
func TestListenRefusesOurFileServedByAnotherUser(t *testing.T) {
	requireRoot(t)
	tmp := sharedTmp(t)
	helper := copyTestBinary(t, tmp)
	path := filepath.Join(tmp, "ctl.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	bound := os.NewFile(uintptr(fd), path)
	defer bound.Close()
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	startHelperServer(t, helper, daemon, []string{helperListenFDEnv + "=1"}, bound)

	_, err = listen(path, &fakeHandler{}, nil, testOptions())
	if !errors.Is(err, ErrTakenByAnotherUser) || !strings.Contains(err.Error(), "taken by a live socket that belongs to uid 1 (daemon)") {
		t.Fatalf("listen at our socket file served by daemon: %v, want ErrTakenByAnotherUser", err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the socket file was removed: %v", err)
	}
}
