package sdnotify

import (
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// Systemd is the sending side: baton telling systemd about itself when it
// runs as a Type=notify service. Without NOTIFY_SOCKET every call is a
// no-op, so the master calls it unconditionally.
type Systemd struct{}

// Send sends the assignments as one datagram, like sd_notify(3). It
// reports whether a socket was there to send to.
func (Systemd) Send(assignments ...string) (bool, error) {
	return daemon.SdNotify(false, Datagram(assignments...))
}

// Datagram is the text of one notify message: the assignments, one per
// line, with no empty line (sd_notify(3)'s format).
func Datagram(assignments ...string) string {
	return strings.Join(assignments, "\n")
}

// Reloading is RELOADING=1 with the MONOTONIC_USEC systemd needs to tell
// this reload from an earlier one (Type=notify-reload).
func (s Systemd) Reloading(status string) (bool, error) {
	return s.Send(ReloadingAssignments(status, monotonicUsec())...)
}

// ReloadingAssignments are the lines of the RELOADING=1 message sent at
// usec on CLOCK_MONOTONIC. go-systemd's SdNotifyMonotonicUsec is not used:
// its value ends with a newline, which joined with the other lines made an
// empty line in the datagram.
func ReloadingAssignments(status string, usec uint64) []string {
	return []string{"RELOADING=1", "MONOTONIC_USEC=" + strconv.FormatUint(usec, 10), "STATUS=" + status}
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, the clock systemd
// compares MONOTONIC_USEC with.
func monotonicUsec() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
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
