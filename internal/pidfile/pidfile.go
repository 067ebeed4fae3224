// Package pidfile writes and removes the master's pidfile with Gunicorn's
// habits: refuse to start when it names a live master, replace a stale one,
// and remove it on exit only while it still names this process.
package pidfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Check fails when path names a running baton master. A missing file, a
// garbage file or a pid that is dead or belongs to another program is stale
// and fine to replace.
func Check(path string) error {
	pid, err := Read(path)
	if err != nil {
		return nil
	}
	if pid == os.Getpid() {
		return nil
	}
	if isBatonProcess(pid) {
		return fmt.Errorf("pidfile %s names a running baton master (pid %d): stop it first, or use another --pid", path, pid)
	}
	return nil
}

// Read returns the pid stored in path.
func Read(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s: no pid in it", path)
	}
	return pid, nil
}

// isBatonProcess reports whether pid is alive and runs a baton binary, so a
// pid reused by an unrelated program after a crash does not block a start.
func isBatonProcess(pid int) bool {
	if err := unix.Kill(pid, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	argv0, _, _ := bytes.Cut(cmdline, []byte{0})
	if strings.Contains(filepath.Base(string(argv0)), "baton") {
		return true
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	self, selfErr := os.Executable()
	return err == nil && selfErr == nil && strings.TrimSuffix(exe, " (deleted)") == self
}

// Write stores this process's pid in path atomically (temp file + rename),
// so a reader never sees a half-written file.
func Write(path string) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("pidfile %s: cannot write: %w", path, unwrapPathError(err))
	}
	_, werr := fmt.Fprintf(tmp, "%d\n", os.Getpid())
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("pidfile %s: cannot write: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("pidfile %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("pidfile %s: cannot write: %w", path, unwrapPathError(err))
	}
	return nil
}

// RemoveIfOurs removes path only if it still holds this process's pid: after
// an upgrade the file belongs to the new master.
func RemoveIfOurs(path string) error {
	pid, err := Read(path)
	if err != nil || pid != os.Getpid() {
		return nil
	}
	return os.Remove(path)
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
