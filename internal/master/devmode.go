package master

import (
	"time"

	"github.com/baton-pm/baton/internal/watch"
)

// watchDebounce lets an editor's burst of writes and renames settle into
// one reload.
const watchDebounce = 300 * time.Millisecond

// startWatching is dev mode: a change under a watched path reloads, with
// the same readiness gating as HUP, so a broken edit leaves the old
// workers serving. Paths are fixed at start.
func (m *Master) startWatching() error {
	if len(m.opts.Watch) == 0 {
		return nil
	}
	ignore := m.opts.WatchIgnore
	if len(ignore) == 0 {
		ignore = watch.DefaultIgnore
	}
	w, err := watch.Start(m.opts.Watch, ignore, watchDebounce, func(path string) {
		m.post(func() {
			m.log.Info("file changed; reloading", "path", path)
			m.requestReload(nil)
		})
	})
	if err != nil {
		return err
	}
	m.endpointClosers = append(m.endpointClosers, func() { w.Close() })
	m.log.Info("dev mode: watching for changes", "paths", m.opts.Watch)
	return nil
}
