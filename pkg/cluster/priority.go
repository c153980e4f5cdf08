package cluster

import "slices"

// This file holds the refork's CPU priority (Config.ReforkNice): while a refork runs, the serving
// workers it is about to replace run at a lower priority, so that its critical path (the
// template's or the mold's readying and forks, the new workers' boot) gets the CPU ahead of the
// traffic they serve meanwhile. They exit once replaced; those a refork does not replace after
// all (it failed, rolled back or was cut short) get their priority back at once, and so do those
// whose drain the refork waits for (restorePriority). The driver
// carries it out (SetPriority) on every thread of the process.

// lowerReplaced lowers the serving workers of the refork's old generation, once each. In mold
// mode it comes once the mold exists, so that the mold does not inherit its source's priority.
func (m *Machine) lowerReplaced(r *rollout) {
	if m.cfg.ReforkNice <= 0 || r.kind != KindRefork || r.failure != nil {
		return
	}
	for _, s := range m.slots[:min(m.desired, len(m.slots))] {
		w := s.worker
		if w == nil || w == m.template || !m.cfg.serves(s.index) || w.lowered || w.pid == 0 ||
			w.state.gone() || w.generation != r.from {
			continue
		}
		w.lowered = true
		m.emit(SetPriority{Worker: w.id, PID: w.pid, Nice: m.cfg.ReforkNice})
	}
}

// restoreKept gives their priority back to the lowered workers that go on serving their slot:
// every one, but those whose slot a refork is still replacing.
func (m *Machine) restoreKept(r *rollout) {
	for _, s := range m.slots {
		w := s.worker
		if w == nil || w.state.gone() || (r != nil && slices.Contains(r.active, s.index)) {
			continue
		}
		m.restorePriority(w)
	}
}

// restorePriority gives a lowered worker its priority back: one that goes on serving, or one
// whose exit a rollout waits for (one stopped before its replacement was ready, within
// max_unavailable, whose drain is on the refork's critical path). The old workers a refork
// replaced drain detached, and stay lowered until they exit.
func (m *Machine) restorePriority(w *worker) {
	if !w.lowered || w.pid == 0 {
		return
	}
	w.lowered = false
	m.emit(SetPriority{Worker: w.id, PID: w.pid, Nice: 0})
}
