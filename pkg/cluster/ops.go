package cluster

import (
	"fmt"
	"log/slog"
)

// This file holds the operations the cluster runs one at a time: reforks, reloads (phased
// restarts) and hot restarts. A command that asks for one while another runs, or is being
// prepared, waits in a queue, so that no signal and no forkctl command is dropped for being at
// the wrong moment:
//
//   - a command joins an operation of its kind that waits already (two SIGHUPs make one reload,
//     from the config as it is when the reload begins), and a refork joins a refork that runs;
//   - an operator's reload or hot restart cuts an automatic refork (refork_after) short: the
//     refork starts no new fork, finishes those under way, resumes the template, and the command
//     goes next;
//   - the others wait their turn, in order.
//
// An operation has ended when its rollout has (every old worker it replaced has exited), or when it
// failed; then every command that asked for it gets the Reply, and LastRollout in the status says
// how it ended. Automatic reforks start only when nothing waits.

// op is an operation asked for and not yet ended.
type op struct {
	kind RolloutKind
	// seq numbers the operations of the cluster in the order they were asked for, across hot
	// restarts: LastRollout names the one that ended last.
	seq     int
	waiters []RequestID
	// exec: a hot restart before its exec; keepWorkers: one that keeps the workers. A restart op
	// without exec is the phased restart a new image runs after the exec. automatic: a refork that
	// nobody asked for, which trigger started (TriggerRequests, TriggerMemory).
	exec, keepWorkers, automatic bool
	trigger                      string
	// stage is how far a hot restart before its exec has come, and hook its before_restart.
	stage restartStage
	hook  HookID
}

// RolloutResult says how the last operation (refork, reload, hot restart) ended.
type RolloutResult struct {
	// Seq numbers the operations in the order they were asked for, from 1; 0: none has ended.
	Seq  int
	Kind RolloutKind
	// Generation is the cluster's generation after it: Target when it succeeded, the generation it
	// rolled back to when it failed.
	Generation int
	// Target is the generation it rolled out; 0 when it did not begin (nothing rolled out).
	Target int
	// Err is nil when it succeeded, else why it failed (or did not begin).
	Err error
}

// busy reports whether an operation runs or is being prepared.
func (m *Machine) busy() bool { return m.rollout != nil || m.preparing != nil }

// Busy reports whether an operation (refork, reload, hot restart) runs, or the driver prepares one.
func (m *Machine) Busy() bool { return m.busy() }

// current names the operation that runs or is being prepared, for messages.
func (m *Machine) current() RolloutKind {
	switch {
	case m.rollout != nil:
		return m.rollout.kind
	case m.preparing != nil:
		return m.preparing.kind
	}
	return NoRollout
}

// ask queues an operation of kind for req (0: nobody waits for it), joining one of the same kind
// that waits already, and cuts an automatic refork short for an operator's reload or restart.
func (m *Machine) ask(kind RolloutKind, req RequestID, keepWorkers bool) {
	join := func(o *op) {
		if req != 0 {
			o.waiters = append(o.waiters, req)
		}
	}
	if r := m.rollout; r != nil && kind == KindRefork && r.kind == KindRefork && !r.cutShort {
		join(r.op)
		m.log(slog.LevelInfo, "refork: joins the refork in progress", slog.String("event", "refork-joined"))
		return
	}
	for _, o := range m.ops {
		if o.kind == kind && o.exec == (kind == KindRestart) && o.keepWorkers == keepWorkers {
			join(o)
			m.log(slog.LevelInfo, fmt.Sprintf("%s: joins the %s already waiting", kind, kind), slog.String("event", kind.String()+"-joined"))
			return
		}
	}
	m.opSeq++
	o := &op{kind: kind, seq: m.opSeq, exec: kind == KindRestart, keepWorkers: keepWorkers}
	join(o)
	m.ops = append(m.ops, o)
	if !m.busy() && len(m.ops) == 1 {
		return // dispatch begins it at once
	}
	if r := m.rollout; r != nil && r.op.automatic && kind != KindRefork && !r.cutShort {
		r.cutShort = true
		r.queue = nil
		m.restoreKept(r)
		m.log(slog.LevelInfo, fmt.Sprintf("automatic refork cut short: the %s asked for goes first, once the forks under way are done", kind),
			slog.String("event", "refork-cut-short"))
	}
	m.log(slog.LevelInfo, fmt.Sprintf("%s queued: it begins when the %s in progress has ended", kind, m.currentOrQueued()),
		slog.String("event", kind.String()+"-queued"))
}

// currentOrQueued names what runs, or else what waits first.
func (m *Machine) currentOrQueued() RolloutKind {
	if c := m.current(); c != NoRollout {
		return c
	}
	return m.ops[0].kind
}

// dispatch begins the next operation when none runs: a refork's rollout at once, a reload or a hot
// restart by asking the driver to prepare it. An operation that cannot begin now (a refork in exec
// mode) ends at once with the reason. Until the cluster has been ready, only a hot restart begins.
func (m *Machine) dispatch() {
	for !m.busy() && len(m.ops) > 0 && m.handedOver == nil {
		o := m.ops[0]
		if m.phase != PhaseRunning && !(m.phase == PhaseStarting && o.exec) {
			return
		}
		m.ops = m.ops[1:]
		m.cancelRecycling(fmt.Sprintf("recycling gives way to the %s", o.kind))
		switch {
		case o.kind == KindRefork:
			if err := m.reforkRefusal(); err != nil {
				m.endOp(o, err)
				continue
			}
			m.log(slog.LevelInfo, fmt.Sprintf("refork: re-forking workers 1..%d from worker 0 as generation %d", m.desired-1, m.generation+1),
				slog.String("event", "refork-start"), slog.Int("generation", m.generation+1))
			m.startRollout(o)
		case o.exec:
			m.beginRestart(o)
		default:
			m.preparing = o
			// systemd's Type=notify-reload protocol; the driver adds MONOTONIC_USEC.
			m.emit(NotifySystemd{State: "RELOADING=1"})
			m.emit(LoadConfig{Generation: m.generation + 1})
		}
	}
}

// endOp ends an operation that did not run (or did not begin): its commands get err.
func (m *Machine) endOp(o *op, err error) {
	m.last = RolloutResult{Seq: o.seq, Kind: o.kind, Generation: m.generation, Err: err}
	m.record(RolloutEnded{Kind: o.kind, Generation: m.generation, Err: err})
	for _, req := range o.waiters {
		m.emit(Reply{Request: req, Err: err})
	}
}

func (m *Machine) reload(e Reload) {
	switch {
	case m.phase == PhaseStopping:
		m.emit(Reply{Request: e.Request, Err: ErrStopping})
	case m.phase != PhaseRunning:
		m.emit(Reply{Request: e.Request, Err: fmt.Errorf("%w: the cluster has not been ready yet", ErrNotReady)})
	default:
		m.ask(KindReload, e.Request, false)
	}
}

func (m *Machine) restart(e Restart) {
	if m.phase == PhaseStopping {
		m.emit(Reply{Request: e.Request, Err: ErrStopping})
		return
	}
	m.ask(KindRestart, e.Request, e.KeepWorkers)
}

// abandonOps ends every operation waiting or being prepared, because the cluster stops.
func (m *Machine) abandonOps() {
	if p := m.loaded; p != nil {
		m.loaded = nil
		m.releaseSpec(p.cfg.Spec)
	}
	if o := m.preparing; o != nil {
		m.preparing = nil
		m.endOp(o, ErrStopping)
	}
	for _, o := range m.ops {
		m.endOp(o, ErrStopping)
	}
	m.ops = nil
}
