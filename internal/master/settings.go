package master

import (
	"io"
	"slices"
)

// A reload re-applies the master's own settings (MasterOptions) as one
// transaction with the new generation: when it starts, whatever the new
// settings need opened is opened next to the old (a control socket at a
// new path, a metrics endpoint on a new address, a watcher of new paths),
// so a setting that cannot be applied refuses the reload with nothing
// changed; when the reload succeeds the new settings take over and the
// old endpoints close; when it fails, what was opened for it is closed
// and the old settings stay. Settings that apply at start only were
// compared before (startOnlyChanges) and refuse the reload by name.

// masterChange is a reload's master settings, prepared.
type masterChange struct {
	opts      MasterOptions
	endpoints endpoints
	// opened are the endpoints and watcher opened for this change: closed
	// if it is discarded.
	opened []io.Closer
	// watcher replaces the running one when watchChanged (nil: none).
	watcher      io.Closer
	watchChanged bool
}

// prepareMasterChange opens what the new settings need and have not got.
// Settings that come from the process rather than the configuration are
// carried over.
func (m *Master) prepareMasterChange(o MasterOptions) (*masterChange, error) {
	o.Listeners, o.PidFile, o.ConfigFile, o.LogFile = m.opts.Listeners, m.opts.PidFile, m.opts.ConfigFile, m.opts.LogFile
	o.Executable, o.Args, o.StartDir, o.Version = m.opts.Executable, m.opts.Args, m.opts.StartDir, m.opts.Version
	c := &masterChange{opts: o}
	eps, opened, err := m.prepareEndpoints(o)
	if err != nil {
		return nil, err
	}
	c.endpoints, c.opened = eps, opened
	if !slices.Equal(o.Watch, m.opts.Watch) || !slices.Equal(o.WatchIgnore, m.opts.WatchIgnore) {
		w, err := m.watch(o.Watch, o.WatchIgnore)
		if err != nil {
			m.closeLater(c.opened)
			return nil, err
		}
		c.watcher, c.watchChanged = w, true
		if w != nil {
			c.opened = append(c.opened, w)
		}
	}
	return c, nil
}

// commitMasterChange makes c's settings the master's.
func (m *Master) commitMasterChange(c *masterChange) {
	old := m.opts
	m.opts = c.opts
	m.commitEndpoints(c.endpoints)
	if c.watchChanged {
		if m.watcher != nil {
			m.closeLater([]io.Closer{m.watcher})
		}
		m.watcher = c.watcher
		m.log.Info("dev mode: now watching", "paths", c.opts.Watch)
	}
	if c.opts.BootNice != old.BootNice {
		m.initBootPriority()
	}
	if c.opts.Subreaper != old.Subreaper {
		m.setSubreaper(c.opts.Subreaper)
	}
	if c.opts.LogLevel != old.LogLevel && m.logOut != nil {
		if err := m.logOut.SetLevel(c.opts.LogLevel); err != nil {
			m.log.Error("cannot change the log level", "err", err)
		}
	}
	if changed := changedMasterSettings(old, c.opts); len(changed) > 0 {
		m.log.Info("reload re-applied master settings", "changed", changed)
	}
}

// discardMasterChange closes what c opened; the old settings stay.
func (m *Master) discardMasterChange(c *masterChange) {
	m.closeLater(c.opened)
}

// changedMasterSettings names the re-applied settings that differ, by
// their configuration keys.
func changedMasterSettings(old, now MasterOptions) []string {
	var keys []string
	add := func(key string, differ bool) {
		if differ {
			keys = append(keys, key)
		}
	}
	add("control", old.ControlPath != now.ControlPath)
	add("metrics_bind", old.MetricsAddr != now.MetricsAddr)
	add("watch", !slices.Equal(old.Watch, now.Watch))
	add("watch_ignore", !slices.Equal(old.WatchIgnore, now.WatchIgnore))
	add("boot_nice", old.BootNice != now.BootNice)
	add("subreaper", old.Subreaper != now.Subreaper)
	add("upgrade_handover", old.Handover != now.Handover)
	add("upgrade_mode", old.UpgradeMode != now.UpgradeMode)
	add("log_level", old.LogLevel != now.LogLevel)
	add("shutdown_delay", old.ShutdownDelay != now.ShutdownDelay)
	return keys
}
