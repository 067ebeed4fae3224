package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/baton-pm/baton/internal/logging"
)

// These checks look at the system, not at the text: they run on the merged
// config only (see key.check).

const noCommand = `no worker command: give it after "--" (baton run -- uvicorn --fd 3 app:app) or as command = [...] in the config file`

// resolveCommand finds the program of c.Command as execvp(3) would in the
// worker, and sets c.CommandPath to its absolute path: a program with a
// slash is relative to the workers' directory, one without is searched in
// the workers' PATH (env's PATH if it sets one, else baton's own).
func resolveCommand(c *Config) error {
	if len(c.Command) == 0 {
		return errors.New(noCommand)
	}
	workdir, err := filepath.Abs(c.Chdir)
	if err != nil || checkDir(c.Chdir) != nil {
		return nil // chdir's own check reports it; nothing to resolve against
	}
	program := c.Command[0]
	as := workerIdentity(c)
	if strings.Contains(program, "/") {
		c.CommandPath, err = resolvePath(program, workdir, as)
	} else {
		c.CommandPath, err = searchPath(program, workdir, c.Env, as)
	}
	return err
}

// resolvePath checks a program given with a slash, as the workers' user
// as would execute it (nil: baton's own).
func resolvePath(program, workdir string, as *workerID) (string, error) {
	path := program
	if !filepath.IsAbs(path) {
		path = filepath.Join(workdir, path)
	}
	if err := checkExecutableAs(path, as); err != nil {
		if path != program {
			return "", fmt.Errorf("%q (%s) %v", program, path, err)
		}
		return "", fmt.Errorf("%q %v", program, err)
	}
	return path, nil
}

// searchPath looks for program in each directory of the workers' PATH. As
// with execvp, a file that is there but not executable (by as, if not nil)
// is passed over, and reported only if no directory has an executable one;
// an empty entry is the current directory, and relative ones are relative
// to workdir.
func searchPath(program, workdir string, env map[string]string, as *workerID) (string, error) {
	pathList, fromEnv := env["PATH"]
	if !fromEnv {
		pathList = os.Getenv("PATH")
	}
	var passedOver error
	for _, dir := range filepath.SplitList(pathList) {
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(workdir, dir)
		}
		path := filepath.Join(dir, program)
		err := checkExecutableAs(path, as)
		if err == nil {
			return path, nil
		}
		if passedOver == nil && err != errMissing && err != errIsDir {
			passedOver = fmt.Errorf("%q was found in PATH as %s, but it %v", program, path, err)
		}
	}
	switch {
	case passedOver != nil:
		return "", passedOver
	case fromEnv:
		return "", fmt.Errorf("%q not found in PATH (env sets PATH=%q)", program, pathList)
	}
	return "", fmt.Errorf("%q not found in PATH", program)
}

// What checkExecutable says of files execvp passes over in silence.
var (
	errMissing = errors.New("does not exist")
	errIsDir   = errors.New("is a directory")
)

// checkExecutable says why path cannot be executed, in words that follow
// the path in a message: "does not exist", "is a directory", ...
//
// It looks at the permission bits, not at access(2) for baton's own user:
// workers may run as another one.
func checkExecutable(path string) error {
	info, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errMissing
	case err != nil:
		return fmt.Errorf("cannot be read: %w", unwrapPath(err))
	case info.IsDir():
		return errIsDir
	case !info.Mode().IsRegular():
		return fmt.Errorf("is not a regular file (mode %s)", info.Mode())
	case info.Mode().Perm()&0o111 == 0:
		return fmt.Errorf("is not executable (mode %s)", info.Mode())
	}
	return nil
}

// checkExecutableAs is checkExecutable, and then, if as is not nil, says
// why the workers' user as cannot execute path: a directory on the way it
// cannot search, or the file's own bits. baton checks as root, but the
// workers would fail with exit 126.
func checkExecutableAs(path string, as *workerID) error {
	if err := checkExecutable(path); err != nil || as == nil {
		return err
	}
	if err := as.canExecute(path); err != nil {
		return fmt.Errorf("cannot be executed by %s, as workers run: %w", as, err)
	}
	return nil
}

// checkChdir checks chdir: a directory, which the workers' user (if not
// baton's own) can enter.
func checkChdir(c *Config) error {
	if err := checkDir(c.Chdir); err != nil || c.Chdir == "" {
		return err
	}
	if as := workerIdentity(c); as != nil {
		if err := as.canEnter(c.Chdir); err != nil {
			return fmt.Errorf("%q cannot be entered by %s, as workers run: %w", c.Chdir, as, err)
		}
	}
	return nil
}

// checkDir checks that dir, if set, is a directory.
func checkDir(dir string) error {
	if dir == "" {
		return nil
	}
	info, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("directory %q does not exist", dir)
	case err != nil:
		return fmt.Errorf("%q: %v", dir, unwrapPath(err))
	case !info.IsDir():
		return fmt.Errorf("%q is not a directory", dir)
	}
	return nil
}

// checkParentDir checks that a file baton will create, if set, can be:
// its directory exists, and it is not a directory itself.
func checkParentDir(path string) error {
	if path == "" {
		return nil
	}
	if info, err := os.Stat(path); err == nil && info.IsDir() {
		return fmt.Errorf("%q is a directory", path)
	}
	if err := checkDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("cannot create %q: %v", path, err)
	}
	return nil
}

// checkLogFile checks log_file: a file baton can create, and that no other
// user chose for it (a symlink, or a file planted in a directory such as
// /tmp: logging.CheckFile). Opening it at start checks again.
func checkLogFile(c *Config) error {
	if c.LogFile == "" {
		return nil
	}
	if err := checkParentDir(c.LogFile); err != nil {
		return err
	}
	return logging.CheckFile(c.LogFile)
}

// unwrapPath drops the path from an *fs.PathError: messages name it already.
func unwrapPath(err error) error {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return pathErr.Err
	}
	return err
}

// checkHostPort accepts "" (off) or HOST:PORT with a numeric port.
func checkHostPort(addr string) error {
	if addr == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return fmt.Errorf("%q: expected HOST:PORT, such as 127.0.0.1:9100", addr)
	}
	return nil
}

// resolveRunAs turns user and group (names or ids) into RunAsUID and
// RunAsGID (-1 when not set; a user's primary group when only user is).
// Switching users needs root: baton stays root to bind and manage, and
// starts the workers as the user.
func resolveRunAs(c *Config) error {
	c.RunAsUID, c.RunAsGID = -1, -1
	uid, gid, err := runAsIDs(c)
	if err != nil || uid < 0 {
		return err
	}
	c.RunAsUID, c.RunAsGID = uid, gid
	if os.Geteuid() != 0 && (c.RunAsUID != os.Geteuid() || c.RunAsGID != os.Getegid()) {
		return fmt.Errorf("running workers as uid %d, gid %d needs baton to run as root (it runs as uid %d)",
			c.RunAsUID, c.RunAsGID, os.Geteuid())
	}
	return nil
}

// runAsIDs resolves user and group as resolveRunAs does, without setting
// anything: -1, -1 when neither is set. Checks of other keys that depend
// on the workers' identity (command, chdir) run before user's own.
func runAsIDs(c *Config) (uid, gid int, err error) {
	uid, gid = -1, -1
	if c.User == "" && c.Group == "" {
		return uid, gid, nil
	}
	if c.User != "" {
		u, err := lookupUser(c.User)
		if err != nil {
			return -1, -1, err
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
	}
	if c.Group != "" {
		g, err := lookupGroup(c.Group)
		if err != nil {
			return -1, -1, fmt.Errorf("group: %w", err)
		}
		gid = g
		if uid < 0 {
			uid = os.Geteuid()
		}
	}
	return uid, gid, nil
}

// resolveUnixOwner turns unix_owner ("USER" or "USER:GROUP") into the ids
// unix socket files are given (-1: unchanged).
func resolveUnixOwner(c *Config) error {
	c.UnixUID, c.UnixGID = -1, -1
	if c.UnixOwner == "" {
		return nil
	}
	name, group, hasGroup := strings.Cut(c.UnixOwner, ":")
	u, err := lookupUser(name)
	if err != nil {
		return err
	}
	c.UnixUID, _ = strconv.Atoi(u.Uid)
	c.UnixGID, _ = strconv.Atoi(u.Gid)
	if hasGroup {
		if c.UnixGID, err = lookupGroup(group); err != nil {
			return err
		}
	}
	return nil
}

func lookupUser(nameOrID string) (*user.User, error) {
	if _, err := strconv.Atoi(nameOrID); err == nil {
		if u, err := user.LookupId(nameOrID); err == nil {
			return u, nil
		}
	}
	u, err := user.Lookup(nameOrID)
	if err != nil {
		return nil, fmt.Errorf("no such user %q", nameOrID)
	}
	return u, nil
}

func lookupGroup(nameOrID string) (int, error) {
	if id, err := strconv.Atoi(nameOrID); err == nil {
		return id, nil
	}
	g, err := user.LookupGroup(nameOrID)
	if err != nil {
		return 0, fmt.Errorf("no such group %q", nameOrID)
	}
	return strconv.Atoi(g.Gid)
}
