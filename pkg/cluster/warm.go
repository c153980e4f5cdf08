package cluster

import (
	"fmt"
	"log/slog"
	"time"
)

// This file holds the warm-up of a new release: a reload (or a hot restart's phased restart) in
// fork-worker mode replaces worker 0 first, and forks the other workers from the new one. Forked
// within milliseconds of a cold worker 0, they would each build the app's lazy caches at once, all
// n of them; with WarmUp, the new template serves alone first (the old workers serve beside it),
// until it has served Requests requests since it became the template or MaxWait has passed,
// whichever comes first, so that what it built is shared by every fork. A cluster without traffic
// has nothing to warm up with: once no worker has reported a new request for WarmUpIdle, the
// warm-up ends, so that an idle cluster reloads without waiting.
//
// In mold mode the template serves nothing, so it cannot warm up by serving: the new, cold
// template forks one serving worker first (with the rollout's surge: the old one serves until it
// is ready), that worker warms up beside the old ones as a template does, and then forks a mold,
// as a refork's warmest worker does (mold.go). The mold replaces the cold template in slot 0
// (same generation), and the other serving workers are forked from it. Should the mold not come
// (the warmed worker exits, its SDK refuses, the fork fails, the mold dies), they are forked from
// the cold template, as without a warm-up.
//
// A warm-up that served refork_after's first count stands for the list's first refork: the new
// workers were forked from a template that served what that refork waits for, so the next
// automatic refork is the list's second (finish, in rollout.go).

// WarmUpIdle is how long no worker may have reported a new request (X_FORKD_REQUESTS, sent at most
// once a second while requests come) before a warm-up counts the cluster as idle and ends.
const WarmUpIdle = 3 * time.Second

// WarmUp configures the warm-up; MaxWait zero turns it off.
type WarmUp struct {
	// Requests the warming worker (the new template; in mold mode, the first new serving worker)
	// serves (X_FORKD_REQUESTS) before the others are forked from it; zero waits MaxWait.
	Requests uint64
	// MaxWait bounds the warm-up, so that a cluster without traffic still rolls out.
	MaxWait time.Duration
}

// warmUp is a rollout's warm-up under way: worker's, from its count of requests at its start,
// until the time it ends at the latest; zero until: none. served is what it served by its end.
type warmUp struct {
	worker WorkerID
	from   uint64
	until  time.Time
	served uint64
}

// moldStep is how far a reload in mold mode with a warm-up has come.
type moldStep int

const (
	moldStepNone    moldStep = iota // no mold to wait for: off, done, or given up
	moldStepFirst                   // the new template forks one serving worker first (warmSlot)
	moldStepWarming                 // that worker serves beside the old ones, to warm up
	moldStepForking                 // the warmest new worker forks the mold; the others wait
)

// startWarmUp begins w's warm-up, if the config asks for one.
func (r *rollout) startWarmUp(m *Machine, w *worker) {
	c := m.cfg.WarmUp
	if c.MaxWait <= 0 {
		return
	}
	r.warming = warmUp{worker: w.id, from: w.requests, until: m.now.Add(c.MaxWait)}
	what := fmt.Sprintf("%s at most", c.MaxWait)
	if c.Requests > 0 {
		what = fmt.Sprintf("%d requests, or %s at most", c.Requests, c.MaxWait)
	}
	msg := "the new template warms up before the others are forked from it"
	if r.moldStep == moldStepWarming {
		msg = fmt.Sprintf("the new worker %d warms up, then forks the new template (a mold) the others are forked from", w.slot)
	}
	m.log(slog.LevelInfo, fmt.Sprintf("%s: %s (%s)", r.kind, msg, what), m.workerAttrs(w, "warm-up-start")...)
}

// warmUpProgress is where a warm-up under way stands: the worker whose requests count (the new
// template; in mold mode, the first new serving worker; nil once it is gone or no longer ready),
// what it served since the warm-up began of the need to serve (zero: none, the warm-up waits
// until), until the time it ends at the latest (max_wait), and idleAt, when it ends unless a
// worker reports a new request before (WarmUpIdle after the last).
type warmUpProgress struct {
	worker       *worker
	served, need uint64
	until        time.Time
	idleAt       time.Time
}

// warmUpProgress reports the warm-up under way; ok is false when none runs. Both the decision
// (warmedUp) and the status read it, so that what forkctl shows is what the rollout waits for.
func (r *rollout) warmUpProgress(m *Machine) (p warmUpProgress, ok bool) {
	w := r.warming
	if w.until.IsZero() {
		return warmUpProgress{}, false
	}
	p = warmUpProgress{need: m.cfg.WarmUp.Requests, until: w.until, idleAt: m.trafficAt.Add(WarmUpIdle)}
	if t := m.workers[w.worker]; t != nil && t.state == Ready && (r.moldStep == moldStepWarming || t == m.template) {
		p.worker = t
		p.served = t.requests - min(t.requests, w.from)
	}
	return p, true
}

// warmedUp reports whether the rollout may go on from the warm-up: none runs, or it has ended
// (its requests served, its time up, the warming worker gone, the rollout failed).
func (r *rollout) warmedUp(m *Machine) bool {
	p, ok := r.warmUpProgress(m)
	if !ok {
		return true
	}
	t, served, need := p.worker, p.served, p.need
	idle := !m.now.Before(p.idleAt)
	what, next := "the new template", "forking the others from it"
	if r.moldStep == moldStepWarming && t != nil {
		what, next = fmt.Sprintf("the new worker %d", t.slot), "it forks the mold"
		if served == 0 {
			next = "a mold of it would be as cold as the new template: forking the others from that"
		}
	}
	switch {
	case t != nil && r.failure == nil && m.now.Before(p.until) && (need == 0 || served < need) && !idle:
		return false
	case t != nil && r.failure == nil && idle && (need == 0 || served < need) && m.now.Before(p.until):
		m.log(slog.LevelInfo, fmt.Sprintf("%s: no worker reported a request for %s, so nothing warms %s up: %s (it served %d)",
			r.kind, WarmUpIdle, what, next, served), m.workerAttrs(t, "warm-up-done")...)
	case t != nil && r.failure == nil:
		m.log(slog.LevelInfo, fmt.Sprintf("%s: %s served %d requests while it warmed up: %s", r.kind, what, served, next),
			m.workerAttrs(t, "warm-up-done")...)
	case r.failure == nil && r.moldStep == moldStepWarming:
		m.log(slog.LevelWarn, fmt.Sprintf("%s: the new worker that warmed up is no longer ready: forking the others from the new template as it is", r.kind),
			slog.String("event", "mold-fallback"), slog.Int("generation", r.to))
	}
	r.warming = warmUp{served: served}
	return true
}

// warmUpDeadline is when the warm-up under way ends at the latest: its max_wait, or the moment the
// cluster counts as idle; zero when none runs.
func (r *rollout) warmUpDeadline(m *Machine) time.Time {
	p, ok := r.warmUpProgress(m)
	if !ok {
		return time.Time{}
	}
	return p.ends()
}

// ends is when the warm-up ends at the latest, as things stand: at max_wait, or earlier by the
// idle rule.
func (p warmUpProgress) ends() time.Time {
	if p.idleAt.Before(p.until) {
		return p.idleAt
	}
	return p.until
}

// waitsForMold reports whether serving slot i waits for the mold of a reload in mold mode: the
// first serving slot to replace goes ahead (warmSlot), the others wait until the mold is made
// or given up.
func (r *rollout) waitsForMold(i int) bool {
	switch r.moldStep {
	case moldStepFirst:
		if r.warmSlot == 0 || r.warmSlot == i {
			r.warmSlot = i
			return false
		}
		return true
	case moldStepWarming, moldStepForking:
		return true
	}
	return false
}

// askMold ends a reload's warm-up in mold mode: the warmest worker of the new generation (the one
// that warmed up, unless a respawn overtook it) forks the mold that replaces the cold template.
// Without one ready, or when the warm-up served nothing (an idle cluster), the others are forked
// from the cold template.
func (r *rollout) askMold(m *Machine) {
	r.moldStep = moldStepNone
	if r.failure != nil || r.warming.served == 0 {
		return
	}
	src, zero := m.warmest(), m.slots[0]
	if src == nil || m.template == nil || zero.worker != m.template || zero.next != nil {
		r.warming.served = 0
		m.log(slog.LevelWarn, fmt.Sprintf("%s: no worker of generation %d is ready to fork a mold: forking the others from the new template as it is",
			r.kind, r.to), slog.String("event", "mold-fallback"), slog.Int("generation", r.to))
		return
	}
	r.moldStep = moldStepForking
	r.mold = &moldRequest{source: src.id, from: MoldSource{Slot: src.slot, PID: src.pid, Requests: src.requests}}
	m.log(slog.LevelInfo, fmt.Sprintf("%s: worker %d, warmed up (%d requests), forks the new template (a mold)",
		r.kind, src.slot, src.requests), m.workerAttrs(src, "mold-asked")...)
	r.active = append(r.active, 0)
	r.placeTemplate(m, zero)
}

// moldLost takes the loss of a reload's mold (it could not be forked, or exited before it was
// ready): the cold template stays in slot 0, and the others are forked from it, as without a
// warm-up. False when no reload waits for a mold: a refork's mold fails the refork.
func (r *rollout) moldLost(m *Machine, reason string) bool {
	if r == nil || r.moldStep != moldStepForking {
		return false
	}
	r.moldStep, r.mold = moldStepNone, nil
	r.warming.served = 0 // the others are not forked from what the warmed worker served
	r.deactivate(0)
	if r.failure == nil {
		m.log(slog.LevelWarn, fmt.Sprintf("%s: no mold (%s): forking the others from the new template as it is", r.kind, reason),
			slog.String("event", "mold-fallback"), slog.Int("generation", r.to))
	}
	return true
}
