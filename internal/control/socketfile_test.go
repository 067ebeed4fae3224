package control

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSocketFileIsMode0600(t *testing.T) {
	// Whatever the umask says: a permissive one must not widen the mode.
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	ts := startServerAt(t, filepath.Join(t.TempDir(), "ctl.sock"), &fakeHandler{}, func(o *options) { *o = defaultOptions() })
	fi, err := os.Lstat(ts.path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("%s is %v, want a socket", ts.path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Fatalf("socket mode = %#o, want 0600", perm)
	}
}

func TestStaleSocketIsReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ctl.sock")
	makeStaleSocket(t, path)

	ts := startServerAt(t, path, &fakeHandler{})
	assertStillServes(t, ts.path)
}

func TestLiveSocketIsRefused(t *testing.T) {
	first := startServer(t, &fakeHandler{})
	_, err := listen(first.path, &fakeHandler{}, nil, testOptions())
	want := "control socket " + first.path + " is in use by another process (a running baton master?)"
	if err == nil || err.Error() != want {
		t.Fatalf("second listen: %v\nwant: %s", err, want)
	}
	assertStillServes(t, first.path)
}

func TestNonSocketAtPathIsRefusedAndUntouched(t *testing.T) {
	dir := t.TempDir()
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(regular, link); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		regular: "regular file",
		dir:     "directory",
		link:    "symbolic link",
	} {
		_, err := listen(name, &fakeHandler{}, nil, testOptions())
		if err == nil || !strings.Contains(err.Error(), "is not a socket") || !strings.Contains(err.Error(), want) {
			t.Errorf("listen at a %s: %v, want a not-a-socket error", want, err)
		}
	}
	if data, err := os.ReadFile(regular); err != nil || string(data) != "precious" {
		t.Fatalf("the regular file was touched: %q, %v", data, err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != fs.ModeSymlink {
		t.Fatalf("the symlink was touched: %v, %v", fi, err)
	}
}

func TestPathTooLong(t *testing.T) {
	path := "/tmp/" + strings.Repeat("x", 103) // 108 bytes
	_, err := listen(path, &fakeHandler{}, nil, testOptions())
	if err == nil || !strings.Contains(err.Error(), "108 bytes long") || !strings.Contains(err.Error(), "at most 107") {
		t.Fatalf("listen: %v, want a path length error", err)
	}
	if _, err := Dial(path); err == nil || !strings.Contains(err.Error(), "at most 107") {
		t.Fatalf("Dial: %v, want a path length error", err)
	}
}

func TestPathStartingWithAtIsAFile(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	ts := startServerAt(t, "@ctl", &fakeHandler{})
	if _, err := os.Lstat(filepath.Join(dir, "@ctl")); err != nil {
		t.Fatalf("no socket file: %v", err)
	}
	assertStillServes(t, ts.path)
}

func TestCloseRemovesTheSocketFile(t *testing.T) {
	ts := startServer(t, &fakeHandler{})
	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(ts.path); !os.IsNotExist(err) {
		t.Fatalf("socket file still there after Close: %v", err)
	}
	if err := ts.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// A server's Close must not remove a socket file that another server put
// at the same path since.
func TestCloseLeavesAnotherServersFile(t *testing.T) {
	first := startServer(t, &fakeHandler{})
	if err := os.Remove(first.path); err != nil {
		t.Fatal(err)
	}
	second := startServerAt(t, first.path, &fakeHandler{})
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(second.path); err != nil {
		t.Fatalf("the first server's Close removed the second's socket: %v", err)
	}
	assertStillServes(t, second.path)
}

// makeStaleSocket leaves a socket file that nothing listens on, as a
// master killed with SIGKILL would.
func makeStaleSocket(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
}
