package master

import (
	"io"
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

// watch starts watching paths, or returns nil when there are none.
func (m *Master) watch(paths, ignore []string) (io.Closer, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	if len(ignore) == 0 {
		ignore = watch.DefaultIgnore
	}
	w, err := watch.Start(paths, ignore, watchDebounce, func(path string) {
		m.post(func() {
			m.log.Info("file changed; reloading", "path", path)
			m.requestReload(nil)
		})
	})
	if err != nil {
		return nil, err
	}
	m.log.Info("dev mode: watching for changes", "paths", paths)
	return w, nil
}
