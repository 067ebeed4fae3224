package sdnotify

import (
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Systemd is the sending side: baton telling systemd about itself when it
// runs as a Type=notify service. Without NOTIFY_SOCKET every call is a
// no-op, so the master calls it unconditionally.
type Systemd struct{}

// Send sends the assignments as one datagram, like sd_notify(3). It
// reports whether a socket was there to send to.
func (Systemd) Send(assignments ...string) (bool, error) {
	return daemon.SdNotify(false, strings.Join(assignments, "\n"))
}

// Reloading is RELOADING=1 with the MONOTONIC_USEC systemd needs to tell
// this reload from an earlier one (Type=notify-reload).
func (s Systemd) Reloading(status string) (bool, error) {
	return s.Send("RELOADING=1", daemon.SdNotifyMonotonicUsec(), "STATUS="+status)
}

// WatchdogInterval is how often systemd wants WATCHDOG=1 (half of
// WATCHDOG_USEC, as sd_watchdog_enabled(3) advises), or 0 when its
// watchdog is off for this process.
func (Systemd) WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil || d <= 0 {
		return 0
	}
	return d / 2
}
