package cluster

import (
	"fmt"
	"log/slog"
	"slices"
	"strconv"
)

// This file holds the start of a reload (a phased restart, and the one that completes a hot
// restart): the config loaded again, the before_reload hook that may veto it, and the config's
// spec. A reload's config, hooks included, applies only once the machine begins the reload; until
// then, and if it never begins, the config in effect stays.

// LoadConfig asks the driver for the config of a reload to generation Generation: load it again,
// register the spec its workers are spawned from, and answer ConfigLoaded. The machine starts
// nothing else meanwhile.
type LoadConfig struct {
	Generation int
}

// ConfigLoaded is the driver's answer to LoadConfig. Config, when not nil, is the machine's part
// of the config loaded again, with its Spec; nil keeps the config in effect. Warnings are what the
// config changes that a reload cannot apply (listeners, the control socket). Err, when set, is why
// the reload cannot begin (an invalid config): it is the Reply to every command that asked for it.
type ConfigLoaded struct {
	Config   *Config
	Warnings []string
	Err      error
}

func (LoadConfig) isAction()  {}
func (ConfigLoaded) isEvent() {}

// pendingReload is a reload whose config is loaded and whose before_reload hook runs.
type pendingReload struct {
	cfg     Config
	workers int
	hook    HookID
}

// configLoaded begins the reload the driver loaded the config for, or has its before_reload hook
// run first, or ends it with the driver's reason.
func (m *Machine) configLoaded(e ConfigLoaded) {
	o := m.preparing
	if o == nil || o.exec || m.loaded != nil {
		// The cluster stopped meanwhile (or a driver bug): the config never applies.
		if e.Config != nil {
			m.releaseSpec(e.Config.Spec)
		}
		return
	}
	for _, w := range e.Warnings {
		m.log(slog.LevelWarn, "reload: "+w, slog.String("event", "reload-warning"))
	}
	err := e.Err
	if err == nil && e.Config != nil {
		if bad := e.Config.validate(); bad != nil {
			err = fmt.Errorf("%w: %v", ErrBadConfig, bad) // a driver bug: it validated the config
		}
	}
	if err != nil {
		if e.Config != nil {
			m.releaseSpec(e.Config.Spec)
		}
		m.reloadDidNotBegin(o, err)
		return
	}
	// Without a config of its own, a reload keeps the worker count a scale may have changed; with
	// one, the config says how many.
	next, workers := m.cfg, m.desired
	if e.Config != nil {
		next = *e.Config
		if next.Mold != m.cfg.Mold {
			// The template's slot comes and goes with the mode: a phased restart keeps it.
			m.log(slog.LevelWarn, "reload: fork_worker.refork_from applies when forkd starts again, not on a reload: keeping the current one",
				slog.String("event", "reload-warning"))
			next.Mold = m.cfg.Mold
		}
		workers = next.slotsFor(e.Config.Workers)
		next.ReforkAfter = slices.Clone(e.Config.ReforkAfter)
		next.ReforkOnDecay = clonePolicy(e.Config.ReforkOnDecay)
	}
	if h := next.Hooks; o.kind == KindReload && len(h.BeforeReload) > 0 {
		m.loaded = &pendingReload{cfg: next, workers: workers}
		m.loaded.hook = m.runHook(HookBeforeReload, h.BeforeReload, h.Timeout, "FORKD_GENERATION="+strconv.Itoa(m.generation+1))
		return
	}
	m.beginReload(o, next, workers)
}

// beforeReloadDone begins the reload the hook guards, or ends it with the hook's failure.
func (m *Machine) beforeReloadDone(id HookID, err error) {
	p, o := m.loaded, m.preparing
	if p == nil || p.hook != id || o == nil {
		return
	}
	m.loaded = nil
	if err != nil {
		m.releaseSpec(p.cfg.Spec)
		m.reloadDidNotBegin(o, err)
		return
	}
	m.beginReload(o, p.cfg, p.workers)
}

// reloadDidNotBegin ends a reload that never began its rollout.
func (m *Machine) reloadDidNotBegin(o *op, err error) {
	m.preparing = nil
	m.log(slog.LevelError, o.kind.String()+" did not begin: "+err.Error(), slog.String("event", o.kind.String()+"-failed"),
		slog.Int("generation", m.generation+1))
	m.endOp(o, err)
	m.lastStatus = m.statusLine()
	m.emit(NotifySystemd{State: "READY=1\nSTATUS=" + m.lastStatus}) // the end of RELOADING=1
}

// beginReload makes next the config in effect and rolls the workers out to the next generation,
// to be as many as workers once done; the previous config comes back if the rollout fails.
func (m *Machine) beginReload(o *op, next Config, workers int) {
	m.preparing = nil
	m.log(slog.LevelInfo, fmt.Sprintf("%s: replacing %s with generation %d", o.kind, plural(m.desired, "worker"), m.generation+1),
		slog.String("event", o.kind.String()+"-start"), slog.Int("generation", m.generation+1))
	prev := m.cfg
	m.cfg = next
	m.startRollout(o)
	m.rollout.prevCfg, m.rollout.workers = &prev, workers
}

// releaseSpec tells the driver that spec is no longer needed, unless a config in effect or one a
// rollout may restore still names it.
func (m *Machine) releaseSpec(spec SpecHandle) {
	if spec == 0 || spec == m.cfg.Spec {
		return
	}
	if r := m.rollout; r != nil && r.prevCfg != nil && r.prevCfg.Spec == spec {
		return
	}
	if p := m.loaded; p != nil && p.cfg.Spec == spec {
		return
	}
	m.emit(ReleaseSpec{Spec: spec})
}
