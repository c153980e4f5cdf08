package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// This file holds recycling: a worker that has served MaxRequests (plus its own jitter), or
// whose private memory (Private_Dirty, what it wrote and shares with no other process; never RSS,
// which counts the pages it shares with the template in full) has passed MaxPrivate, is replaced
// gracefully. Its replacement starts first, forked from the template in fork-worker mode, and
// the old worker drains once the new one is ready, within max_surge; with max_surge = 0 the old
// worker stops first, within max_unavailable. A worker younger than MinLifetime is never recycled,
// nor is any while an operation (refork, reload, hot restart) runs or waits: an operation cancels
// the replacements under way, since it replaces the workers itself.

// RecyclePolicy configures recycling; the zero value recycles nothing.
type RecyclePolicy struct {
	// MaxRequests recycles a worker once it has reported (X_FORKD_REQUESTS) this many requests
	// plus its jitter: a number in 0..MaxRequestsJitter of its own, so that workers started
	// together are not recycled together. Zero: never for requests.
	MaxRequests, MaxRequestsJitter uint64
	// MaxPrivate recycles a worker whose Private_Dirty passed this many bytes in a memory sample.
	// Zero: never for memory.
	MaxPrivate uint64
	// MinLifetime is the least time from a worker's spawn to its recycling.
	MinLifetime time.Duration
}

func (p RecyclePolicy) validate() error {
	if p.MinLifetime < 0 {
		return errors.New("cluster: Recycle.MinLifetime must not be negative")
	}
	return nil
}

// Why forkd recycled a worker, in WorkerExited and WorkerRecycling: for its requests
// (Recycle.MaxRequests), or for its private memory (Recycle.MaxPrivate). A worker that recycles
// itself (STOPPING=1, then exit 0) is ExitRecycled.
const (
	ExitMaxRequests ExitReason = "max-requests"
	ExitMemoryLimit ExitReason = "memory-limit"
)

// WorkerRecycling records forkd's decision to recycle a worker, for Reason (ExitMaxRequests or
// ExitMemoryLimit), with the figure that decided it.
type WorkerRecycling struct {
	Slot, Generation, PID int
	Reason                ExitReason
	Requests              uint64
	PrivateDirty          uint64
}

func (WorkerRecycling) isHappening() {}

// requestLimit is the requests after which w is recycled: MaxRequests plus w's own jitter.
func (p RecyclePolicy) requestLimit(w *worker) uint64 {
	if p.MaxRequestsJitter == 0 {
		return p.MaxRequests
	}
	// splitmix64 of the worker's ID: deterministic, and spread even for consecutive IDs.
	z := uint64(w.id) + 0x9e3779b97f4a7c15
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	z ^= z >> 31
	return p.MaxRequests + z%(p.MaxRequestsJitter+1)
}

// recycleReason says why w is due for recycling, or "" when it is not.
func (m *Machine) recycleReason(w *worker) (ExitReason, string) {
	p := m.cfg.Recycle
	if m.now.Sub(w.spawnedAt) < p.MinLifetime {
		return "", ""
	}
	if limit := p.requestLimit(w); p.MaxRequests > 0 && w.requests >= limit {
		return ExitMaxRequests, fmt.Sprintf("it served %d requests (max_requests %d with its jitter)", w.requests, limit)
	}
	if mem := w.memory; p.MaxPrivate > 0 && mem != nil && mem.PrivateDirty > p.MaxPrivate {
		return ExitMemoryLimit, fmt.Sprintf("its private memory is %s (max_private %s)", mib(mem.PrivateDirty), mib(p.MaxPrivate))
	}
	return "", ""
}

// recycling counts the workers being recycled: replacements under way, and old workers draining
// or stopping for it.
func (m *Machine) recycling() (replacing, stopping int) {
	for _, w := range m.workers {
		if _, _, replacement := m.ownerSlot(w); replacement && m.rollout == nil {
			replacing++
		}
		if w.recycled != "" && w.state.gone() {
			stopping++
		}
	}
	return replacing, stopping
}

// maybeRecycle starts recycling the workers that are due, within the rollout budget: a
// replacement first, within max_surge; or, with max_surge 0, a stop first, within
// max_unavailable.
func (m *Machine) maybeRecycle() {
	p := m.cfg.Recycle
	if p.MaxRequests == 0 && p.MaxPrivate == 0 || m.phase != PhaseRunning || m.busy() || len(m.ops) > 0 {
		return
	}
	replacing, stopping := m.recycling()
	for _, s := range m.slots[:min(m.desired, len(m.slots))] {
		w := s.worker
		if w == nil || w.state != Ready || s.next != nil || s.retiring || w.recycled != "" || m.now.Before(s.recycleAfter) {
			continue
		}
		if !m.cfg.serves(s.index) {
			continue // the template in mold mode: no request ages it, and its memory is what the others share
		}
		reason, why := m.recycleReason(w)
		if reason == "" {
			continue
		}
		forked := m.cfg.ForkWorker && !m.execMode && s.index > 0
		surge := m.cfg.MaxSurge > 0
		switch {
		case forked && m.template == nil:
			continue // wait for a template to fork the replacement from
		case surge && replacing+stopping >= m.cfg.MaxSurge, !surge && stopping >= m.cfg.MaxUnavailable:
			return
		}
		w.recycled = reason
		attrs := append(m.workerAttrs(w, "worker-recycling"), slog.String("reason", string(reason)))
		m.record(WorkerRecycling{Slot: s.index, Generation: w.generation, PID: w.pid, Reason: reason, Requests: w.requests,
			PrivateDirty: w.memoryPrivate()})
		if surge {
			m.log(slog.LevelInfo, fmt.Sprintf("recycling worker %d: %s; its replacement starts first", s.index, why), attrs...)
			replacing++
			m.place(s, true)
			continue
		}
		m.log(slog.LevelInfo, fmt.Sprintf("recycling worker %d: %s; it stops first (max_surge 0)", s.index, why), attrs...)
		stopping++
		w.expected, w.killReason = true, reason
		m.terminate(w, "recycled: "+string(reason))
	}
}

// recycledReplaced stops the worker a recycling replacement took the slot from; it reports false
// when old was not being recycled.
func (m *Machine) recycledReplaced(s *slot, old *worker) bool {
	if old == nil || old.recycled == "" {
		return false
	}
	s.recycleFailures = 0
	old.killReason = old.recycled
	m.dismiss(old, "recycled: "+string(old.recycled))
	return true
}

// recycleFailed takes the failure of a recycling replacement that did not become ready: the old
// worker keeps serving, and is recycled again only after a backoff, so that a replacement that
// cannot boot does not spawn in a loop.
func (m *Machine) recycleFailed(s *slot, how string) {
	old := s.worker
	if old == nil || old.recycled == "" {
		return
	}
	old.recycled = ""
	s.recycleFailures++
	s.recycleAfter = m.now.Add(max(m.backoff(s.recycleFailures+1), m.cfg.BackoffMin))
	m.log(slog.LevelWarn, fmt.Sprintf("recycling worker %d: its replacement did not become ready (%s); it keeps serving, next try in %s",
		s.index, how, s.recycleAfter.Sub(m.now)), m.workerAttrs(old, "recycle-failed")...)
}

// cancelRecycling calls off the replacements under way, because an operation replaces the
// workers itself: the old workers keep serving until it does.
func (m *Machine) cancelRecycling(why string) {
	for _, s := range m.slots {
		if s.next == nil || s.worker == nil || s.worker.recycled == "" {
			continue
		}
		s.worker.recycled = ""
		w := s.next
		s.next = nil // detached: it drains on its own
		m.dismiss(w, why)
	}
}

// memoryPrivate is w's Private_Dirty at the last sample, 0 before one.
func (w *worker) memoryPrivate() uint64 {
	if w.memory == nil {
		return 0
	}
	return w.memory.PrivateDirty
}
