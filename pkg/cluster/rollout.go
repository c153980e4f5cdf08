package cluster

import (
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// This file holds rollouts: replacing workers with a new generation as a rolling update with a
// surge, as Kubernetes does. A replacement starts, becomes ready, and only then is the old worker
// stopped (max_surge); with max_unavailable, some old workers may stop first. An old worker counts
// against max_surge until it has exited, and the rollout ends only once every worker it stopped
// has exited, so that a command waiting for it returns when the old code no longer runs (a refork
// excepted: drainsDetached). The first replacement is a canary: any replacement that fails stops
// the rollout, the old workers keep serving, and the command that asked for it gets the reason.

type pauseState int

const (
	pauseNone     pauseState = iota
	pauseWanted              // the rollout needs the template paused before it forks
	pausePending             // pause sent, waiting for paused
	pauseHeld                // the template is paused
	resumePending            // resume sent, waiting for resumed
)

type rollout struct {
	kind     RolloutKind
	from, to int
	// op is the operation the rollout carries out, with the commands waiting for it.
	op *op
	// cutShort: an automatic refork that starts no new fork, because an operator's command waits.
	cutShort bool
	// draining holds the workers the rollout stopped (old ones it replaced, replacements it
	// cancelled) that have not exited yet.
	draining map[WorkerID]bool
	// queue lists the slots still to replace, in order; active the slots being replaced; early
	// those of them whose old worker was stopped before its replacement was ready.
	queue, active []int
	early         map[int]bool
	pause         pauseState
	// deadline bounds a pending pause or resume.
	deadline time.Time
	failure  error
	// rolledBack: the failed rollout has stopped what it started (cancelReplacements).
	rolledBack bool
	replaced   int
	// zeroFirst: a reload in fork-worker mode replaces worker 0 alone first; the others are then
	// forked from the new worker 0, once it has warmed up (warm.go) if warming.
	zeroFirst bool
	warming   warmUp
	// moldStep is how far a reload in mold mode with a warm-up has come (warm.go); warmSlot is
	// the serving slot it replaces first, whose new worker warms up and forks the mold.
	moldStep moldStep
	warmSlot int
	// mold is the mold a refork in mold mode asked for (mold.go); nil when the refork forks from
	// the template as it is, and in any other rollout.
	mold *moldRequest
	// prevCfg is the config to restore if a reload fails; workers is the reload's worker count,
	// applied once it is done.
	prevCfg *Config
	workers int
	// startedAt is when the rollout began.
	startedAt time.Time
}

func (m *Machine) startRollout(o *op) {
	r := &rollout{kind: o.kind, op: o, from: m.generation, to: m.generation + 1, early: map[int]bool{},
		draining: map[WorkerID]bool{}, startedAt: m.now}
	m.cancelRecycling(fmt.Sprintf("recycling gives way to the %s", o.kind))
	m.record(RolloutStarted{Kind: o.kind, Generation: r.to, Automatic: o.automatic, Trigger: o.trigger})
	m.decayRolloutStarted(o)
	switch o.kind {
	case KindRefork:
		if m.cfg.Mold {
			r.startMoldRefork(m) // the template serves nothing: no pause
			break
		}
		for i := 1; i < m.desired; i++ {
			r.queue = append(r.queue, i)
		}
		r.pause = pauseWanted
		m.lowerReplaced(r)
	case KindReload, KindRestart:
		for i := 0; i < m.desired; i++ {
			r.queue = append(r.queue, i)
		}
		r.zeroFirst = m.cfg.ForkWorker && !m.execMode
		if r.zeroFirst && m.cfg.Mold && m.cfg.WarmUp.MaxWait > 0 {
			r.moldStep = moldStepFirst
		}
	}
	m.generation = r.to
	m.rollout = r
}

// drainsDetached reports a rollout whose old workers drain on their own once replaced, neither
// holding it up nor counting against max_surge: a refork, in either mode, so that a slow request
// or a keep-alive client delays nothing (the workers run the same code, forked from a newer
// heap). Measured in template mode under keep-alive load, each old worker's drain took 170-390 ms
// and, with max_surge 1, held the next fork back: three of them were most of the refork. A reload
// waits for its old workers, so that the old code no longer runs when it ends.
func (r *rollout) drainsDetached() bool { return r.kind == KindRefork }

// stopped records that the rollout stopped w, which it waits for before it ends.
func (r *rollout) stopped(m *Machine, w *worker) {
	if _, alive := m.workers[w.id]; alive {
		r.draining[w.id] = true
	}
}

// advance moves the rollout on after every step: pause the template, start replacements within
// max_surge + max_unavailable, resume the template and finish once every slot is done. A failed
// rollout first stops its replacements.
func (r *rollout) advance(m *Machine) {
	if r.failure != nil {
		r.cancelReplacements(m)
	}
	if !r.warmedUp(m) {
		return // the new template serves alone a while first; its replacements are not forked yet
	}
	if r.moldStep == moldStepWarming {
		r.askMold(m)
	}
	if r.pause == pauseWanted && r.failure == nil {
		m.emit(PauseTemplate{Worker: m.template.id})
		m.log(slog.LevelDebug, "refork: asked the template to pause", m.workerAttrs(m.template, "template-pause")...)
		r.pause = pausePending
		r.deadline = m.now.Add(m.cfg.ForkTimeout)
	}
	if r.pause == pausePending || r.pause == resumePending {
		return
	}
	for r.failure == nil && len(r.queue) > 0 {
		i := r.queue[0]
		if r.zeroFirst && i != 0 {
			return // worker 0 is being replaced; the others are forked from its replacement
		}
		s := m.slots[i]
		if s.retiring || s.worker == nil || s.worker.state.gone() || s.worker.generation == r.to {
			r.queue = r.queue[1:]
			continue // respawned since the rollout began: already of the new generation
		}
		if !m.cfg.serves(i) {
			// The template serves nothing: its replacement is no surge above the serving
			// workers, and stopping it first would leave nothing to fork from.
			r.queue = r.queue[1:]
			r.active = append(r.active, i)
			r.placeTemplate(m, s)
			continue
		}
		if r.waitsForMold(i) {
			return // the others are forked from the mold of a warmed-up new worker
		}
		// A replacement is a surge while its old worker serves, and an old worker is one until it
		// has exited; past max_surge, an old worker may stop first, up to max_unavailable of them;
		// past both, wait.
		switch surging := r.surging(m); {
		case surging < m.cfg.MaxSurge:
		case len(r.early) < m.cfg.MaxUnavailable && s.worker.state != Spawning:
			r.early[i] = true
			s.worker.expected = true
			m.terminate(s.worker, fmt.Sprintf("replaced by generation %d", r.to))
			m.restorePriority(s.worker) // the rollout waits for it to drain and exit
		default:
			return
		}
		r.queue = r.queue[1:]
		r.active = append(r.active, i)
		m.place(s, true)
	}
	if len(r.queue) > 0 || len(r.active) > 0 {
		return
	}
	if r.pause == pauseHeld {
		if m.template != nil {
			m.emit(ResumeTemplate{Worker: m.template.id})
			m.log(slog.LevelDebug, "refork: asked the template to resume", m.workerAttrs(m.template, "template-resume")...)
			r.pause = resumePending
			r.deadline = m.now.Add(m.cfg.ForkTimeout)
			return
		}
		r.pause = pauseNone
	}
	if len(r.draining) > 0 {
		return // the old workers drain; the rollout ends when they have exited
	}
	r.finish(m)
}

// surging counts the serving processes above the desired ones: replacements whose old worker
// serves, and old workers that have not exited. In mold mode the template's are not counted.
func (r *rollout) surging(m *Machine) int {
	n := 0
	for _, i := range r.active {
		if m.cfg.serves(i) && !r.early[i] {
			n++
		}
	}
	for id := range r.draining {
		if w := m.workers[id]; w == nil || m.cfg.serves(w.slot) {
			n++
		}
	}
	return n
}

// cancelReplacements rolls a failed rollout back, once: its replacements in flight stop, and so do
// the workers of its generation that were already promoted, since that generation is abandoned
// (a reload's config no longer applies, and a later rollout reuses the number). Their slots are
// respawned from the generation that keeps serving; the rollout ends once they have exited, so
// its caller hears of the failure when nothing of the abandoned generation runs.
func (r *rollout) cancelReplacements(m *Machine) {
	if r.rolledBack {
		return
	}
	r.rolledBack = true
	m.generation = r.from
	for _, s := range m.slots {
		if w := s.next; w != nil {
			s.next = nil // detached: it drains on its own
			m.dismiss(w, "rollout stopped")
			r.stopped(m, w)
		}
		emptied := false
		if w := s.worker; w != nil && w.generation == r.to {
			m.dismiss(w, fmt.Sprintf("generation %d abandoned", r.to)) // its slot respawns when it exits
			r.stopped(m, w)
			emptied = s.worker == nil // a fork called off
		}
		if !emptied && !slices.Contains(r.active, s.index) {
			continue
		}
		if s.worker == nil && s.nextSpawn.IsZero() && s.awaitTemplate.IsZero() && !s.retiring && m.phase != PhaseStopping {
			m.respawn(s) // its worker exited while the replacement booted
		}
	}
	r.queue, r.active = nil, nil
	r.moldStep = moldStepNone
	m.restoreKept(r)
}

func (r *rollout) finish(m *Machine) {
	m.rollout = nil
	m.restoreKept(nil)
	m.decay.since = m.now
	hooks := m.cfg.Hooks // the reload's own: after_reload comes with the config it brought
	if r.failure != nil {
		m.log(slog.LevelError, r.kind.String()+" stopped: "+r.failure.Error(), slog.String("event", r.kind.String()+"-failed"),
			slog.Int("generation", r.to))
		if r.kind == KindRefork {
			m.countRequestsAfresh() // an automatic refork tries again after another quota, not at once
		}
		if r.prevCfg != nil {
			failed := m.cfg.Spec
			m.cfg = *r.prevCfg
			m.releaseSpec(failed)
		}
	} else {
		if r.prevCfg != nil {
			m.releaseSpec(r.prevCfg.Spec)
		}
		switch r.kind {
		case KindRefork:
			m.reforks++
			m.countRequestsAfresh()
			if t := m.template; t != nil {
				t.generation = r.to
			}
		default:
			// New code warms up from scratch: refork_after starts over, counting from now. A
			// warm-up that served the list's first count stands for its first refork: the
			// workers were forked from a template that served as much (warm.go).
			m.reforks = 0
			if after := m.cfg.ReforkAfter; len(after) > 0 && r.warming.served >= after[0] {
				m.reforks = 1
			}
			m.countRequestsAfresh()
		}
		how := ""
		if r.cutShort {
			how = " (cut short for the command that waits)"
		}
		m.log(slog.LevelInfo, fmt.Sprintf("%s done: %d workers on generation %d%s", r.kind, r.replaced, r.to, how),
			slog.String("event", r.kind.String()+"-done"), slog.Int("generation", r.to))
		if r.kind != KindRefork && r.workers != m.desired {
			m.resize(r.workers)
		}
	}
	if r.kind != KindRefork {
		m.lastStatus = m.statusLine()
		m.emit(NotifySystemd{State: "READY=1\nSTATUS=" + m.lastStatus})
	}
	m.record(RolloutEnded{Kind: r.kind, Generation: r.to, Err: r.failure, Duration: m.now.Sub(r.startedAt)})
	if r.kind == KindRefork && r.failure != nil {
		m.decayReforkFailed()
	}
	if r.kind == KindReload {
		m.afterReloadHook(hooks, r.to, r.failure)
	}
	m.last = RolloutResult{Seq: r.op.seq, Kind: r.kind, Generation: m.generation, Target: r.to, Err: r.failure}
	for _, req := range r.op.waiters {
		m.emit(Reply{Request: req, Err: r.failure})
	}
}

// abandon ends the rollout at once because the cluster stops: the stop deals with every process.
func (r *rollout) abandon(m *Machine, err error) {
	m.rollout = nil
	m.generation = r.from
	if r.prevCfg != nil {
		failed := m.cfg.Spec
		m.cfg = *r.prevCfg
		m.releaseSpec(failed)
	}
	m.endOp(r.op, err)
}

// promote makes a slot's ready replacement its current worker and stops the old one, which then
// drains detached from the slot.
func (m *Machine) promote(s *slot) {
	old, w := s.worker, s.next
	s.worker, s.next = w, nil
	if s.index == 0 {
		m.workerZeroReady(w) // the new template first, so stopping the old one fails nothing
	}
	r := m.rollout
	if old != nil && !m.recycledReplaced(s, old) {
		m.dismiss(old, fmt.Sprintf("replaced by generation %d", w.generation))
		if r != nil && !r.drainsDetached() {
			r.stopped(m, old)
			m.restorePriority(old) // the rollout waits for it to drain and exit
		}
	}
	if r != nil {
		if r.deactivate(s.index) {
			delete(r.early, s.index)
			if r.moldStep == moldStepForking && s.index == 0 {
				r.moldStep = moldStepNone // the mold replaces the new template, counted already
			} else {
				r.replaced++
			}
		}
		switch {
		case r.zeroFirst && s.index == 0:
			// The new worker 0 is the template now (if it can fork): pause it, then fork the
			// others from it; in mold mode, it forks one serving worker first, to warm up.
			r.zeroFirst = false
			switch {
			case m.template == nil:
				r.moldStep = moldStepNone
			case !m.cfg.Mold:
				r.pause = pauseWanted
				r.startWarmUp(m, m.template)
			}
		case r.moldStep == moldStepFirst && s.index == r.warmSlot:
			r.moldStep = moldStepWarming
			r.startWarmUp(m, w)
		}
	}
}

// deactivate takes slot i off the slots being replaced; false when it was not one.
func (r *rollout) deactivate(i int) bool {
	k := slices.Index(r.active, i)
	if k < 0 {
		return false
	}
	r.active = slices.Delete(r.active, k, k+1)
	return true
}

// slotExited tells the rollout a slot lost its current worker. It reports true when the slot needs
// no respawn because its replacement is on the way; a slot still queued just leaves the queue, as
// its respawn is of the new generation.
func (r *rollout) slotExited(s *slot) bool {
	if slices.Contains(r.active, s.index) && s.next != nil {
		return true
	}
	if k := slices.Index(r.queue, s.index); k >= 0 {
		r.queue = slices.Delete(r.queue, k, k+1)
	}
	return false
}

func (m *Machine) rolloutFailed(reason string) {
	if r := m.rollout; r != nil && r.failure == nil {
		r.failure = fmt.Errorf("%w: %s", ErrRolloutFailed, reason)
		m.generation = r.from // respawns from now on are of the old generation
	}
}

func (r *rollout) replied(paused bool) {
	switch {
	case paused && r.pause == pausePending:
		r.pause = pauseHeld
		r.deadline = time.Time{}
	case !paused && r.pause == resumePending:
		r.pause = pauseNone
		r.deadline = time.Time{}
	}
}

func (r *rollout) tick(m *Machine) {
	if r.deadline.IsZero() || m.now.Before(r.deadline) {
		return
	}
	r.deadline = time.Time{}
	switch r.pause {
	case pausePending:
		m.rolloutFailed(fmt.Sprintf("worker 0 did not pause within %s", m.cfg.ForkTimeout))
		r.pause = pauseHeld // resume it anyway, in case it paused late
	case resumePending:
		m.log(slog.LevelWarn, fmt.Sprintf("worker 0 did not confirm it resumed within %s", m.cfg.ForkTimeout),
			slog.String("event", "resume-timeout"))
		r.pause = pauseNone
	}
}

// onTarget counts the desired serving slots whose current worker is of the rollout's generation.
func (r *rollout) onTarget(m *Machine) int {
	n := 0
	for _, s := range m.slots[:min(m.desired, len(m.slots))] {
		if m.cfg.serves(s.index) && s.worker != nil && s.worker.generation == r.to {
			n++
		}
	}
	return n
}
