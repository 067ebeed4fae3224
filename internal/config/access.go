package config

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A workerID is the user and group workers run as when it is not baton's
// own (user, group): baton gives them that uid and primary gid and no
// supplementary groups, so that is what file permissions are judged
// against, owner, group and other bits as the kernel would.
type workerID struct {
	uid, gid int
}

// workerIdentity is the identity workers of c run as, for permission
// checks; nil when they run as baton's own user or as root (the kernel
// lets root search any directory), or when user or group does not resolve
// (their own checks report that).
func workerIdentity(c *Config) *workerID {
	uid, gid, err := runAsIDs(c)
	if err != nil || uid <= 0 {
		return nil
	}
	return &workerID{uid: uid, gid: gid}
}

// String names the identity in messages: user nobody (uid 65534) with
// group nogroup (gid 65534).
func (w *workerID) String() string {
	return fmt.Sprintf("user %s (uid %d) with group %s (gid %d)", userName(w.uid), w.uid, groupName(w.gid), w.gid)
}

func userName(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username
	}
	return strconv.Itoa(uid)
}

func groupName(gid int) string {
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		return g.Name
	}
	return strconv.Itoa(gid)
}

// Permission bits, as the "other" triplet.
const (
	permRead    = 0o4
	permExecute = 0o1 // search, for a directory
)

// canExecute says why w cannot execute the regular file at path (absolute,
// and executable by someone: checkExecutable said so), or nil: search
// permission on every directory on the way, symlinks' targets included,
// and execute permission on the file; read permission too for a "#!"
// script, whose interpreter opens it as the worker.
func (w *workerID) canExecute(path string) error {
	final, err := w.reach("/", path)
	if err != nil {
		return err
	}
	if err := w.may(final, permExecute); err != nil {
		return err
	}
	if isScript(final) {
		return w.may(final, permRead)
	}
	return nil
}

// canEnter says why w cannot make dir its working directory, or nil. A
// relative dir starts from baton's own working directory, which the
// worker inherits: only the directories from there on are looked at.
func (w *workerID) canEnter(dir string) error {
	start := "/"
	if !filepath.IsAbs(dir) {
		wd, err := os.Getwd()
		if err != nil {
			return nil // nothing to judge against; chdir's own check reports a problem
		}
		start = wd
	}
	final, err := w.reach(start, dir)
	if err != nil {
		return err
	}
	return w.may(final, permExecute)
}

// maxSymlinks is the kernel's limit on symlinks followed in one lookup.
const maxSymlinks = 40

// reach resolves path from the directory start as the kernel would for w
// and returns where it leads (a path without symlinks). Every directory it
// looks a name up in must grant w search permission; the first that does
// not is the error.
func (w *workerID) reach(start, path string) (string, error) {
	cur := filepath.Clean(start)
	if filepath.IsAbs(path) {
		cur = "/"
	}
	todo := strings.Split(path, "/")
	links := 0
	for len(todo) > 0 {
		name := todo[0]
		todo = todo[1:]
		if name == "" {
			continue
		}
		if err := w.may(cur, permExecute); err != nil {
			return "", err
		}
		switch name {
		case ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, name)
		info, err := os.Lstat(next)
		if err != nil {
			return "", fmt.Errorf("%s: %v", next, unwrapPath(err))
		}
		if info.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > maxSymlinks {
			return "", fmt.Errorf("%s: too many levels of symbolic links", path)
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", fmt.Errorf("%s: %v", next, unwrapPath(err))
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		todo = append(strings.Split(target, "/"), todo...)
	}
	return cur, nil
}

// A permissionError is a file or directory that denies the worker's user
// what it needs.
type permissionError struct {
	path  string
	isDir bool
	perm  uint32 // permRead or permExecute
	mode  fs.FileMode
	owner int
	group int
}

func (e *permissionError) Error() string {
	what, kind := "execute", "the file"
	switch {
	case e.isDir:
		what, kind = "search", "the directory"
	case e.perm == permRead:
		what, kind = "read", "the script"
	}
	return fmt.Sprintf("no %s permission on %s %s (%s, owner %s, group %s)",
		what, kind, e.path, e.mode, userName(e.owner), groupName(e.group))
}

// may says whether w has perm on path by its owner, group and other bits,
// as the kernel decides for a process without capabilities or
// supplementary groups. A file with an access ACL is not judged: its
// bits do not tell the whole story, and the kernel will decide.
func (w *workerID) may(path string, perm uint32) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	var granted uint32
	switch {
	case int(st.Uid) == w.uid:
		granted = st.Mode >> 6
	case int(st.Gid) == w.gid:
		granted = st.Mode >> 3
	default:
		granted = st.Mode
	}
	if granted&perm != 0 || hasACL(path) {
		return nil
	}
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %v", path, unwrapPath(err))
	}
	return &permissionError{path: path, isDir: info.IsDir(), perm: perm, mode: info.Mode(), owner: int(st.Uid), group: int(st.Gid)}
}

// hasACL tells whether path has a POSIX access ACL.
func hasACL(path string) bool {
	n, err := unix.Getxattr(path, "system.posix_acl_access", nil)
	return err == nil && n > 0
}

// isScript tells whether the file at path starts with "#!".
func isScript(path string) bool {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	head := make([]byte, 2)
	n, _ := f.Read(head)
	return n == 2 && string(head) == "#!"
}
