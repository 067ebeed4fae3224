// Package watch tells when files under some paths have changed, for
// baton's dev mode: it watches directories recursively with inotify
// (fsnotify), ignores names matching patterns, and reports once a burst of
// changes has been quiet for a moment, so an editor's save-rename dance is
// one reload, not five.
package watch

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultIgnore are base-name patterns no one wants a reload for.
var DefaultIgnore = []string{".git", "__pycache__", "*.pyc", "*.swp", "*~", ".#*"}

// Watcher watches paths until Close.
type Watcher struct {
	fs     *fsnotify.Watcher
	ignore []string
}

// Start watches paths (files, or directories with everything below them)
// and calls changed with a changed path once no change came for debounce.
// changed runs on the watcher's own goroutine.
func Start(paths, ignore []string, debounce time.Duration, changed func(path string)) (*Watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch: %w", err)
	}
	w := &Watcher{fs: fw, ignore: ignore}
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

func (w *Watcher) ignored(path string) bool {
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
