package control

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxSocketPath is the longest path a unix socket can have: sun_path holds
// 108 bytes, and the kernel wants room for the terminating NUL.
const maxSocketPath = 107

// listenBacklog is the kernel's queue of connections not yet accepted.
const listenBacklog = 128

// probeTimeout bounds the connect that tells a live socket from a stale one.
const probeTimeout = time.Second

// fileID names one file regardless of its path, so that Close removes the
// socket it bound and not one another server has put at the same path since.
type fileID struct {
	dev, ino uint64
}

// sockaddrName is the name to give the kernel for path. Go treats a leading
// '@' as Linux's abstract namespace; a file called "@x" is reached as "./@x".
func sockaddrName(path string) string {
	if strings.HasPrefix(path, "@") {
		return "./" + path
	}
	return path
}

// checkSocketPath rejects paths the kernel cannot bind or connect to, with a
// message that says what to do instead of the kernel's bare EINVAL.
func checkSocketPath(path string) error {
	switch name := sockaddrName(path); {
	case path == "":
		return errors.New("control socket path is empty")
	case strings.IndexByte(path, 0) >= 0:
		return fmt.Errorf("control socket path %q contains a NUL byte", path)
	case len(name) > maxSocketPath:
		return fmt.Errorf("control socket path %s is %d bytes long, but a unix socket path can have at most %d: choose a shorter path",
			path, len(name), maxSocketPath)
	}
	return nil
}

// removeStaleSocket makes way for a new socket at path. Nothing there is
// fine; a socket of our own uid that nobody accepts on (left by a master
// that died) is removed; a live socket, or anything that is not a socket,
// is an error and is left alone. Anything that belongs to another user is
// a *ForeignOwnerError and is never touched, not even by root: it may be
// another user's attempt to take the control socket's place, and their
// live socket would answer our clients. Two masters starting at once on one
// path could both find the same stale socket; the pidfile, not this check,
// is what keeps them apart.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	uid := os.Getuid()
	if owner, ok := fileOwner(fi); !ok || owner != uid {
		kind := describeType(fi.Mode())
		if fi.Mode().Type() == fs.ModeSocket {
			if _, err := probeSocket(path); err == nil {
				kind = "live socket" // for the message only
			}
		}
		return &ForeignOwnerError{Path: path, Kind: kind, UID: owner, Self: uid}
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control socket path %s exists and is not a socket (it is a %s); not replacing it", path, describeType(fi.Mode()))
	}
	server, err := probeSocket(path)
	switch {
	case err == nil && server != uid:
		// Our file, served by another user: they hold a socket that
		// was bound here (by root, say, and given to them).
		return &ForeignOwnerError{Path: path, Kind: "live socket", UID: server, Self: uid}
	case err == nil:
		return fmt.Errorf("control socket %s is in use by another process (a running baton master?)", path)
	case errors.Is(err, syscall.ENOENT):
		return nil // removed since the Lstat
	case errors.Is(err, syscall.ECONNREFUSED):
		return removeStale(path, fi)
	default:
		return fmt.Errorf("control socket %s exists and cannot be checked (%v); not replacing it", path, err)
	}
}

// removeStale removes the stale socket file found at path as fi, unless
// another file has taken its place since.
func removeStale(path string, fi fs.FileInfo) error {
	now, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil || !os.SameFile(fi, now) {
		return fmt.Errorf("control socket %s changed while baton was checking it; not replacing it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale control socket: %w", err)
	}
	return nil
}

// fileOwner is the uid that owns the file fi describes.
func fileOwner(fi fs.FileInfo) (int, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return -1, false
	}
	return int(st.Uid), true
}

// probeSocket connects to path and hangs up at once: no error means
// something is accepting there, and server is the uid of the process
// that created the listening socket; ECONNREFUSED means nothing is.
func probeSocket(path string) (server int, err error) {
	conn, err := net.DialTimeout("unix", sockaddrName(path), probeTimeout)
	if err != nil {
		return -1, err
	}
	defer conn.Close()
	cred, err := peerCred(conn.(*net.UnixConn))
	if err != nil {
		return -1, fmt.Errorf("reading the credentials of the process listening there: %w", err)
	}
	return int(cred.Uid), nil
}

func describeType(m fs.FileMode) string {
	switch m.Type() {
	case 0:
		return "regular file"
	case fs.ModeDir:
		return "directory"
	case fs.ModeSymlink:
		return "symbolic link"
	case fs.ModeNamedPipe:
		return "named pipe"
	case fs.ModeSocket:
		return "socket"
	case fs.ModeDevice, fs.ModeDevice | fs.ModeCharDevice:
		return "device"
	default:
		return m.Type().String()
	}
}

// bindSocket creates a listening unix socket at path with exactly the given
// mode, and returns it with the identity of the file it created.
//
// Why no other user can connect even for an instant: the socket is bound
// first and made to listen last. In between, the file exists with whatever
// mode bind gave it, but the kernel refuses every connect to a socket that
// is not listening, so the chmod in between is in place before the first
// connection can be accepted. (Setting the umask instead would be racy: it
// belongs to the whole process, and other goroutines may create files at
// the same moment.)
func bindSocket(path string, mode os.FileMode) (*net.UnixListener, fileID, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fileID{}, fmt.Errorf("control socket: %w", os.NewSyscallError("socket", err))
	}
	f := os.NewFile(uintptr(fd), path) // owns fd; FileListener below takes a dup
	defer f.Close()

	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: sockaddrName(path)}); err != nil {
		return nil, fileID{}, fmt.Errorf("bind control socket %s: %w", path, err)
	}
	id, err := restrictSocketFile(path, mode)
	if err == nil {
		err = unix.Listen(fd, listenBacklog)
	}
	var ln net.Listener
	if err == nil {
		ln, err = net.FileListener(f)
	}
	if err != nil {
		_ = os.Remove(path) // we created it a moment ago
		return nil, fileID{}, fmt.Errorf("control socket %s: %w", path, err)
	}
	return ln.(*net.UnixListener), id, nil
}

// restrictSocketFile gives the freshly bound socket file its mode (exactly,
// whatever the umask) and returns its identity.
func restrictSocketFile(path string, mode os.FileMode) (fileID, error) {
	if err := os.Chmod(path, mode); err != nil {
		return fileID{}, err
	}
	return socketFileID(path)
}

// socketFileID is the identity of the socket file at path.
func socketFileID(path string) (fileID, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return fileID{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || fi.Mode().Type() != fs.ModeSocket {
		return fileID{}, fmt.Errorf("%s is not a socket", path)
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, nil
}

// removeIfOurs removes the socket file at path if it is still the one we
// bound. If another master has replaced it since (after removing ours as
// stale, say), the file is theirs and stays.
func removeIfOurs(path string, ours fileID) error {
	cur, err := socketFileID(path)
	if err != nil || cur != ours {
		return nil // gone, or not ours any more: nothing of ours to remove
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove control socket: %w", err)
	}
	return nil
}
