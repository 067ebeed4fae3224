// Package logging builds baton's slog logger and the log file that USR1
// reopens after logrotate moved it.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
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

func openLogFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log file %s: cannot open for writing: %w", path, err)
	}
	return f, nil
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
// file) and closes the old one. It is a no-op when logging to stderr. On
// failure the old file stays in use, so no line is lost.
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
