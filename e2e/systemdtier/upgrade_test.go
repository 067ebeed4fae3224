//go:build systemdtier

package systemdtier

import (
	"strings"
	"testing"
	"time"
)

// watchdogDropIn shortens the shipped unit's watchdog, so that a master
// that stops pinging it is caught within the check.
const watchdogDropIn = "[Service]\nWatchdogSec=5\n"

// TestSystemdTierUpgrade: `baton upgrade` under systemd with a request loop
// and WatchdogSec=5. The service must go on as one: no request fails, the
// MainPID never changes, systemd never restarts it (NRestarts 0 forty
// seconds later), the new binary serves, and a stop afterwards is as
// graceful as before the upgrade.
//
// It runs in a container of its own.
func TestSystemdTierUpgrade(t *testing.T) {
	c := bootContainer(t)
	installApp(t, c, importDelay)
	c.writeFile(t, "/etc/systemd/system/app.service.d/watchdog.conf", []byte(watchdogDropIn), 0o644)
	c.must(t, "systemctl", "daemon-reload")

	t.Run("upgrade under load with WatchdogSec=5", func(t *testing.T) { checkUpgrade(t, c) })
	t.Run("stop right after an upgrade is graceful", func(t *testing.T) { checkStopAfterUpgrade(t, c) })
}

// freshStart stops the unit however it is, and starts it again.
func freshStart(t *testing.T, c *container) {
	t.Helper()
	c.writeFile(t, batonPath, setup(t).baton, 0o755)
	c.exec(2*time.Minute, "systemctl", "stop", unitName)
	c.exec(time.Minute, "systemctl", "reset-failed", unitName)
	c.must(t, "systemctl", "start", unitName)
}

func checkUpgrade(t *testing.T, c *container) {
	freshStart(t, c)
	before := c.show(t, unitName, "MainPID", "NRestarts", "WatchdogUSec")
	st := c.status(t)
	t.Logf("before the upgrade: MainPID %s, NRestarts %s, WatchdogUSec %s, baton %s, generation %d",
		before["MainPID"], before["NRestarts"], before["WatchdogUSec"], st.Version, st.Generation)
	since := time.Now()
	l := c.startLoad(4, 15*time.Second)
	time.Sleep(time.Second)

	// A new binary renamed over the old path, then the upgrade, as the
	// README says.
	c.writeFile(t, batonPath, setup(t).upgraded, 0o755)
	start := time.Now()
	out, err := c.batonAsApp("upgrade", "--pid", pidPath)
	took := time.Since(start)
	right := c.show(t, unitName, "MainPID", "NRestarts", "ActiveState")
	t.Logf("baton upgrade took %v: %v\n%s", took.Round(time.Millisecond), err, strings.TrimSpace(out))
	t.Logf("right after: MainPID %s, NRestarts %s, %s", right["MainPID"], right["NRestarts"], right["ActiveState"])
	if err != nil {
		t.Errorf("baton upgrade failed: %v", err)
	}

	// Forty seconds: eight watchdog periods.
	var changes []string
	last := right
	for time.Since(start) < 40*time.Second {
		time.Sleep(time.Second)
		now := c.show(t, unitName, "MainPID", "NRestarts", "ActiveState", "SubState")
		if now["MainPID"] != last["MainPID"] || now["NRestarts"] != last["NRestarts"] || now["ActiveState"] != last["ActiveState"] {
			changes = append(changes, time.Since(start).Round(time.Second).String()+": MainPID "+now["MainPID"]+
				", NRestarts "+now["NRestarts"]+", "+now["ActiveState"]+"/"+now["SubState"])
		}
		last = now
	}
	res := resultOf(l.Stop())
	after := c.show(t, unitName, "MainPID", "NRestarts", "ActiveState", "SubState", "Result")
	t.Logf("40 s after the upgrade: MainPID %s, NRestarts %s, %s/%s Result=%s; changes: %v; load during the upgrade and the 40 s: %v",
		after["MainPID"], after["NRestarts"], after["ActiveState"], after["SubState"], after["Result"], changes, res)
	if res.failures() != 0 || res.ok == 0 {
		t.Errorf("requests during the upgrade and the 40 s after it: %v", res)
	}
	if after["MainPID"] != before["MainPID"] || right["MainPID"] != before["MainPID"] {
		t.Errorf("MainPID changed: %s before the upgrade, %s right after, %s 40 s later", before["MainPID"], right["MainPID"], after["MainPID"])
	}
	if after["NRestarts"] != "0" {
		t.Errorf("systemd restarted the service %s times in the 40 s after the upgrade", after["NRestarts"])
	}
	if after["ActiveState"] != "active" {
		t.Errorf("the unit is %s/%s 40 s after the upgrade", after["ActiveState"], after["SubState"])
	}
	if out, err := c.batonAsApp("status", "--json", "--pid", pidPath); err != nil || !strings.Contains(out, `"version": "tier-upgraded"`) {
		t.Errorf("the new binary does not serve 40 s after the upgrade: baton status: %v\n%s", err, out)
	}
	if t.Failed() {
		for _, line := range strings.Split(c.journal(since), "\n") {
			if strings.Contains(line, "systemd[1]") || strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") ||
				strings.Contains(line, "upgrade") {
				t.Logf("journal: %s", line)
			}
		}
	}
}

// checkStopAfterUpgrade: systemctl stop at once after an upgrade (well
// within the watchdog's 5 s) is as graceful as any other stop.
func checkStopAfterUpgrade(t *testing.T, c *container) {
	freshStart(t, c)
	before := c.mainPid(t)
	c.writeFile(t, batonPath, setup(t).upgraded, 0o755)
	out, err := c.batonAsApp("upgrade", "--pid", pidPath)
	t.Logf("baton upgrade: %v\n%s", err, strings.TrimSpace(out))
	if err != nil {
		t.Errorf("baton upgrade failed: %v", err)
	}
	t.Logf("MainPID %d before the upgrade, %d when the stop begins", before, c.mainPid(t))
	checkStop(t, c, " after an upgrade")
}
