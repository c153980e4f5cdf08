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

// WarmUp configures the warm-up; MaxWait zero turns it off.
type WarmUp struct {
	// Requests the new template serves (X_FORKD_REQUESTS) before the others are forked from it;
	// zero waits MaxWait.
	Requests uint64
	// MaxWait bounds the warm-up, so that a cluster without traffic still rolls out.
	MaxWait time.Duration
}

// warmUp is a rollout's warm-up under way: from the template's count of requests at its start,
// until the time it ends at the latest; zero until: none.
type warmUp struct {
	from  uint64
	until time.Time
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

// warmedUp reports whether the rollout may fork from the new template: no warm-up runs, or it
// has ended (its requests served, its time up, the template gone, the rollout failed).
func (r *rollout) warmedUp(m *Machine) bool {
	w := &r.warming
	if w.until.IsZero() {
		return true
	}
	t := m.template
	served := uint64(0)
	if t != nil {
		served = t.requests - min(t.requests, w.from)
	}
	need := m.cfg.WarmUp.Requests
	switch {
	case t != nil && r.failure == nil && m.now.Before(w.until) && (need == 0 || served < need):
		return false
	case t != nil && r.failure == nil:
		m.log(slog.LevelInfo, fmt.Sprintf("%s: the new template served %d requests while it warmed up: forking the others from it", r.kind, served),
			m.workerAttrs(t, "warm-up-done")...)
	}
	*w = warmUp{}
	return true
}
