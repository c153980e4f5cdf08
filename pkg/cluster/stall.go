package cluster

import (
	"fmt"
	"log/slog"
	"time"
)

// This file holds the rule for a stall of forkd itself: SIGSTOP, a frozen VM, a starved machine.
// The clock the deadlines are measured on (CLOCK_MONOTONIC) runs on while forkd does not, so after
// a stall longer than the heartbeat timeout every worker would look dead, although its heartbeats
// wait in the notify socket, sent in time. A deadline that waits for a message from a process
// judges that process; time in which forkd could not read is not the process's fault.
//
// The rule: a stall pushes every deadline that waits for a message back by the stall's length:
// a booting worker's READY=1, a ready worker's heartbeat, the template's reply to a fork or a
// pause, a slot's wait for a template. Each keeps the time it had left when forkd stopped
// running. Deadlines at which forkd acts on its own account are not moved: SIGKILL after the
// shutdown timeout (the worker had its time to drain: it ran), a respawn after its backoff, a
// stray's SIGKILL. The driver measures the stall and steps Stalled before anything else it learned
// on waking, and reads what has arrived before it steps a Tick.

// Stalled reports that forkd itself did not run for For (the driver's loop was not scheduled).
type Stalled struct {
	For time.Duration
}

func (Stalled) isEvent() {}

func (m *Machine) stalled(e Stalled) {
	if e.For <= 0 {
		return
	}
	later := func(t *time.Time) {
		if !t.IsZero() {
			*t = t.Add(e.For)
		}
	}
	for _, w := range m.workers {
		switch w.state {
		case Spawning, Booting, Ready:
			later(&w.deadline)
		}
	}
	for _, s := range m.slots {
		later(&s.awaitTemplate)
	}
	if r := m.rollout; r != nil && (r.pause == pausePending || r.pause == resumePending) {
		later(&r.deadline)
	}
	m.log(slog.LevelWarn, fmt.Sprintf("forkd itself did not run for %s (stopped, or starved of CPU): the deadlines that wait for workers are extended by as much",
		e.For.Round(time.Millisecond)), slog.String("event", "master-stalled"), slog.Duration("stall", e.For))
}
