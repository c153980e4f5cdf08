package cluster

import (
	"fmt"
	"log/slog"
)

// This file holds mold mode (Config.Mold, refork_from = "warmest"): slot 0 holds a template that
// never serves, and Workers counts the serving slots 1..n beside it. A refork asks the serving
// worker that has done the most work to fork a mold, a new template made of its warm heap,
// double-forked so that it is the master's child; the mold replaces the template in slot 0 (a
// surge: it serves nothing, so it is no capacity above n), and the serving workers are then
// replaced by forks of it with the rollout's surge, so n serve throughout. A serving worker
// forks a mold at any moment, without waiting for the requests it has in flight, so a refork
// never waits for a slow request. Every failure (no molded in time, mold_failed, the mold's
// death before READY=1, the source's before the mold exists) ends the refork with the old
// template kept; a source whose SDK does not know the op (it answers error) makes this refork
// fork from the old template instead, as in template mode. A reload's warm-up asks for a mold too
// (warm.go), and forks from the cold new template on any of these failures.

// MoldSource is where a template made by a mold was forked from: the serving worker's slot and
// PID, and the requests it had served when it was asked for the mold.
type MoldSource struct {
	Slot, PID int
	Requests  uint64
}

// moldRequest is the mold a refork asked a serving worker for.
type moldRequest struct {
	source WorkerID
	from   MoldSource
}

// slotsFor is the number of slots that n serving workers take: one more in mold mode, for the
// template.
func (c *Config) slotsFor(n int) int {
	if c.Mold {
		return n + 1
	}
	return n
}

// servingOf is the number of serving workers among n slots.
func (c *Config) servingOf(n int) int {
	if c.Mold {
		return max(n-1, 0)
	}
	return n
}

// serves reports whether slot i's workers serve requests: all but the template's in mold mode.
func (c *Config) serves(i int) bool { return !c.Mold || i != 0 }

// warmest picks the source of a mold: the ready serving worker of the current generation that
// has served the most requests, then the oldest, then the lowest slot. Nil when none is ready.
func (m *Machine) warmest() *worker {
	var best *worker
	for _, s := range m.slots[1:min(m.desired, len(m.slots))] {
		w := s.worker
		if w == nil || w.state != Ready || w.generation != m.generation || s.next != nil {
			continue
		}
		if best == nil || w.requests > best.requests || (w.requests == best.requests && w.spawnedAt.Before(best.spawnedAt)) {
			best = w
		}
	}
	return best
}

// startMoldRefork plans a refork in mold mode: slot 0 first, from a mold of the warmest serving
// worker, then the serving slots from the mold. Without a ready serving worker, the refork forks
// from the template as it is.
func (r *rollout) startMoldRefork(m *Machine) {
	src := m.warmest()
	if src == nil {
		m.log(slog.LevelWarn, "refork: no serving worker is ready to fork a mold: forking the workers from the template as it is",
			slog.String("event", "mold-fallback"), slog.Int("generation", r.to))
		for i := 1; i < m.desired; i++ {
			r.queue = append(r.queue, i)
		}
		m.lowerReplaced(r)
		return
	}
	r.mold = &moldRequest{source: src.id, from: MoldSource{Slot: src.slot, PID: src.pid, Requests: src.requests}}
	for i := 0; i < m.desired; i++ {
		r.queue = append(r.queue, i)
	}
	r.zeroFirst = true
	m.log(slog.LevelInfo, fmt.Sprintf("refork: worker %d, which served the most requests (%d), forks the new template (a mold)",
		src.slot, src.requests), m.workerAttrs(src, "mold-asked")...)
}

// placeTemplate starts slot 0's replacement in mold mode: the mold a refork asked for, or an exec'd
// worker 0 (a reload, a hot restart's phased restart).
func (r *rollout) placeTemplate(m *Machine, s *slot) {
	if r.mold == nil {
		m.place(s, true)
		return
	}
	src := m.workers[r.mold.source]
	if src == nil || src.state != Ready {
		m.rolloutFailed(fmt.Sprintf("worker %d, which was to fork the mold, is no longer ready", r.mold.from.Slot))
		return
	}
	w := m.spawnFrom(s, true, src, true)
	from := r.mold.from
	w.source = &from
}

// moldSourceGone ends a refork whose mold's source exited before the mold existed: the mold will
// not come. Once the mold has a PID it is the master's own child, and the source's exit is only
// that of an old worker.
func (m *Machine) moldSourceGone(src *worker) {
	for _, w := range m.sortedWorkers() {
		if w.mold && w.template == src.id && w.state == Spawning {
			m.emit(CancelSpawn{Worker: w.id})
			m.forget(w)
			reason := fmt.Sprintf("worker %d, which was forking the mold, exited before the mold existed", src.slot)
			if !m.rollout.moldLost(m, reason) {
				m.rolloutFailed(reason)
			}
		}
	}
}

// moldFailed ends the refork whose mold could not be forked (mold_failed, or no answer in time):
// nothing of it runs, and the old template stays.
func (m *Machine) moldFailed(w *worker, reason string) {
	m.emit(CancelSpawn{Worker: w.id})
	m.forget(w)
	if !m.rollout.moldLost(m, reason) {
		m.rolloutFailed("no mold: " + reason)
	}
}

// moldRefused takes a source's answer that it cannot fork a mold (its SDK does not know the op):
// this refork forks the serving workers from the template as it is, as in template mode.
func (m *Machine) moldRefused(e MoldRefused) {
	w, ok := m.workers[e.Worker]
	if !ok || !w.mold || w.state != Spawning {
		return
	}
	src := m.workers[w.template]
	m.emit(CancelSpawn{Worker: w.id})
	m.forget(w)
	level := slog.LevelWarn
	if m.moldRefusals > 0 {
		level = slog.LevelDebug // said once: the app's SDK does not change without a reload
	}
	m.moldRefusals++
	slotName := "the source"
	if src != nil {
		slotName = fmt.Sprintf("worker %d", src.slot)
	}
	if m.rollout.moldLost(m, fmt.Sprintf("%s cannot fork one, its SDK answered: %s", slotName, e.Err)) {
		return
	}
	m.log(level, fmt.Sprintf("refork: %s cannot fork a mold (its SDK answered: %s): forking the workers from the template as it is, "+
		"which is worker 0 of the previous refork or release; upgrade the SDK for reforks from the warmest worker", slotName, e.Err),
		slog.String("event", "mold-fallback"), slog.Int("generation", w.generation))
	r := m.rollout
	if r == nil || r.failure != nil {
		return
	}
	r.mold, r.zeroFirst = nil, false
	r.deactivate(0)
	m.lowerReplaced(r)
}
