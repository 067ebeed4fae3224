package master

import (
	"fmt"
	"strconv"
)

// The master reports to systemd (Type=notify) at each step of its life:
// READY=1 once the first generation is ready, RELOADING=1 and READY=1
// around every reload, STOPPING=1 when it shuts down, and STATUS= lines
// that `systemctl status` shows. Workers never see systemd's socket.

// tellSystemd sends assignments; failures are logged once, not fatal.
func (m *Master) tellSystemd(assignments ...string) {
	if _, err := m.world.systemd.Send(assignments...); err != nil && !m.systemdFailed {
		m.systemdFailed = true
		m.log.Warn("cannot notify systemd", "err", err)
	}
}

// readyStatus is the STATUS= text for a serving master.
func (m *Master) readyStatus() string {
	n := 0
	for _, w := range m.workers {
		if w.gen == m.current && w.state == ready {
			n++
		}
	}
	return fmt.Sprintf("STATUS=generation %d: %d/%d workers ready", m.current.num, n, m.current.size)
}

// notifyProgress sends READY=1 the first time the whole first generation
// is ready; later calls refresh STATUS=.
func (m *Master) notifyProgress() {
	if m.current == nil || m.shutdown != running {
		return
	}
	if !m.systemdReady {
		if !m.current.allReady() {
			return
		}
		m.systemdReady = true
		releaseMemory() // start-up's garbage (probing /proc for readiness) is done with
		if m.upgradePipe != nil {
			// Started by an upgrade: this master is the service's main
			// process from now on (the unit needs NotifyAccess=all).
			m.tellSystemd("MAINPID="+strconv.Itoa(m.pid), "READY=1", m.readyStatus())
			m.reportReadyToOldMaster()
			return
		}
		m.tellSystemd("READY=1", m.readyStatus())
		return
	}
	if !m.reloading() {
		m.tellSystemd(m.readyStatus())
	}
}

func (m *Master) notifyReloading(gen int) {
	if _, err := m.world.systemd.Reloading(fmt.Sprintf("reloading to generation %d", gen)); err != nil && !m.systemdFailed {
		m.systemdFailed = true
		m.log.Warn("cannot notify systemd", "err", err)
	}
}

// notifyReloadEnd tells systemd the reload is over, however it ended; the
// service serves either way.
func (m *Master) notifyReloadEnd(res ReloadResult) {
	result := "succeeded"
	if !res.OK {
		result = "failed: " + res.Reason
	}
	m.tellSystemd("READY=1", m.readyStatus()+fmt.Sprintf("; reload of generation %d %s", res.Generation, result))
}

// startWatchdog pings systemd's watchdog from the master's own loop, so a
// hung loop is noticed.
func (m *Master) startWatchdog() {
	every := m.world.systemd.WatchdogInterval()
	if every <= 0 {
		return
	}
	var ping func()
	ping = func() {
		m.tellSystemd("WATCHDOG=1")
		m.after(every, ping)
	}
	ping()
}
