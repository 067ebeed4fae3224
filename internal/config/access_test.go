package config

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

const nobody, nogroup = 65534, 65534

// asUserBed is a directory tree, open to every user down to its root, in
// which a test makes files and directories with the modes and owners it
// wants, and loads configs that run workers as nobody.
type asUserBed struct {
	*testDir
}

func newAsUserBed(t *testing.T) asUserBed {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("these tests need root (workers run as nobody); run the suite as root, as ./scripts/test does")
	}
	d := newTestDir(t)
	d.openToAll()
	return asUserBed{d}
}

// dir makes a directory (and its parents, 0755) with mode, owned by uid:gid.
func (b asUserBed) dir(rel string, mode os.FileMode, uid, gid int) string {
	b.t.Helper()
	path := filepath.Join(b.path, rel)
	if err := os.MkdirAll(path, 0o755); err != nil {
		b.t.Fatal(err)
	}
	b.own(path, mode, uid, gid)
	return path
}

// script makes an executable shell script that exits 0.
func (b asUserBed) script(rel string, mode os.FileMode, uid, gid int) string {
	b.t.Helper()
	path := filepath.Join(b.path, rel)
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 0\n"), 0o600); err != nil {
		b.t.Fatal(err)
	}
	b.own(path, mode, uid, gid)
	return path
}

func (b asUserBed) own(path string, mode os.FileMode, uid, gid int) {
	b.t.Helper()
	if err := os.Chown(path, uid, gid); err != nil {
		b.t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		b.t.Fatal(err)
	}
}

// kernelRuns runs program in dir (baton's own when "") as uid:gid with no
// supplementary groups, as baton starts workers: the ground truth the
// check must agree with.
func kernelRuns(t *testing.T, program, dir string, uid, gid int) bool {
	t.Helper()
	cmd := exec.Command(program)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Logf("as %d:%d, %s in %q: %v %s", uid, gid, program, dir, err, out)
	}
	return err == nil
}

func TestCommandIsCheckedAsTheWorkersUser(t *testing.T) {
	t.Parallel()
	b := newAsUserBed(t)
	private := b.dir("private", 0o700, 0, 0)
	b.script("private/app", 0o755, 0, 0)
	b.dir("open", 0o755, 0, 0)
	rootOnly := b.script("open/root-only", 0o700, 0, 0)
	groupX := b.script("open/group-x", 0o750, 0, nogroup)
	ownerNoX := b.script("open/owner-no-x", 0o075, nobody, nogroup)
	unreadable := b.script("open/unreadable-script", 0o711, 0, 0)
	link := filepath.Join(b.path, "open", "link-to-private")
	if err := os.Symlink("../private/app", link); err != nil {
		t.Fatal(err)
	}
	openApp := b.script("open/app", 0o755, 0, 0)
	openLink := filepath.Join(b.path, "open", "link-to-open")
	if err := os.Symlink(openApp, openLink); err != nil {
		t.Fatal(err)
	}
	const who = "cannot be executed by user nobody (uid 65534) with group nogroup (gid 65534), as workers run: "
	for _, tc := range []struct {
		name    string
		args    []string
		command string
		want    string // the problem, "" for none
	}{
		{"command in a 0700 root directory", []string{"--user", "nobody"}, filepath.Join(private, "app"),
			"command: \"" + private + "/app\" " + who + "no search permission on the directory " + private + " (drwx------, owner root, group root)"},
		{"command only root may execute", []string{"--user", "nobody"}, rootOnly,
			"command: \"" + rootOnly + "\" " + who + "no execute permission on the file " + rootOnly + " (-rwx------, owner root, group root)"},
		{"executable by the workers' group", []string{"--user", "nobody"}, groupX, ""},
		{"not by another group", []string{"--user", "nobody", "--group", "daemon"}, groupX,
			"command: \"" + groupX + "\" cannot be executed by user nobody (uid 65534) with group daemon (gid 1), as workers run: no execute permission on the file " + groupX + " (-rwxr-x---, owner root, group nogroup)"},
		{"the owner's bits count for the owner", []string{"--user", "nobody"}, ownerNoX,
			"command: \"" + ownerNoX + "\" " + who + "no execute permission on the file " + ownerNoX + " (----rwxr-x, owner nobody, group nogroup)"},
		{"a script the user cannot read", []string{"--user", "nobody"}, unreadable,
			"command: \"" + unreadable + "\" " + who + "no read permission on the script " + unreadable + " (-rwx--x--x, owner root, group root)"},
		{"a symlink into a 0700 directory", []string{"--user", "nobody"}, link,
			"command: \"" + link + "\" " + who + "no search permission on the directory " + private + " (drwx------, owner root, group root)"},
		{"a symlink to an open file", []string{"--user", "nobody"}, openLink, ""},
		{"root may", []string{"--user", "root"}, filepath.Join(private, "app"), ""},
		{"baton's own user may", nil, filepath.Join(private, "app"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := b.load(tc.args, tc.command)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tc.want {
				t.Errorf("problems:\n got %s\nwant %s", got, tc.want)
			}
			if uid, gid, _ := runAsIDs(&Config{User: flagOr(tc.args, "--user"), Group: flagOr(tc.args, "--group")}); uid > 0 {
				if runs := kernelRuns(t, tc.command, "", uid, gid); runs != (tc.want == "") {
					t.Errorf("the kernel says runs=%v, the check says %q", runs, got)
				}
			}
		})
	}
}

// flagOr is the value after name in args, or "".
func flagOr(args []string, name string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == name {
			return args[i+1]
		}
	}
	return ""
}

// TestPATHSearchPassesOverWhatTheUserCannotExecute: as execvp in the
// worker would, the search goes on past a directory the user cannot
// search, and says so when no other one has the program.
func TestPATHSearchPassesOverWhatTheUserCannotExecute(t *testing.T) {
	t.Parallel()
	b := newAsUserBed(t)
	private := b.dir("private", 0o700, 0, 0)
	b.script("private/tool", 0o755, 0, 0)
	open := b.dir("open", 0o755, 0, 0)
	b.script("open/tool", 0o755, 0, 0)

	c := b.mustLoad([]string{"--user", "nobody", "-e", "PATH=" + private + ":" + open}, "tool")
	if c.CommandPath != filepath.Join(open, "tool") {
		t.Errorf("CommandPath = %s, want the one nobody can execute", c.CommandPath)
	}
	c = b.mustLoad([]string{"-e", "PATH=" + private + ":" + open}, "tool")
	if c.CommandPath != filepath.Join(private, "tool") {
		t.Errorf("as baton's own user: CommandPath = %s, want the first", c.CommandPath)
	}
	_, err := b.load([]string{"--user", "nobody", "-e", "PATH=" + private}, "tool")
	want := `command: "tool" was found in PATH as ` + private + `/tool, but it cannot be executed by user nobody (uid 65534) with group nogroup (gid 65534), as workers run: no search permission on the directory ` + private
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("problems: %v\nwant %s", err, want)
	}
}

func TestChdirIsCheckedAsTheWorkersUser(t *testing.T) {
	t.Parallel()
	b := newAsUserBed(t)
	private := b.dir("private", 0o700, 0, 0)
	inside := b.dir("private/inside", 0o755, 0, 0)
	noSearch := b.dir("no-search", 0o744, 0, 0)
	mine := b.dir("mine", 0o700, nobody, nogroup)
	app := b.script("app", 0o755, 0, 0)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--user", "nobody", "--chdir", inside},
			`--chdir: "` + inside + `" cannot be entered by user nobody (uid 65534) with group nogroup (gid 65534), as workers run: no search permission on the directory ` + private + ` (drwx------, owner root, group root)`},
		{[]string{"--user", "nobody", "--chdir", noSearch},
			`--chdir: "` + noSearch + `" cannot be entered by user nobody (uid 65534) with group nogroup (gid 65534), as workers run: no search permission on the directory ` + noSearch + ` (drwxr--r--, owner root, group root)`},
		{[]string{"--user", "nobody", "--chdir", mine}, ""},
		{[]string{"--chdir", inside}, ""},
	} {
		_, err := b.load(tc.args, app)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("%q: problems:\n got %s\nwant %s", tc.args, got, tc.want)
		}
		if len(tc.args) == 4 {
			if runs := kernelRuns(t, app, tc.args[3], nobody, nogroup); runs != (tc.want == "") {
				t.Errorf("%q: the kernel says runs=%v, the check says %q", tc.args, runs, got)
			}
		}
	}
}

// TestADirectoryWithAnACLIsLeftToTheKernel: its mode bits do not say who
// may search it, so it is not refused on them.
func TestADirectoryWithAnACLIsLeftToTheKernel(t *testing.T) {
	t.Parallel()
	b := newAsUserBed(t)
	dir := b.dir("acl", 0o700, 0, 0)
	app := b.script("acl/app", 0o755, 0, 0)
	// user::rwx user:nobody:--x group::--- mask::--x other::---, in the
	// kernel's xattr format (version 2; tag, perm, id per entry).
	const undefined = 0xffffffff
	acl := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 7, undefined}, {0x02, 1, nobody}, {0x04, 0, undefined}, {0x10, 1, undefined}, {0x20, 0, undefined}} {
		acl = binary.LittleEndian.AppendUint16(acl, e.tag)
		acl = binary.LittleEndian.AppendUint16(acl, e.perm)
		acl = binary.LittleEndian.AppendUint32(acl, e.id)
	}
	if err := unix.Setxattr(dir, "system.posix_acl_access", acl, 0); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			t.Fatalf("the test's temp dir %s has no POSIX ACLs; this test needs a file system with them (tmpfs and ext4 have them)", dir)
		}
		t.Fatal(err)
	}
	b.mustLoad([]string{"--user", "nobody"}, app)
	if !kernelRuns(t, app, "", nobody, nogroup) {
		t.Error("the kernel refused what the ACL grants: the test's ACL is wrong")
	}
}
