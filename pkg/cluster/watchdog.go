package cluster

import (
	"fmt"
	"log/slog"
)

// WatchdogDue tells the machine that systemd's watchdog wants its ping (the driver's ticker, at
// half of WATCHDOG_USEC). The machine sends WATCHDOG=1, unless Config.WatchdogMinReady withholds
// it while too few workers are ready, so that systemd restarts a cluster that stays down.
type WatchdogDue struct{}

func (WatchdogDue) isEvent() {}

func (m *Machine) watchdogDue() {
	if least := m.cfg.WatchdogMinReady; least > 0 {
		ready := m.readyCount()
		if ready < least {
			if !m.watchdogHeld {
				m.log(slog.LevelError, fmt.Sprintf("%d of %d workers ready, fewer than systemd.watchdog_min_ready: no more WATCHDOG=1, so systemd restarts forkd if it stays so",
					ready, m.desired), slog.String("event", "watchdog-withheld"))
				m.watchdogHeld = true
			}
			return
		}
		if m.watchdogHeld {
			m.log(slog.LevelInfo, "enough workers ready again: pinging systemd's watchdog", slog.String("event", "watchdog-resumed"))
			m.watchdogHeld = false
		}
	}
	m.emit(NotifySystemd{State: "WATCHDOG=1"})
}
