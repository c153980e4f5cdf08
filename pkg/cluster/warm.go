package cluster

import (
	"fmt"
	"log/slog"
	"time"
)

// This file holds the warm-up of a new release's template: a reload (or a hot restart's phased
// restart) in fork-worker mode replaces worker 0 first, and forks the other workers from the new
// one. Forked within milliseconds of a cold worker 0, they would each build the app's lazy
// caches at once, all n of them; with WarmUp, the new template serves alone first (the old
// workers serve beside it), until it has served Requests requests since it became the template
// or MaxWait has passed, whichever comes first, so that what it built is shared by every fork.
// A cluster without traffic has nothing to warm up with: once no worker has reported a new
// request for WarmUpIdle, the warm-up ends, so that an idle cluster reloads without waiting.
//
// A warm-up that served refork_after's first count stands for the list's first refork: the new
// workers were forked from a template that served what that refork waits for, so the next
// automatic refork is the list's second (finish, in rollout.go).

// WarmUpIdle is how long no worker may have reported a new request (X_FORKD_REQUESTS, sent at most
// once a second while requests come) before a warm-up counts the cluster as idle and ends.
const WarmUpIdle = 3 * time.Second

// WarmUp configures the warm-up; MaxWait zero turns it off.
type WarmUp struct {
	// Requests the new template serves (X_FORKD_REQUESTS) before the others are forked from it;
	// zero waits MaxWait.
	Requests uint64
	// MaxWait bounds the warm-up, so that a cluster without traffic still rolls out.
	MaxWait time.Duration
}

// warmUp is a rollout's warm-up under way: from the template's count of requests at its start,
// until the time it ends at the latest; zero until: none. served is what the template served by
// its end.
type warmUp struct {
	from   uint64
	until  time.Time
	served uint64
}

// startWarmUp begins the new template's warm-up, if the config asks for one.
func (r *rollout) startWarmUp(m *Machine) {
	w := m.cfg.WarmUp
	if w.MaxWait <= 0 {
		return
	}
	r.warming = warmUp{from: m.template.requests, until: m.now.Add(w.MaxWait)}
	what := fmt.Sprintf("%s at most", w.MaxWait)
	if w.Requests > 0 {
		what = fmt.Sprintf("%d requests, or %s at most", w.Requests, w.MaxWait)
	}
	m.log(slog.LevelInfo, fmt.Sprintf("%s: the new template warms up before the others are forked from it (%s)", r.kind, what),
		m.workerAttrs(m.template, "warm-up-start")...)
}

// warmUpProgress is where a warm-up under way stands: the worker whose requests count (the new
// template; nil once it is gone), what it served since the warm-up began of the need to serve
// (zero: none, the warm-up waits until), until the time it ends at the latest (max_wait), and
// idleAt, when it ends unless a worker reports a new request before (WarmUpIdle after the last).
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
	p = warmUpProgress{worker: m.template, need: m.cfg.WarmUp.Requests, until: w.until, idleAt: m.trafficAt.Add(WarmUpIdle)}
	if t := p.worker; t != nil {
		p.served = t.requests - min(t.requests, w.from)
	}
	return p, true
}

// warmedUp reports whether the rollout may fork from the new template: no warm-up runs, or it
// has ended (its requests served, its time up, the template gone, the rollout failed).
func (r *rollout) warmedUp(m *Machine) bool {
	p, ok := r.warmUpProgress(m)
	if !ok {
		return true
	}
	t, served, need := p.worker, p.served, p.need
	idle := !m.now.Before(p.idleAt)
	switch {
	case t != nil && r.failure == nil && m.now.Before(p.until) && (need == 0 || served < need) && !idle:
		return false
	case t != nil && r.failure == nil && idle && (need == 0 || served < need) && m.now.Before(p.until):
		m.log(slog.LevelInfo, fmt.Sprintf("%s: no worker reported a request for %s, so nothing warms the new template up: forking the others from it (it served %d)",
			r.kind, WarmUpIdle, served), m.workerAttrs(t, "warm-up-done")...)
	case t != nil && r.failure == nil:
		m.log(slog.LevelInfo, fmt.Sprintf("%s: the new template served %d requests while it warmed up: forking the others from it", r.kind, served),
			m.workerAttrs(t, "warm-up-done")...)
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
