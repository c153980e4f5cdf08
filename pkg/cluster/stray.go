package cluster

import (
	"fmt"
	"log/slog"
	"slices"
	"syscall"
	"time"
)

// This file holds strays: processes forkd started that it no longer tracks as workers. A worker's
// tree is more than the worker: a shell script's server child, a daemonized helper. When the
// worker is gone, what is left of its tree must not serve on unsupervised, with old code, holding
// the listening sockets; and forkd must not exit while any of it runs. The driver finds two kinds:
//
//   - an orphan: a child the master inherited as a subreaper (a worker's child whose parent died)
//     that is no worker and no helper of the master's;
//   - a group: the process group of a worker (or of an orphan) that has exited while other
//     members of the group live on.
//
// The machine stops a stray as it stops a worker: SIGTERM, then SIGKILL after the shutdown
// timeout, and the cluster does not stop before every stray is gone.

// StrayFound reports a stray. PID is the orphan's PID, or, with Group, the group's ID (the PID of
// its exited leader). For a worker's group, the driver steps it before the worker's Exited, so a
// group already told to stop with the worker keeps the worker's deadline.
type StrayFound struct {
	PID   int
	Group bool
}

// GroupEmptied reports that a stray group has no member left. An orphan's end is its Exited.
type GroupEmptied struct {
	PGID int
}

// SignalStray asks the driver to signal a stray: an orphan (with its own process group, if it
// leads one holding no worker), or every member of a stray group.
type SignalStray struct {
	PID    int
	Group  bool
	Signal syscall.Signal
}

func (StrayFound) isEvent()   {}
func (GroupEmptied) isEvent() {}
func (SignalStray) isAction() {}

type strayKey struct {
	pid   int
	group bool
}

// stray is a stray being stopped.
type stray struct {
	// deadline is when it gets SIGKILL; zero once it has.
	deadline time.Time
	// sigkilled: SIGKILL was sent; only its end is left to wait for.
	sigkilled bool
}

func (k strayKey) String() string {
	if k.group {
		return fmt.Sprintf("process group %d", k.pid)
	}
	return fmt.Sprintf("orphan pid %d", k.pid)
}

func (m *Machine) strayFound(e StrayFound) {
	k := strayKey{pid: e.PID, group: e.Group}
	if _, known := m.strays[k]; known || e.PID <= 0 {
		return
	}
	s := &stray{}
	m.strays[k] = s
	attrs := []slog.Attr{slog.String("event", "stray-found"), slog.Int("pid", e.PID), slog.Bool("group", e.Group)}
	what := fmt.Sprintf("pid %d, a child forkd inherited (a worker's child whose parent exited), is no worker", e.PID)
	if e.Group {
		what = fmt.Sprintf("process group %d outlived its leader", e.PID)
		if w, ok := m.byPID[e.PID]; ok {
			what = fmt.Sprintf("worker %d's process group (pgid %d) outlives the worker", w.slot, e.PID)
			attrs = append(attrs, slog.Int("worker", w.slot))
			// The group got the worker's signals: a SIGKILL stays sent, a SIGTERM keeps its time.
			switch {
			case w.state == Killing:
				s.sigkilled = true
				m.log(slog.LevelWarn, what+": it got SIGKILL with the worker", attrs...)
				return
			case w.state == Stopping && w.stopAsked == "SIGTERM":
				s.deadline = w.deadline
				m.log(slog.LevelWarn, what+": it got SIGTERM with the worker; SIGKILL follows at the worker's deadline", attrs...)
				return
			}
		}
	}
	if (m.phase == PhaseStopping && m.immediate) || m.cfg.ShutdownTimeout == 0 {
		m.log(slog.LevelWarn, what+": SIGKILL", attrs...)
		m.killStray(k, s)
		return
	}
	s.deadline = m.now.Add(m.cfg.ShutdownTimeout)
	m.log(slog.LevelWarn, fmt.Sprintf("%s: stopping it (SIGTERM, SIGKILL after %s)", what, m.cfg.ShutdownTimeout), attrs...)
	m.emit(SignalStray{PID: k.pid, Group: k.group, Signal: syscall.SIGTERM})
}

func (m *Machine) killStray(k strayKey, s *stray) {
	if s.sigkilled {
		return
	}
	s.sigkilled = true
	s.deadline = time.Time{}
	m.emit(SignalStray{PID: k.pid, Group: k.group, Signal: syscall.SIGKILL})
}

// strayGone forgets a stray that has ended, and reports whether k was one.
func (m *Machine) strayGone(k strayKey, how string) bool {
	if _, ok := m.strays[k]; !ok {
		return false
	}
	delete(m.strays, k)
	m.log(slog.LevelInfo, fmt.Sprintf("stray %s is gone: %s", k, how), slog.String("event", "stray-gone"),
		slog.Int("pid", k.pid), slog.Bool("group", k.group))
	return true
}

// tickStrays sends SIGKILL to the strays whose shutdown timeout has passed.
func (m *Machine) tickStrays() {
	for _, k := range m.sortedStrays() {
		s := m.strays[k]
		if s.deadline.IsZero() || m.now.Before(s.deadline) {
			continue
		}
		m.log(slog.LevelWarn, fmt.Sprintf("stray %s did not exit within %s of SIGTERM: SIGKILL", k, m.cfg.ShutdownTimeout),
			slog.String("event", "stray-timeout"), slog.Int("pid", k.pid), slog.Bool("group", k.group))
		m.killStray(k, s)
	}
}

// killAllStrays is an immediate stop's SIGKILL to every stray.
func (m *Machine) killAllStrays() {
	for _, k := range m.sortedStrays() {
		m.killStray(k, m.strays[k])
	}
}

func (m *Machine) sortedStrays() []strayKey {
	keys := make([]strayKey, 0, len(m.strays))
	for k := range m.strays {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b strayKey) int {
		if a.pid != b.pid {
			return a.pid - b.pid
		}
		if a.group == b.group {
			return 0
		}
		if a.group {
			return 1
		}
		return -1
	})
	return keys
}
