// Package logging builds baton's slog logger and the log file that USR1
// reopens after logrotate moved it.
package logging

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// Options choose the level, format and destination of the log.
type Options struct {
	Level  string // debug, info, warn, error
	Format string // text or json
	File   string // "" means stderr
}

// Output is where log lines go: stderr, or a file that can be reopened.
type Output struct {
	// level is the logger's, which a reload may change (SetLevel).
	level slog.LevelVar
	mu    sync.Mutex
	path  string
	w     io.Writer
	f     *os.File
}

// New opens the destination and returns a logger writing to it.
func New(opts Options) (*slog.Logger, *Output, error) {
	out := &Output{path: opts.File, w: os.Stderr}
	if opts.File != "" {
		f, err := openLogFile(opts.File)
		if err != nil {
			return nil, nil, err
		}
		out.f, out.w = f, f
	}
	level, err := ParseLevel(opts.Level)
	if err != nil {
		return nil, nil, err
	}
	out.level.Set(level)
	handlerOpts := &slog.HandlerOptions{Level: &out.level}
	var h slog.Handler
	switch opts.Format {
	case "", "text":
		h = slog.NewTextHandler(out, handlerOpts)
	case "json":
		h = slog.NewJSONHandler(out, handlerOpts)
	default:
		return nil, nil, fmt.Errorf("log format %q: expected text or json", opts.Format)
	}
	return slog.New(h), out, nil
}

// ParseLevel maps debug, info, warn and error to slog levels.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q: expected debug, info, warn or error", s)
}

// openLogFile opens path for appending, creating it if need be, under the
// rules CheckFile describes; the opened file is checked again, as the path
// may have changed since.
func openLogFile(path string) (*os.File, error) {
	if err := CheckFile(path); err != nil {
		return nil, err
	}
	return openChecked(path)
}

// openChecked opens path as openLogFile does and checks what it opened,
// whatever the path was when CheckFile looked at it.
func openChecked(path string) (*os.File, error) {
	// O_NOFOLLOW: a symlink planted after the check is not followed either
	// (ELOOP). O_NONBLOCK: opening a FIFO must not wait for a reader.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o644)
	if errors.Is(err, syscall.ELOOP) {
		return nil, refused(path, "it is a symbolic link, which baton does not follow; name the file itself")
	}
	if err != nil {
		return nil, fmt.Errorf("log file %s: cannot open for writing: %w", path, unwrapPath(err))
	}
	info, err := f.Stat()
	if err == nil {
		err = checkHijack(path, info)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// CheckFile says why baton must not write its log to path, or nil. baton
// usually runs as root on a machine it shares, and appends to the log file
// as root, so no other user may choose which file that is:
//
//   - a symbolic link is refused (nobody's /tmp/x.log -> /etc/important
//     would make root append to /etc/important);
//   - in a directory where anyone may create files but only remove their
//     own (sticky and world-writable, like /tmp), a file that another user
//     owns, or one with several hard links, is refused: another user
//     planted it. A file baton creates there itself is fine.
//
// A missing file is fine (baton creates it); a missing directory is the
// open's to report.
func CheckFile(path string) error {
	info, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("log file %s: %w", path, unwrapPath(err))
	case info.Mode()&fs.ModeSymlink != 0:
		target, _ := os.Readlink(path)
		return refused(path, fmt.Sprintf("it is a symbolic link (to %s), which baton does not follow; name the file itself", target))
	}
	return checkHijack(path, info)
}

// checkHijack refuses a log file that another user may have planted for
// baton in a sticky world-writable directory (see CheckFile).
func checkHijack(path string, info fs.FileInfo) error {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	dir := filepath.Dir(path)
	dirInfo, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("log file %s: %w", path, unwrapPath(err))
	}
	if dirInfo.Mode()&fs.ModeSticky == 0 || dirInfo.Mode().Perm()&0o002 == 0 {
		return nil
	}
	shared := fmt.Sprintf("its directory %s is world-writable and sticky (%s), where any user may leave a file for baton to write to as uid %d; put the log in a directory only baton's user can write to",
		dir, dirInfo.Mode(), os.Geteuid())
	switch {
	case int(st.Uid) != os.Geteuid():
		return refused(path, fmt.Sprintf("it belongs to %s, not to baton's uid %d, and %s", owner(st.Uid), os.Geteuid(), shared))
	case info.Mode().IsRegular() && st.Nlink > 1:
		return refused(path, fmt.Sprintf("it has %d hard links, and %s", st.Nlink, shared))
	}
	return nil
}

func refused(path, why string) error {
	return fmt.Errorf("log file %s: refused: %s", path, why)
}

// owner names a uid: "uid 65534 (nobody)".
func owner(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return fmt.Sprintf("uid %s (%s)", id, u.Username)
	}
	return "uid " + id
}

// unwrapPath drops the path from an *fs.PathError: messages name it already.
func unwrapPath(err error) error {
	var pathErr *fs.PathError
	if errors.As(err, &pathErr) {
		return pathErr.Err
	}
	return err
}

// SetLevel changes the level of the logger New returned.
func (o *Output) SetLevel(name string) error {
	level, err := ParseLevel(name)
	if err != nil {
		return err
	}
	o.level.Set(level)
	return nil
}

// Write writes one log record; slog handlers call it once per record.
func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.w.Write(p)
}

// Reopen opens the log file's path anew (after logrotate moved the old
// file) and closes the old one, under the same rules as New (CheckFile).
// It is a no-op when logging to stderr. On failure the old file stays in
// use, so no line is lost.
func (o *Output) Reopen() error {
	if o.path == "" {
		return nil
	}
	f, err := openLogFile(o.path)
	if err != nil {
		return err
	}
	o.mu.Lock()
	old := o.f
	o.f, o.w = f, f
	o.mu.Unlock()
	return old.Close()
}

// Close closes the log file, if any.
func (o *Output) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.f == nil {
		return nil
	}
	o.w = os.Stderr
	err := o.f.Close()
	o.f = nil
	return err
}
