package sdnotify

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-pm/baton/internal/procinfo"
	"golang.org/x/sys/unix"

	"github.com/baton-pm/baton/internal/pidns"
)

// The users the tests run senders as (root only).
var (
	nobody     = &Owner{Uid: 65534, Gid: 65534}
	daemonUser = &Owner{Uid: 1, Gid: 1}
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test changes file owners and runs processes as nobody and daemon: it needs root")
	}
}

// stat is path's lstat.
func stat(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func checkNode(t *testing.T, path string, kind uint32, uid uint32, perm uint32) {
	t.Helper()
	st := stat(t, path)
	if st.Mode&unix.S_IFMT != kind || st.Uid != uid || st.Mode&0o7777 != perm {
		t.Errorf("%s: mode %o uid %d; want type %o, mode %04o, uid %d", path, st.Mode, st.Uid, kind, perm, uid)
	}
}

func gone(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("%s is still there (%v)", path, err)
	}
}

// The directory is private, its sockets too, and both go away.
func TestDirLayout(t *testing.T) {
	base := t.TempDir()
	t.Setenv("RUNTIME_DIRECTORY", base+":/elsewhere") // systemd's list of several
	d, err := NewDir()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := filepath.Join(base, "baton-"+strconv.Itoa(os.Getpid()))
	if d.Path() != want {
		t.Fatalf("dir %s, want %s", d.Path(), want)
	}
	euid := uint32(os.Geteuid())
	checkNode(t, d.Path(), unix.S_IFDIR, euid, 0o700)
	s1, err := d.Listen(nil)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := d.Listen(&Owner{Uid: euid, Gid: uint32(os.Getegid())}) // baton's own user
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Socket{s1, s2} {
		if filepath.Dir(s.Addr()) != d.Path() || len(s.Addr()) > maxPath {
			t.Errorf("socket %s: want a path of at most %d bytes in %s", s.Addr(), maxPath, d.Path())
		}
		checkNode(t, s.Addr(), unix.S_IFSOCK, euid, 0o600)
	}
	if s1.Addr() == s2.Addr() {
		t.Fatalf("two sockets at %s", s1.Addr())
	}
	checkNode(t, d.Path(), unix.S_IFDIR, euid, 0o700) // still private
	s1.Close()
	gone(t, s1.Addr())
	s1.Close() // twice is fine
	d.Close()
	gone(t, d.Path())
	gone(t, s2.Addr())
	if _, err := d.Listen(nil); err == nil {
		t.Error("Listen after Close succeeded")
	}
}

// Bases that someone else could tamper with, or that are too long for a
// socket path, are passed over for the next candidate.
func TestDirSkipsUnsafeBases(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	long := t.TempDir()
	for len(long) < maxPath-nameLen-len("/baton-"+pid) {
		long = filepath.Join(long, "a-long-directory-name")
	}
	cases := []struct {
		name string
		root bool
		base func(t *testing.T) string
	}{
		{"relative", false, func(t *testing.T) string { return "run" }},
		{"missing", false, func(t *testing.T) string { return filepath.Join(t.TempDir(), "missing") }},
		{"symlink", false, func(t *testing.T) string {
			link := filepath.Join(t.TempDir(), "link")
			if err := os.Symlink(t.TempDir(), link); err != nil {
				t.Fatal(err)
			}
			return link
		}},
		{"a file", false, func(t *testing.T) string {
			f := filepath.Join(t.TempDir(), "file")
			os.WriteFile(f, nil, 0o600)
			return f
		}},
		{"world-writable", false, func(t *testing.T) string {
			dir := t.TempDir()
			os.Chmod(dir, 0o777)
			return dir
		}},
		{"too long", false, func(t *testing.T) string {
			if err := os.MkdirAll(long, 0o700); err != nil {
				t.Fatal(err)
			}
			return long
		}},
		{"another user's", true, func(t *testing.T) string {
			dir := t.TempDir()
			os.Chown(dir, 65534, 65534)
			return dir
		}},
		{"another user's stale directory of this pid", true, func(t *testing.T) string {
			dir := t.TempDir()
			stale := filepath.Join(dir, "baton-"+pid)
			os.Mkdir(stale, 0o700)
			os.Chown(stale, 65534, 65534)
			return dir
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.root {
				needRoot(t)
			}
			// Short: the test's own temp dir may be too long a base.
			xdg, err := os.MkdirTemp("", "xdg-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(xdg)
			t.Setenv("RUNTIME_DIRECTORY", c.base(t))
			t.Setenv("XDG_RUNTIME_DIR", xdg)
			d, err := NewDir()
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if want := filepath.Join(xdg, "baton-"+pid); d.Path() != want {
				t.Errorf("dir %s, want the next candidate, %s", d.Path(), want)
			}
		})
	}
}

// A directory of a previous master with this pid, ours, is replaced.
func TestDirReplacesOwnStaleDirectory(t *testing.T) {
	base := t.TempDir()
	stale := filepath.Join(base, "baton-"+strconv.Itoa(os.Getpid()))
	if err := os.Mkdir(stale, 0o711); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(stale, "0123456789abcdef"), nil, 0o600)
	t.Setenv("RUNTIME_DIRECTORY", base)
	d, err := NewDir()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Path() != stale {
		t.Fatalf("dir %s, want %s", d.Path(), stale)
	}
	checkNode(t, stale, unix.S_IFDIR, uint32(os.Geteuid()), 0o700)
	gone(t, filepath.Join(stale, "0123456789abcdef"))
}

// Without a runtime directory: /run/baton/<pid> for root, else a private
// temporary directory.
func TestDirWithoutRuntimeDirectory(t *testing.T) {
	t.Setenv("RUNTIME_DIRECTORY", "")
	t.Setenv("XDG_RUNTIME_DIR", "")
	d, err := NewDir()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if os.Geteuid() == 0 {
		if want := "/run/baton/" + strconv.Itoa(os.Getpid()); d.Path() != want {
			t.Errorf("dir %s, want %s", d.Path(), want)
		}
		if st := stat(t, "/run/baton"); st.Uid != 0 || st.Mode&0o022 != 0 {
			t.Errorf("/run/baton: uid %d, mode %04o; want root's, writable by no one else", st.Uid, st.Mode&0o7777)
		}
	} else if !strings.HasPrefix(d.Path(), os.TempDir()+"/baton-notify-") {
		t.Errorf("dir %s, want a temporary directory", d.Path())
	}
	checkNode(t, d.Path(), unix.S_IFDIR, uint32(os.Geteuid()), 0o700)
	d.Close()
	gone(t, d.Path())
}

// notifyAs runs systemd-notify as owner to socket and reports its error.
func notifyAs(t *testing.T, owner *Owner, socket string, args ...string) error {
	t.Helper()
	cmd := exec.Command(systemdNotify(t), args...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: owner.Uid, Gid: owner.Gid}}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// A worker that runs as another user gets a socket of its own user, in a
// directory it can enter but not list; another user cannot connect.
func TestDirForAnotherUser(t *testing.T) {
	needRoot(t)
	t.Run("reachable runtime directory", func(t *testing.T) {
		// /run/baton-like: 0755 all the way down.
		base, err := os.MkdirTemp("", "baton-sdnotify-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(base)
		os.Chmod(base, 0o755)
		t.Setenv("RUNTIME_DIRECTORY", base)
		d, err := NewDir()
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		s := checkForeignSocket(t, d)
		if filepath.Dir(s) != d.Path() {
			t.Errorf("socket %s, want it in %s", s, d.Path())
		}
		checkNode(t, d.Path(), unix.S_IFDIR, 0, 0o711)
	})
	t.Run("runtime directory out of reach", func(t *testing.T) {
		// /run/user/0-like: the base is 0700.
		t.Setenv("RUNTIME_DIRECTORY", t.TempDir())
		d, err := NewDir()
		if err != nil {
			t.Fatal(err)
		}
		s := checkForeignSocket(t, d)
		if filepath.Dir(s) == d.Path() {
			t.Fatalf("socket %s in %s, which nobody cannot reach", s, d.Path())
		}
		checkNode(t, d.Path(), unix.S_IFDIR, 0, 0o700)
		checkNode(t, filepath.Dir(s), unix.S_IFDIR, 0, 0o711)
		if !pidns.Ours(filepath.Dir(s)) {
			t.Errorf("%s is not marked with this pid namespace: a later master's sweep would leave it if this one were killed", filepath.Dir(s))
		}
		d.Close()
		gone(t, filepath.Dir(s))
		gone(t, d.Path())
	})
}

// checkForeignSocket opens a socket for nobody in d and checks who can
// send to it: nobody can, daemon cannot. It returns the socket's path.
func checkForeignSocket(t *testing.T, d *Dir) string {
	t.Helper()
	s, err := d.Listen(nobody)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkNode(t, s.Addr(), unix.S_IFSOCK, nobody.Uid, 0o600)
	got := startReceiving(t, s)
	if err := notifyAs(t, nobody, s.Addr(), "--ready"); err != nil {
		t.Fatalf("systemd-notify as nobody: %v", err)
	}
	if m := receiveOne(t, got); !m.Ready() || m.Uid != nobody.Uid {
		t.Errorf("message %+v, want READY=1 from uid %d", m, nobody.Uid)
	}
	err = notifyAs(t, daemonUser, s.Addr(), "--ready")
	if err == nil || !strings.Contains(err.Error(), "ermission denied") {
		t.Errorf("systemd-notify as daemon: %v; want permission denied", err)
	}
	// Nor can daemon list the directory.
	cmd := exec.Command("ls", filepath.Dir(s.Addr()))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: daemonUser.Uid, Gid: daemonUser.Gid}}
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("daemon listed %s: %s", filepath.Dir(s.Addr()), out)
	}
	return s.Addr()
}

// Only processes of the worker's tree are heard: a child of the worker's
// shell is, a stranger (here with the socket in its environment, and a
// process of the same user) is refused; belongs is asked while the sender
// still runs (systemd-notify waits on its barrier).
func TestReceiveOnlyFromTheWorkersTree(t *testing.T) {
	s := listen(t)
	id := procinfo.Identity{MasterPid: os.Getpid(), NotifySocket: s.Addr()}
	worker := exec.Command("sh", "-c", `read go; systemd-notify --ready --status="from the tree"; exec sleep 1000`)
	worker.Env = append(os.Environ(), "NOTIFY_SOCKET="+s.Addr(), fmt.Sprintf("BATON_MASTER_PID=%d", id.MasterPid))
	worker.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := worker.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { unix.Kill(-worker.Process.Pid, unix.SIGKILL); worker.Wait() }()

	type verdict struct {
		pid   int
		alive bool
	}
	asked := make(chan verdict, 16)
	handled, rejected := make(chan Message, 16), make(chan Message, 16)
	go s.Receive(func(pid int) bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		asked <- verdict{pid, err == nil}
		return procinfo.InWorker(pid, worker.Process.Pid, id)
	}, func(m Message) { handled <- m }, func(m Message) { rejected <- m })

	// systemd-notify sends READY=1 on behalf of its parent (when it may
	// claim another pid, as root), BARRIER=1 as itself: both are outside.
	stranger := exec.Command("sh", "-c", `systemd-notify --ready --status="from a stranger"`)
	// With the socket in its environment, but no master's identity: the
	// test plays the master, and its children with the identity would be
	// adopted orphans of the worker.
	stranger.Env = append(os.Environ(), "NOTIFY_SOCKET="+s.Addr())
	if out, err := stranger.CombinedOutput(); err != nil {
		t.Fatalf("stranger's systemd-notify: %v: %s", err, out)
	}
	for range 2 { // READY=1, BARRIER=1
		select {
		case m := <-rejected:
			if m.Pid == int32(worker.Process.Pid) || m.Pid <= 0 {
				t.Errorf("rejected %+v, want a stranger's pid", m)
			}
		case m := <-handled:
			t.Fatalf("the stranger's message was handled: %+v", m)
		case <-time.After(10 * time.Second):
			t.Fatal("the stranger's messages were not rejected")
		}
	}

	stdin.Write([]byte("go\n"))
	var m Message
	select {
	case m = <-handled:
	case m = <-rejected:
		t.Fatalf("the worker's child's message was rejected: %+v", m)
	case <-time.After(10 * time.Second):
		t.Fatal("the worker's child's message did not arrive")
	}
	if st, _ := m.Status(); !m.Ready() || st != "from the tree" {
		t.Errorf("handled %+v; want READY=1 from the worker's tree", m)
	}
	for {
		select {
		case v := <-asked:
			if !v.alive {
				t.Errorf("belongs was asked about pid %d after it exited", v.pid)
			}
			continue
		default:
		}
		break
	}
}

// What a master killed with SIGKILL left (its pid no longer runs) is
// removed by the next NewDir; the directories of live masters, of other
// users and anything else are not.
func TestDirSweepsWhatDeadMastersLeft(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	t.Setenv("RUNTIME_DIRECTORY", base)
	mk := func(name string) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(p, "0123456789abcdef"), nil, 0o600)
		if err := pidns.Mark(p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	left := mk(fmt.Sprintf("baton-%d", dead.Process.Pid))
	// A master in another pid namespace (a container sharing /run): its
	// pid means nothing here, so its directory stays.
	otherNS := mk(fmt.Sprintf("baton-%d-ns", dead.Process.Pid))
	os.WriteFile(filepath.Join(otherNS, ".pidns"), []byte("pid:[1]"), 0o600)
	live := mk(fmt.Sprintf("baton-%d", os.Getppid()))
	other := mk("baton-notapid")
	var foreign string
	if os.Geteuid() == 0 {
		foreign = mk(fmt.Sprintf("baton-%d-x", dead.Process.Pid))
		os.Chown(foreign, 65534, 65534)
	}
	d, err := NewDir()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	gone(t, left)
	for _, p := range []string{live, other, foreign, otherNS} {
		if _, err := os.Lstat(p); p != "" && err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
}
