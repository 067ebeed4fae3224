package sdnotify

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/baton-pm/baton/internal/pidns"
	"golang.org/x/sys/unix"
)

// Workers' notify sockets are files in a directory of the master's own,
// so that file permissions, not only sender credentials, keep strangers
// out, and so that clients that only handle paths (Ruby's sd_notify gem)
// work. The layout:
//
//	<dir>/                0700, owned by baton's user; 0711 (enter, not
//	                      list) once a worker of another user has a
//	                      socket in it
//	<dir>/<16 hex digits> one worker's socket: 0600, owned by baton's
//	                      user, or by the worker's user when it runs as
//	                      another one
//
// <dir> is the first usable of $RUNTIME_DIRECTORY/baton-<pid> (systemd's
// RuntimeDirectory=), $XDG_RUNTIME_DIR/baton-<pid>, /run/baton/<pid> and a
// new private directory under $TMPDIR or /tmp (baton-notify-<pid>-*).
// When a worker of another user cannot reach <dir> (its parent is 0700,
// as /run/user/0 is), its socket goes to a second directory, created the
// same way (0711) where that user can reach it. Close removes them all;
// what a master killed with SIGKILL left is removed by the next NewDir
// that uses the same place (the directories of baton's user whose pid is
// not running).

// Owner is the user a worker runs as, when baton starts it as another one.
type Owner struct {
	Uid, Gid uint32
	Groups   []uint32 // supplementary groups
}

// maxPath is the longest path a unix socket can be bound to: sun_path is
// 108 bytes with the terminating NUL.
const maxPath = 107

// nameLen is the length of a socket's name in its directory.
const nameLen = 16

// Dir is the master's directory of notify sockets.
type Dir struct {
	mu     sync.Mutex
	path   string   // the private directory
	extra  []string // directories made for workers of other users
	open   bool     // path is 0711
	closed bool
}

// NewDir creates the master's private directory, in the first place that
// is usable: one that exists (or, /run/baton, can be created) as a real
// directory (not a symlink) owned by baton's user or root and writable by
// no one else, short enough for a socket path.
func NewDir() (*Dir, error) {
	pid := strconv.Itoa(os.Getpid())
	var reasons []string
	try := func(mk func() (string, error)) *Dir {
		p, err := mk()
		if err != nil {
			reasons = append(reasons, err.Error())
			return nil
		}
		// Which pid namespace the name's pid belongs to, for sweep.
		if err := pidns.Mark(p); err != nil {
			reasons = append(reasons, err.Error())
			return nil
		}
		sweepAll()
		return &Dir{path: p}
	}
	if base, _, _ := strings.Cut(os.Getenv("RUNTIME_DIRECTORY"), ":"); base != "" {
		if d := try(func() (string, error) { return inBase(base, "baton-"+pid) }); d != nil {
			return d, nil
		}
	}
	if base := os.Getenv("XDG_RUNTIME_DIR"); base != "" {
		if d := try(func() (string, error) { return inBase(base, "baton-"+pid) }); d != nil {
			return d, nil
		}
	}
	if d := try(func() (string, error) { return inRunBaton(pid) }); d != nil {
		return d, nil
	}
	for _, tmp := range tempBases() {
		if d := try(func() (string, error) { return makeTemp(tmp, 0o700) }); d != nil {
			return d, nil
		}
	}
	return nil, fmt.Errorf("no private directory for notify sockets: %s", strings.Join(reasons, "; "))
}

// Path is the private directory.
func (d *Dir) Path() string { return d.path }

// Listen opens a socket for a worker in the directory: owner is the user
// the worker runs as, or nil for baton's own.
func (d *Dir) Listen(owner *Owner) (*Socket, error) {
	dir, err := d.dirFor(owner)
	if err != nil {
		return nil, err
	}
	return Listen(dir, owner)
}

// Close removes the directories and every socket left in them; Listen
// fails from then on.
func (d *Dir) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for _, p := range append([]string{d.path}, d.extra...) {
		errs = append(errs, os.RemoveAll(p))
	}
	return errors.Join(errs...)
}

// dirFor is where owner's worker gets its socket: the private directory
// for baton's own user; for another user, one that user can enter.
func (d *Dir) dirFor(owner *Owner) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return "", errors.New("notify socket: the directory is closed")
	}
	if foreign(owner) == nil {
		return d.path, nil
	}
	if reachable(filepath.Dir(d.path), owner) {
		if !d.open {
			if err := os.Chmod(d.path, 0o711); err != nil {
				return "", fmt.Errorf("notify socket: %w", err)
			}
			d.open = true
		}
		return d.path, nil
	}
	for _, p := range d.extra {
		if reachable(filepath.Dir(p), owner) {
			return p, nil
		}
	}
	// The private directory's parent is closed to owner: a directory of
	// its own, in a place every user can reach.
	var reasons []string
	bases := []func() (string, error){func() (string, error) { return inRunBaton(strconv.Itoa(os.Getpid()) + "-u") }}
	for _, tmp := range tempBases() {
		bases = append(bases, func() (string, error) { return makeTemp(tmp, 0o711) })
	}
	for _, mk := range bases {
		p, err := mk()
		if err != nil {
			reasons = append(reasons, err.Error())
			continue
		}
		if !reachable(filepath.Dir(p), owner) {
			os.Remove(p)
			reasons = append(reasons, filepath.Dir(p)+" is out of uid "+strconv.Itoa(int(owner.Uid))+"'s reach")
			continue
		}
		if err := os.Chmod(p, 0o711); err != nil {
			os.Remove(p)
			reasons = append(reasons, err.Error())
			continue
		}
		// Marked as the private directory is, so that the sweep of a
		// later master removes it if this one is killed.
		if err := pidns.Mark(p); err != nil {
			os.RemoveAll(p)
			reasons = append(reasons, err.Error())
			continue
		}
		d.extra = append(d.extra, p)
		return p, nil
	}
	return "", fmt.Errorf("notify socket: no directory that uid %d can reach (%s is not): %s",
		owner.Uid, d.path, strings.Join(reasons, "; "))
}

// foreign is owner unless it is baton's own user.
func foreign(owner *Owner) *Owner {
	if owner == nil || owner.Uid == uint32(os.Geteuid()) {
		return nil
	}
	return owner
}

// inBase makes base/name private, base being a directory that must be
// ours or root's and writable by no one else.
func inBase(base, name string) (string, error) {
	if !filepath.IsAbs(base) {
		return "", fmt.Errorf("%s is not an absolute path", base)
	}
	if err := checkBase(base); err != nil {
		return "", err
	}
	return makePrivate(filepath.Join(base, name))
}

// inRunBaton makes /run/baton/name private, creating /run/baton (0711)
// when it is missing.
func inRunBaton(name string) (string, error) {
	if err := os.Mkdir(runBaton, 0o711); err == nil {
		os.Chmod(runBaton, 0o711) // whatever the umask
	} else if !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	return inBase(runBaton, name)
}

const (
	runBaton   = "/run/baton"
	tempPrefix = "baton-notify-"
)

// sweepAll sweeps every place NewDir and Dir.Listen use: those that
// NewDir would accept as a base, and the temporary directories (sticky:
// no one else can rename or replace baton's entries there).
func sweepAll() {
	runtime, _, _ := strings.Cut(os.Getenv("RUNTIME_DIRECTORY"), ":")
	for base, prefix := range map[string]string{runtime: "baton-", os.Getenv("XDG_RUNTIME_DIR"): "baton-", runBaton: ""} {
		if filepath.IsAbs(base) && checkBase(base) == nil {
			sweep(base, prefix)
		}
	}
	for _, tmp := range tempBases() {
		sweep(tmp, tempPrefix)
	}
}

// sweep removes the directories in base that dead masters left: named
// prefix+<pid> (with anything after a "-"), baton's user's, real
// directories, whose pid is not running (a master killed with SIGKILL
// cannot clean up).
func sweep(base, prefix string) {
	entries, err := os.ReadDir(base)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), prefix)
		if !ok || !e.IsDir() {
			continue
		}
		digits, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(digits)
		if err != nil || pid <= 0 || pid == os.Getpid() || unix.Kill(pid, 0) != unix.ESRCH {
			continue
		}
		p := filepath.Join(base, e.Name())
		// A pid means something only in the pid namespace of the master
		// that made the directory: a master in a container sharing /run
		// must not take the host's masters for dead.
		if !pidns.Ours(p) {
			continue
		}
		if checkOwn(p) == nil {
			os.RemoveAll(p)
		}
	}
}

// tempBases are the places for a temporary directory: $TMPDIR, and /tmp
// when that is another (which may be shorter).
func tempBases() []string {
	bases := []string{os.TempDir()}
	if bases[0] != "/tmp" {
		bases = append(bases, "/tmp")
	}
	return bases
}

// makeTemp creates a new directory with a random name in base (which may
// be world-writable, as /tmp is: mkdir is exclusive) and checks it.
func makeTemp(base string, mode os.FileMode) (string, error) {
	prefix := tempPrefix + strconv.Itoa(os.Getpid()) + "-"
	if len(base)+1+len(prefix)+10+1+nameLen > maxPath {
		return "", fmt.Errorf("%s is too long a directory for socket paths", base)
	}
	p, err := os.MkdirTemp(base, prefix)
	if err != nil {
		return "", err
	}
	if err := os.Chmod(p, mode); err != nil {
		os.Remove(p)
		return "", err
	}
	if err := checkOwn(p); err != nil {
		os.Remove(p)
		return "", err
	}
	return p, nil
}

// makePrivate creates p with mode 0700. A directory already there is a
// previous master's with the same pid (say, in a container restarted
// since): if it is ours, it is removed first; anything else is refused.
func makePrivate(p string) (string, error) {
	if len(p)+1+nameLen > maxPath {
		return "", fmt.Errorf("%s is too long a directory for socket paths (at most %d bytes)", p, maxPath-1-nameLen)
	}
	err := os.Mkdir(p, 0o700)
	if errors.Is(err, fs.ErrExist) {
		if err := checkOwn(p); err != nil {
			return "", err
		}
		if err := os.RemoveAll(p); err != nil {
			return "", err
		}
		err = os.Mkdir(p, 0o700)
	}
	if err != nil {
		return "", err
	}
	if err := os.Chmod(p, 0o700); err != nil {
		os.Remove(p)
		return "", err
	}
	if err := checkOwn(p); err != nil {
		os.Remove(p)
		return "", err
	}
	return p, nil
}

// checkBase accepts a real directory owned by baton's user or root that
// no one else may write to.
func checkBase(p string) error {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	switch {
	case st.Mode&unix.S_IFMT == unix.S_IFLNK:
		return fmt.Errorf("%s is a symlink", p)
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%s is not a directory", p)
	case st.Uid != uint32(os.Geteuid()) && st.Uid != 0:
		return fmt.Errorf("%s belongs to uid %d", p, st.Uid)
	case st.Mode&0o022 != 0:
		return fmt.Errorf("%s is writable by others (mode %04o)", p, st.Mode&0o7777)
	}
	return nil
}

// checkOwn accepts a real directory owned by baton's user that no one else
// may write to or list.
func checkOwn(p string) error {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%s is not a directory", p)
	case st.Uid != uint32(os.Geteuid()):
		return fmt.Errorf("%s belongs to uid %d", p, st.Uid)
	case st.Mode&0o066 != 0:
		return fmt.Errorf("%s is open to others (mode %04o)", p, st.Mode&0o7777)
	}
	return nil
}

// reachable reports whether owner may enter dir: search permission on it
// and every directory above it, by the owner, group or other bits as the
// kernel picks them (ACLs are not read: where they alone grant it, the
// answer is no, and another directory is used).
func reachable(dir string, owner *Owner) bool {
	if owner.Uid == 0 {
		return true
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false
	}
	for p := real; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil || !canSearch(&st, owner) {
			return false
		}
		if p == "/" {
			return true
		}
	}
}

func canSearch(st *unix.Stat_t, owner *Owner) bool {
	switch {
	case st.Uid == owner.Uid:
		return st.Mode&0o100 != 0
	case st.Gid == owner.Gid || slices.Contains(owner.Groups, st.Gid):
		return st.Mode&0o010 != 0
	default:
		return st.Mode&0o001 != 0
	}
}
