package master

import (
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/baton-pm/baton/internal/watch"
)

// watchDebounce lets an editor's burst of writes and renames settle into
// one reload.
const watchDebounce = 300 * time.Millisecond

// startWatching is dev mode: a change under a watched path reloads, with
// the same readiness gating as HUP, so a broken edit leaves the old
// workers serving. A reload that changes watch or watch_ignore re-arms
// it (settings.go).
func (m *Master) startWatching() error {
	w, err := m.watch(m.opts.Watch, m.opts.WatchIgnore)
	if err != nil {
		return err
	}
	m.watcher = w
	return nil
}

// watch starts watching paths, or returns nil when there are none. baton's
// own log file and the files its stdout and stderr go to are ignored
// whatever the patterns: every reload writes to them, so with them inside
// a watched directory (`baton run --watch . > out.txt 2>&1`) each log line
// would be a change, and each reload would cause the next.
func (m *Master) watch(paths, ignore []string) (io.Closer, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	if len(ignore) == 0 {
		ignore = watch.DefaultIgnore
	}
	files := slices.Clone(m.outputFiles)
	if m.opts.LogFile != "" {
		files = append(files, m.opts.LogFile)
	}
	w, err := watch.Start(paths, ignore, files, watchDebounce, func(path string) {
		m.post(func() {
			m.log.Info("file changed; reloading", "path", path)
			m.requestReload(nil)
		})
	})
	if err != nil {
		return nil, err
	}
	m.log.Info("dev mode: watching for changes", "paths", paths, "ignored_files", files)
	return w, nil
}

// ownOutputFiles are the regular files baton's stdout and stderr point
// to (shell redirections), read from /proc/self/fd; pipes, terminals and
// sockets are left out.
func ownOutputFiles() []string {
	var files []string
	for _, fd := range []string{"1", "2"} {
		link := filepath.Join("/proc/self/fd", fd)
		info, err := os.Stat(link)
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		target, err := os.Readlink(link)
		if err != nil || slices.Contains(files, target) {
			continue // 2>&1: one file
		}
		files = append(files, target)
	}
	return files
}
