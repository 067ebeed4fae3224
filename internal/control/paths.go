package control

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// DefaultPath is where the control socket is when none is configured:
//
//  1. beside the pidfile (baton.pid -> baton.sock), when there is one;
//  2. $XDG_RUNTIME_DIR/baton.sock, when it is set;
//  3. baton.sock in a directory private to the user: /run/baton for root,
//     $TMPDIR/baton-UID (by default /tmp/baton-UID) for anyone else.
//
// The master and the CLI use the same rule, so `baton reload --pid FILE`
// finds a master started with `--pid FILE`. DefaultPath only computes the
// path; Listen creates and checks the private directory of case 3.
func DefaultPath(pidfile string) string {
	if pidfile != "" {
		return strings.TrimSuffix(pidfile, filepath.Ext(pidfile)) + ".sock"
	}
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" {
		return filepath.Join(dir, "baton.sock")
	}
	return filepath.Join(privateDir(os.Getuid()), "baton.sock")
}

// privateDir is the directory baton keeps the default control socket in
// when there is neither a pidfile nor $XDG_RUNTIME_DIR. Never the world-
// writable temp dir itself: a socket file there could be put in place by
// any other user before baton starts. Tests replace it.
var privateDir = func(uid int) string {
	if uid == 0 {
		return "/run/baton"
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("baton-%d", uid))
}

// ErrTakenByAnotherUser is matched (errors.Is) by Listen's error when the
// control socket's path, or the private directory it is in, belongs to
// another user: a live or stale socket of theirs, any other file of
// theirs, or a directory of theirs. baton neither uses nor removes it.
var ErrTakenByAnotherUser = errors.New("taken by another user")

// ErrUnsafeDirectory is matched (errors.Is) by Listen's error when the
// private directory of the default control socket is the user's own but
// not private: other users may write to it (or, outside /run, enter it),
// or it is a symbolic link or not a directory at all.
var ErrUnsafeDirectory = errors.New("unsafe directory for the control socket")

// ForeignOwnerError says that a file or directory where baton would put its
// control socket belongs to another user.
type ForeignOwnerError struct {
	Path string // the socket path, or the private directory
	Dir  bool   // Path is the private directory, not the socket path
	Kind string // what is there: "socket", "directory", "regular file", ...
	UID  int    // its owner
	Self int    // baton's uid
}

func (e *ForeignOwnerError) Error() string {
	if e.Dir {
		return fmt.Sprintf("the directory %s for the control socket is a %s that belongs to %s, not to baton's user (uid %d): "+
			"another user may have made it to take over the control socket, and baton will not use it "+
			"(remove it as its owner or root, or give baton --control or --pid in a directory of its own)",
			e.Path, e.Kind, describeUID(e.UID), e.Self)
	}
	return fmt.Sprintf("the control socket path %s is taken by a %s that belongs to %s, not to baton's user (uid %d): "+
		"baton will neither use nor remove another user's file (remove it as its owner or root, or choose another path with --control)",
		e.Path, e.Kind, describeUID(e.UID), e.Self)
}

// Is makes errors.Is(err, ErrTakenByAnotherUser) true.
func (e *ForeignOwnerError) Is(target error) bool { return target == ErrTakenByAnotherUser }

// unsafeDirError says what is wrong with a private directory of our own.
type unsafeDirError struct {
	path, problem string
}

func (e *unsafeDirError) Error() string {
	return fmt.Sprintf("the directory %s for the control socket %s: baton will not put its control socket there "+
		"(remove it and baton creates it again with mode 0700, or give --control or --pid)", e.path, e.problem)
}

func (e *unsafeDirError) Is(target error) bool { return target == ErrUnsafeDirectory }

// ensurePrivateDir creates dir (mode 0700, 0711 for root) if it does not exist, and checks
// that what is there is a directory, not a symbolic link, owned by uid (the
// process's own) and private: mode 0700 exactly. Root's /run/baton may also
// be 0711 or 0755, as long as only root can write to it: nobody else can
// create anything in /run, and the socket in it is 0600 and checks its
// peers anyway. Anything else is refused, never repaired: a directory
// with the wrong owner is another user's attempt to take over the control
// socket, and one of ours with the wrong mode is for its owner to fix.
func ensurePrivateDir(dir string, uid int) error {
	// Root's is 0711: the masters' notify sockets live below it too
	// (/run/baton/<pid>, package sdnotify), and a worker running as
	// another user must be able to pass through to its own socket;
	// nobody may list it.
	mode := os.FileMode(0o700)
	if uid == 0 {
		mode = 0o711
	}
	err := os.Mkdir(dir, mode)
	switch {
	case err == nil:
		// Exactly that whatever the umask. Nobody else can have replaced
		// it since: it is in a directory only root can write (/run), or a
		// sticky one where only its owner, us, may rename or remove it.
		if err := os.Chmod(dir, mode); err != nil {
			return fmt.Errorf("control socket directory: %w", err)
		}
	case !errors.Is(err, fs.ErrExist):
		return fmt.Errorf("cannot create the directory for the control socket: %w", err)
	}
	return checkPrivateDir(dir, uid)
}

// checkPrivateDir is ensurePrivateDir's check, with lstat: a symbolic link
// is refused, not followed.
func checkPrivateDir(dir string, uid int) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("control socket directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("control socket directory %s: cannot read its owner", dir)
	}
	if int(st.Uid) != uid {
		return &ForeignOwnerError{Path: dir, Dir: true, Kind: describeType(fi.Mode()), UID: int(st.Uid), Self: uid}
	}
	if fi.Mode().Type() != fs.ModeDir {
		return &unsafeDirError{path: dir, problem: "is a " + describeType(fi.Mode()) + ", not a directory"}
	}
	// The permission bits, with setuid, setgid and sticky.
	mode := st.Mode & 0o7777
	switch {
	case uid == 0 && mode&0o022 != 0:
		return &unsafeDirError{path: dir, problem: fmt.Sprintf("has mode %#o: others may write to it", mode)}
	case uid != 0 && mode != 0o700:
		return &unsafeDirError{path: dir, problem: fmt.Sprintf("has mode %#o, not 0700", mode)}
	}
	return nil
}

// describeUID is "uid N (name)", or "uid N" for a uid without a name.
func describeUID(uid int) string {
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil && u.Username != "" {
		return fmt.Sprintf("uid %d (%s)", uid, u.Username)
	}
	return fmt.Sprintf("uid %d", uid)
}
