package worker

import (
	"context"
	"time"
)

// KeepAlive sends WATCHDOG=1 at half the interval the manager asked for
// (WATCHDOG_USEC), for as long as healthy reports true, until ctx ends.
// When healthy fails, pings stop and baton (timeout) or systemd
// (WatchdogSec) replaces the process. It returns at once when no watchdog
// is configured. Run it in its own goroutine:
//
//	go worker.KeepAlive(ctx, func() bool { return db.PingContext(ctx) == nil })
func KeepAlive(ctx context.Context, healthy func() bool) {
	interval, ok := WatchdogInterval()
	if !ok || interval <= 0 {
		return
	}
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	for {
		if healthy == nil || healthy() {
			Watchdog()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
