package control

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestDefaultPath(t *testing.T) {
	if got := DefaultPath("/run/app/baton.pid"); got != "/run/app/baton.sock" {
		t.Errorf("beside the pidfile: %q", got)
	}
	if got := DefaultPath("/run/app/master"); got != "/run/app/master.sock" {
		t.Errorf("pidfile without extension: %q", got)
	}
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	if got := DefaultPath(""); got != "/run/user/1000/baton.sock" {
		t.Errorf("XDG_RUNTIME_DIR: %q", got)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("TMPDIR", "/var/tmp")
	want := "/run/baton/baton.sock"
	if os.Getuid() != 0 {
		want = fmt.Sprintf("/var/tmp/baton-%d/baton.sock", os.Getuid())
	}
	if got := DefaultPath(""); got != want {
		t.Errorf("no pidfile, no XDG_RUNTIME_DIR: %q, want %q", got, want)
	}
	// Never the shared temp dir itself.
	if got := privateDir(65534); got != "/var/tmp/baton-65534" {
		t.Errorf("private dir of uid 65534: %q", got)
	}
	if got := privateDir(0); got != "/run/baton" {
		t.Errorf("private dir of root: %q", got)
	}
}

// withPrivateDir points the default control socket's private directory
// into a temp dir for the test, and returns it (not yet created).
func withPrivateDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "baton-private")
	old := privateDir
	privateDir = func(int) string { return dir }
	t.Cleanup(func() { privateDir = old })
	t.Setenv("XDG_RUNTIME_DIR", "")
	return dir
}

// Listen on the default path creates the private directory, mode 0700
// whatever the umask, and the client finds the master there.
func TestListenCreatesThePrivateDirectory(t *testing.T) {
	dir := withPrivateDir(t)
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	path := DefaultPath("")
	if path != filepath.Join(dir, "baton.sock") {
		t.Fatalf("DefaultPath = %s, want it in %s", path, dir)
	}
	ts := startServerAt(t, path, &fakeHandler{})
	var st syscall.Stat_t
	if err := syscall.Lstat(dir, &st); err != nil {
		t.Fatal(err)
	}
	want := uint32(0o700)
	if os.Getuid() == 0 {
		want = 0o711 // root's notify sockets of non-root workers live below it
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR || st.Mode&0o7777 != want || int(st.Uid) != os.Getuid() {
		t.Fatalf("private dir mode %#o, uid %d; want a directory, %#o, uid %d", st.Mode, st.Uid, want, os.Getuid())
	}
	assertStillServes(t, ts.path)

	// A second start finds it in place, and the first master's socket.
	if err := ts.Close(); err != nil {
		t.Fatal(err)
	}
	startServerAt(t, path, &fakeHandler{})
}

// The private directory is checked, never repaired or followed: each case
// is refused with the error that says why, and left as it was.
func TestPrivateDirectoryRefusals(t *testing.T) {
	const nobody, daemon = 65534, 1
	if os.Getuid() != 0 {
		t.Fatalf("this test gives directories to other users (uid %d, %d) and only root can: run the tests as root", nobody, daemon)
	}
	good := t.TempDir() // mode 0700, root's: a symlink's target
	cases := []struct {
		name  string
		uid   int // whose directory it is meant to be
		make  func(t *testing.T, dir string)
		want  error
		words []string
	}{
		{"another user's directory", nobody, func(t *testing.T, dir string) {
			mkdirOwned(t, dir, 0o700, daemon)
		}, ErrTakenByAnotherUser, []string{"is a directory that belongs to uid 1 (daemon), not to baton's user (uid 65534)"}},
		{"another user's symlink to ours", nobody, func(t *testing.T, dir string) {
			mkdirOwned(t, good+"/n", 0o700, nobody)
			symlinkOwned(t, good+"/n", dir, daemon)
		}, ErrTakenByAnotherUser, []string{"is a symbolic link that belongs to uid 1 (daemon)"}},
		{"our own symlink", nobody, func(t *testing.T, dir string) {
			mkdirOwned(t, good+"/m", 0o700, nobody)
			symlinkOwned(t, good+"/m", dir, nobody)
		}, ErrUnsafeDirectory, []string{"is a symbolic link, not a directory"}},
		{"our own, mode 0755", nobody, func(t *testing.T, dir string) {
			mkdirOwned(t, dir, 0o755, nobody)
		}, ErrUnsafeDirectory, []string{"has mode 0755, not 0700"}},
		{"our own, mode 1777", nobody, func(t *testing.T, dir string) {
			mkdirOwned(t, dir, 0o1777, nobody)
		}, ErrUnsafeDirectory, []string{"has mode 01777, not 0700"}},
		{"our own regular file", nobody, func(t *testing.T, dir string) {
			if err := os.WriteFile(dir, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chown(dir, nobody, nobody)
		}, ErrUnsafeDirectory, []string{"is a regular file, not a directory"}},
		{"root's, writable by others", 0, func(t *testing.T, dir string) {
			mkdirOwned(t, dir, 0o777, 0)
		}, ErrUnsafeDirectory, []string{"has mode 0777: others may write to it"}},
		{"root's, another user's", 0, func(t *testing.T, dir string) {
			mkdirOwned(t, dir, 0o700, nobody)
		}, ErrTakenByAnotherUser, []string{"belongs to uid 65534 (nobody), not to baton's user (uid 0)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "baton-x")
			c.make(t, dir)
			var before syscall.Stat_t
			if err := syscall.Lstat(dir, &before); err != nil {
				t.Fatal(err)
			}
			err := ensurePrivateDir(dir, c.uid)
			if !errors.Is(err, c.want) {
				t.Fatalf("ensurePrivateDir = %v, want an error matching %v", err, c.want)
			}
			for _, w := range append(c.words, dir) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			var after syscall.Stat_t
			if err := syscall.Lstat(dir, &after); err != nil || after.Ino != before.Ino || after.Mode != before.Mode || after.Uid != before.Uid {
				t.Errorf("%s was changed: mode %#o uid %d, was %#o uid %d (%v)", dir, after.Mode, after.Uid, before.Mode, before.Uid, err)
			}
		})
	}
	// Root's own /run/baton may let others traverse it, not write to it.
	for _, mode := range []uint32{0o700, 0o711, 0o755} {
		dir := filepath.Join(t.TempDir(), "baton-root")
		mkdirOwned(t, dir, mode, 0)
		if err := ensurePrivateDir(dir, 0); err != nil {
			t.Errorf("root's directory, mode %#o: %v", mode, err)
		}
	}
}

// Listen on the default path refuses a private directory that is not ours,
// and the master never gets as far as the socket.
func TestListenRefusesAnotherUsersPrivateDirectory(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatalf("this test gives a directory to another user and only root can: run the tests as root")
	}
	dir := withPrivateDir(t)
	mkdirOwned(t, dir, 0o777, 1)
	_, err := listen(DefaultPath(""), &fakeHandler{}, nil, testOptions())
	var foreign *ForeignOwnerError
	if !errors.Is(err, ErrTakenByAnotherUser) || !errors.As(err, &foreign) || foreign.UID != 1 || !foreign.Dir {
		t.Fatalf("listen in another user's private dir: %v, want a *ForeignOwnerError for the directory", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "baton.sock")); !os.IsNotExist(err) {
		t.Fatalf("a socket was made in another user's directory: %v", err)
	}
}

func mkdirOwned(t *testing.T, dir string, mode uint32, uid int) {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
	// After the chown, which clears setuid and setgid.
	if err := syscall.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
}

func symlinkOwned(t *testing.T, target, link string, uid int) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, uid, uid); err != nil {
		t.Fatal(err)
	}
}
