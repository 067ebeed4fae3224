// Package watch tells when files under some paths have changed, for
// baton's dev mode: it watches directories recursively with inotify
// (fsnotify), ignores names matching patterns, and reports once a burst of
// changes has been quiet for a moment, so an editor's save-rename dance is
// one reload, not five. Files named exactly (baton's own log and output)
// are ignored whatever the patterns: a reload writes to them, and a write
// to them must not reload again.
package watch

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultIgnore are base-name patterns no one wants a reload for: version
// control, bytecode, editors' swap, backup and lock files, and logs (an
// app, or baton with its output redirected, writes them all the time).
var DefaultIgnore = []string{".git", "__pycache__", "*.pyc", "*.swp", "*~", ".#*", "*.log"}

// Watcher watches paths until Close.
type Watcher struct {
	fs     *fsnotify.Watcher
	ignore []string
	// files are the files ignored by name, as resolved paths.
	files map[string]bool
}

// Start watches paths (files, or directories with everything below them)
// and calls changed with a changed path once no change came for debounce.
// Names matching an ignore pattern, and the files in ignoreFiles, are left
// out. changed runs on the watcher's own goroutine.
func Start(paths, ignore, ignoreFiles []string, debounce time.Duration, changed func(path string)) (*Watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	w := &Watcher{fs: fw, ignore: ignore, files: map[string]bool{}}
	for _, f := range ignoreFiles {
		w.files[resolve(f)] = true
	}
	for _, p := range paths {
		if err := w.add(p); err != nil {
			fw.Close()
			return nil, err
		}
	}
	go w.run(debounce, changed)
	return w, nil
}

// Close stops watching.
func (w *Watcher) Close() error { return w.fs.Close() }

// add watches path, and every directory below it that is not ignored.
func (w *Watcher) add(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("watch %s: %w", path, err)
	}
	if !info.IsDir() {
		return w.fs.Add(path)
	}
	// WalkDir does not follow a symbolic link, not even the root: a
	// watched directory reached through one (a symlinked checkout,
	// /tmp on some systems) would not be watched at all.
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	return filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if p != path && w.ignored(p) {
			return filepath.SkipDir
		}
		if err := w.fs.Add(p); err != nil {
			return fmt.Errorf("watch %s: %w", p, err)
		}
		return nil
	})
}

// resolve is path made absolute, with its directory's symbolic links
// resolved (the file itself may not exist yet, or any more), so that one
// file named two ways (./out.txt, /tmp/x/out.txt) is one.
func resolve(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return filepath.Clean(path)
	}
	dir, base := filepath.Split(abs)
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		return filepath.Join(real, base)
	}
	return abs
}

func (w *Watcher) ignored(path string) bool {
	if len(w.files) > 0 && w.files[resolve(path)] {
		return true
	}
	base := filepath.Base(path)
	for _, pattern := range w.ignore {
		if ok, _ := filepath.Match(pattern, base); ok {
			return true
		}
	}
	return false
}

func (w *Watcher) run(debounce time.Duration, changed func(string)) {
	var quiet <-chan time.Time
	var last string
	for {
		select {
		case ev, ok := <-w.fs.Events:
			if !ok {
				return
			}
			if w.ignored(ev.Name) || ev.Op == fsnotify.Chmod {
				continue
			}
			if ev.Op.Has(fsnotify.Create) {
				if info, err := os.Stat(ev.Name); err == nil && info.IsDir() {
					_ = w.add(ev.Name) // a new directory: watch it too
				}
			}
			last, quiet = ev.Name, time.After(debounce)
		case <-quiet:
			quiet = nil
			changed(last)
		case _, ok := <-w.fs.Errors:
			if !ok {
				return
			}
		}
	}
}
