package cluster

import (
	"cmp"
	"slices"
	"time"
)

// Status is a snapshot of the cluster for the control API and forkctl.
type Status struct {
	Phase Phase
	// Rollout names the operation in progress (KindRestart: a hot restart before its exec, or the
	// phased restart after it), or is NoRollout. Queued lists the operations waiting
	// behind it, in order; LastRollout says how the last one ended.
	Rollout     RolloutKind
	Queued      []RolloutKind
	LastRollout RolloutResult
	Generation  int
	Desired     int
	Ready       int
	// Forking reports fork-worker mode with a template to fork from. Mold: mold mode, where
	// Desired and Ready count the serving workers, the template aside.
	Forking, Mold bool
	// Dropped counts datagrams on the notify sockets that came from no worker (or another uid) or
	// did not parse; Late those from workers that had exited when they were read.
	Dropped uint64
	Late    uint64
	// Strays counts the processes forkd started and no longer tracks (orphans, what is left of a
	// worker's process group) that it is stopping.
	Strays int
	// Decay is the state of the refork trigger that follows the workers' memory.
	Decay DecayStatus
	// WarmUp is the rollout's warm-up under way (fork_worker.warm_up); nil when none runs.
	WarmUp *WarmUpStatus
	// HeapSize is the heap size the last exec'd template reported (nil: none did), and
	// HeapSizeCarried whether the next worker 0 forkd execs boots with it (heapsize.go).
	HeapSize        *HeapSize
	HeapSizeCarried bool
	StatusLine      string
	Workers         []WorkerStatus
}

// WarmUpStatus is a warm-up under way: the new template serves alone (in mold mode, the first new
// serving worker, which then forks the mold), and the rollout forks the others from it once the
// worker counted (Slot, PID; ID 0 once it is gone) has served Requests
// since the warm-up began (Served so far; Requests 0: none, it waits Until), at Until at the
// latest (max_wait), or at IdleUntil if no worker reports a new request before (WarmUpIdle after
// the last report). Mold says the worker warming up is a serving worker that forks a mold when it
// ends, which the others are forked from.
type WarmUpStatus struct {
	Worker           WorkerID
	Slot, PID        int
	Served, Requests uint64
	Until, IdleUntil time.Time
	Mold             bool
}

// WorkerStatus describes one worker process, or a slot without one. During a rollout a slot may
// have two processes: its current worker and its replacement (Replacement).
type WorkerStatus struct {
	Index      int
	ID         WorkerID // 0 when the slot has no process
	PID        int
	Generation int
	// State is the worker's state ("booting", "ready", ...); for a slot without a process it is
	// "backoff" while the slot waits to respawn after consecutive crashes, "waiting" while it waits
	// for a template to fork from, else "exited".
	State string
	// Template: this worker is the template the others are forked from. Forked: the template forked
	// it (else it was exec'd). NonServing: it serves no request (the template in mold mode, or
	// its replacement).
	Template, Forked, NonServing bool
	// Source is where a template made by a mold was forked from; nil for one that was exec'd.
	Source *MoldSource
	// Replacement: a rollout's new worker for the slot, not yet ready. Detached: an old worker
	// draining after its slot was given to another.
	Replacement, Detached bool
	SpawnedAt             time.Time
	ReadyAt               time.Time
	Restarts              int
	Crashes               int // consecutive
	StatusLine            string
	Requests              uint64
	// Busy is the worker's threads serving a request, as it last said (X_FORKD_BUSY); nil when it
	// never did.
	Busy      *int
	LastExit  string
	NextSpawn time.Time
	Retiring  bool
	// Memory is the process's memory at the last sample that read it; nil before.
	Memory *MemoryFigures
}

// Status returns a snapshot of the cluster.
func (m *Machine) Status() Status {
	st := Status{
		Phase:      m.phase,
		Generation: m.generation,
		Forking:    m.template != nil,
		Mold:       m.cfg.Mold,
		Dropped:    m.dropped,
		Strays:     len(m.strays),
		Late:       m.late,
		StatusLine: m.lastStatus,
		Decay:      m.decayStatus(),
	}
	st.Ready, st.Desired = m.servingReady()
	if h := m.heapSize; h != nil {
		reported := *h
		st.HeapSize, st.HeapSizeCarried = &reported, m.cfg.CarryHeapSize && m.cfg.HeapSizeSet == ""
	}
	if m.rollout != nil {
		if p, ok := m.rollout.warmUpProgress(m); ok {
			st.WarmUp = &WarmUpStatus{Served: p.served, Requests: p.need, Until: p.until, IdleUntil: p.idleAt,
				Mold: m.rollout.moldStep == moldStepWarming}
			if w := p.worker; w != nil {
				st.WarmUp.Worker, st.WarmUp.Slot, st.WarmUp.PID = w.id, w.slot, w.pid
			}
		}
	}
	st.Rollout, st.LastRollout = m.current(), m.last
	for _, o := range m.ops {
		st.Queued = append(st.Queued, o.kind)
	}
	for _, s := range m.slots {
		if s.retiring && s.worker == nil && s.next == nil {
			continue // drained, waiting for the slots above it to drain too
		}
		base := WorkerStatus{
			Index:     s.index,
			Restarts:  s.restarts,
			Crashes:   s.failures,
			LastExit:  s.lastExit,
			NextSpawn: s.nextSpawn,
			Retiring:  s.retiring,
		}
		if s.worker == nil {
			base.State = "exited"
			switch {
			case s.inBackoff():
				base.State = "backoff"
			case !s.awaitTemplate.IsZero():
				base.State = "waiting"
			}
			st.Workers = append(st.Workers, base)
		}
		for _, w := range []*worker{s.worker, s.next} {
			if w != nil {
				ws := base
				m.describe(&ws, w)
				ws.Replacement = w == s.next
				st.Workers = append(st.Workers, ws)
			}
		}
	}
	for _, w := range m.workers {
		if _, current, replacement := m.ownerSlot(w); !current && !replacement {
			ws := WorkerStatus{Index: w.slot, Detached: true}
			m.describe(&ws, w)
			st.Workers = append(st.Workers, ws)
		}
	}
	slices.SortStableFunc(st.Workers, func(a, b WorkerStatus) int {
		return cmp.Or(cmp.Compare(a.Index, b.Index), cmp.Compare(a.ID, b.ID))
	})
	return st
}

func (m *Machine) describe(ws *WorkerStatus, w *worker) {
	ws.ID, ws.PID, ws.Generation, ws.State = w.id, w.pid, w.generation, w.state.String()
	ws.Template, ws.Forked, ws.NonServing = w == m.template, w.forked(), !m.cfg.serves(w.slot)
	if w.source != nil {
		src := *w.source
		ws.Source = &src
	}
	ws.SpawnedAt, ws.ReadyAt = w.spawnedAt, w.readyAt
	ws.StatusLine, ws.Requests = w.statusLine, w.requests
	if w.busy != nil {
		busy := *w.busy
		ws.Busy = &busy
	}
	if w.memory != nil {
		mem := *w.memory
		ws.Memory = &mem
	}
}
