package control

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperSocketEnv, when set, makes TestHelperClient act as a client of the
// control socket it names, for TestPeerOfAnotherUserIsRefused.
const helperSocketEnv = "BATON_CONTROL_TEST_HELPER_SOCKET"

// nobody is the uid and gid the helper client runs as.
const nobody = 65534

func TestPeerOfAnotherUserIsRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatalf("this test runs a client as uid %d (nobody) to check the peer-credential refusal, "+
			"and only root can start one: run the tests as root (running as uid %d)", nobody, os.Getuid())
	}
	h := &fakeHandler{}
	dir := dirOthersCanEnter(t)
	// Mode 0666 so that the other user's connect succeeds, and it is the
	// credential check that refuses.
	ts := startServerAt(t, filepath.Join(dir, "ctl.sock"), h, func(o *options) { o.socketMode = 0o666 })
	helper := copyTestBinary(t, dir)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, helper, "-test.run=^TestHelperClient$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperSocketEnv+"="+ts.path)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helper client: %v\n%s", err, out)
	}

	want := fmt.Sprintf("permission denied: uid %d is not the master's uid %d or root", nobody, os.Getuid())
	wantRaw := `{"v":1,"type":"error","error":"` + want + `"}`
	if !strings.Contains(string(out), "RAW "+wantRaw+"\n") {
		t.Errorf("the raw refusal line is not %s; helper output:\n%s", wantRaw, out)
	}
	if !strings.Contains(string(out), "CLIENT "+want+"\n") {
		t.Errorf("the client's error is not %q; helper output:\n%s", want, out)
	}
	if calls := h.Calls(); len(calls) != 0 {
		t.Errorf("the handler was called for another user: %v", calls)
	}
	logs := ts.logs.String()
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, fmt.Sprintf("uid=%d pid=", nobody)) {
		t.Errorf("no Warn log with the refused uid and pid; log:\n%s", logs)
	}
	assertStillServes(t, ts.path)
}

// TestHelperClient is not a test: run by TestPeerOfAnotherUserIsRefused as
// another user, it asks for status twice, once with a raw connection and
// once with the Client, and prints what it got.
func TestHelperClient(t *testing.T) {
	path := os.Getenv(helperSocketEnv)
	if path == "" {
		return
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		fmt.Printf("DIAL %v\n", err)
		os.Exit(2)
	}
	conn.Write([]byte(`{"v":1,"cmd":"status"}` + "\n"))
	line, _ := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	fmt.Printf("RAW %s", line)

	c, err := Dial(path)
	if err != nil {
		fmt.Printf("DIAL %v\n", err)
		os.Exit(2)
	}
	defer c.Close()
	_, err = c.Call(context.Background(), Request{Cmd: CmdStatus}, nil)
	fmt.Printf("CLIENT %v\n", err)
	os.Exit(0)
}

// dirOthersCanEnter is a temp dir that other users can reach: t.TempDir
// and the directory it is made in are private to us.
func dirOthersCanEnter(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// copyTestBinary copies the running test binary into dir, where another
// user can execute it (go test builds it in a private directory).
func copyTestBinary(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(dir, "helper.test")
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}
