package cluster

import (
	"fmt"
	"log/slog"
	"time"
)

// This file holds fork-worker mode: worker 0 as the template, the control-channel handshake, and
// what happens when a fork fails or the template goes away.

func (m *Machine) hello(e Hello) {
	w, ok := m.workers[e.Worker]
	if !ok {
		return
	}
	if e.Mismatch != "" {
		m.log(slog.LevelError, "refusing worker: "+e.Mismatch, m.workerAttrs(w, "worker-refused")...)
		m.emit(SendRefuse{Worker: w.id, Reason: e.Mismatch})
		return
	}
	if w.state == Spawning {
		if !w.forked() || e.PID <= 0 {
			return
		}
		if _, dup := m.byPID[e.PID]; dup {
			m.log(slog.LevelError, fmt.Sprintf("worker says hello with pid %d, which belongs to another worker", e.PID),
				m.workerAttrs(w, "worker-refused")...)
			return
		}
		// The new worker's hello overtook the template's reply.
		m.started(w, e.PID)
	}
	if w.hello {
		return
	}
	if w.mold && !(e.Fork && e.Mold) {
		// It would be taken for a serving worker: the refork fails when it exits.
		m.log(slog.LevelError, "refusing the mold: its hello does not say fork and mold", m.workerAttrs(w, "worker-refused")...)
		m.emit(SendRefuse{Worker: w.id, Reason: `a mold says hello with "fork": true and "mold": true`})
		return
	}
	w.hello = true
	w.canFork = e.Fork && w.slot == 0 && (!w.forked() || w.mold)
	m.emit(SendWelcome{Worker: w.id, Slot: w.slot, Generation: w.generation, NonServing: !m.cfg.serves(w.slot),
		ReportHeap: m.cfg.CarryHeapSize && w.canFork && !w.forked()})
}

// workerZeroReady decides, when a worker 0 becomes ready as its slot's current worker, whether the
// cluster forks from it or runs in exec mode.
func (m *Machine) workerZeroReady(w *worker) {
	if !m.cfg.ForkWorker {
		return
	}
	if w.canFork {
		m.template = w
		m.execMode = false
		m.log(slog.LevelInfo, "worker 0 is the template: other workers are forked from it", m.workerAttrs(w, "template-ready")...)
	} else {
		why := "it did not say hello on its control channel (FORKD_CONTROL_FD); apps without a forkd SDK, and Go apps, run in exec mode"
		if w.hello {
			why = "its hello did not declare it can fork"
		} else if m.cfg.ReadyOnStart {
			names := m.cfg.Settings.withDefaults()
			why = fmt.Sprintf("with %s it counts as ready once spawned, before its hello can say it can fork: %s needs %s",
				names.ReadyOnStart, names.ForkWorker, names.ReadyOnNotify)
		}
		if !m.execMode {
			m.log(slog.LevelWarn, "running in exec mode: worker 0 cannot be the template: "+why, m.workerAttrs(w, "exec-mode")...)
		}
		m.execMode = true
	}
	for _, s := range m.slots {
		if s.worker == nil && !s.awaitTemplate.IsZero() && !s.retiring {
			m.place(s, false)
		}
	}
}

// loseTemplate forgets the template (it exits, or is being stopped): forks it was asked for will
// not come, so their slots wait for the next template, and a rollout that needs it fails.
func (m *Machine) loseTemplate() {
	t := m.template
	m.template = nil
	if m.rollout != nil && m.rollout.pause != pauseNone {
		m.rollout.pause = pauseNone
		m.rollout.deadline = time.Time{}
	}
	for _, w := range m.sortedWorkers() {
		if w.template != t.id || w.state != Spawning {
			continue
		}
		m.emit(CancelSpawn{Worker: w.id})
		s, current, _ := m.forget(w)
		if current && m.phase != PhaseStopping && !s.retiring {
			m.place(s, false)
		}
	}
	m.rolloutFailed("worker 0, the template, went away")
}

// forkFailed gives up on a worker the template was asked to fork (it said it could not, or did
// not answer in time) and execs the worker instead. It is not the worker's crash: the slot's
// crash count does not move.
func (m *Machine) forkFailed(w *worker, reason string) {
	if w.mold {
		m.moldFailed(w, reason)
		return
	}
	m.log(slog.LevelWarn, fmt.Sprintf("cannot fork worker %d: %s; starting it with exec instead", w.slot, reason),
		slog.String("event", "fork-failed"), slog.Int("worker", w.slot), slog.Int("generation", w.generation))
	m.emit(CancelSpawn{Worker: w.id})
	s, current, replacement := m.forget(w)
	if (!current && !replacement) || m.phase == PhaseStopping || s.retiring {
		return
	}
	m.spawn(s, replacement, nil)
}

// templateReplied takes the template's answer to a pause (paused) or a resume.
func (m *Machine) templateReplied(worker WorkerID, paused bool) {
	if m.rollout != nil && m.template != nil && m.template.id == worker {
		what, event := "resumed", "template-resumed"
		if paused {
			what, event = "paused", "template-paused"
		}
		m.log(slog.LevelDebug, "refork: the template "+what, m.workerAttrs(m.template, event)...)
		m.rollout.replied(paused)
	}
}

func (m *Machine) refork(e Refork) {
	if err := m.reforkRefusal(); err != nil {
		m.emit(Reply{Request: e.Request, Err: err})
		return
	}
	m.ask(KindRefork, e.Request, false)
}

// reforkRefusal says why a refork cannot run now, or nil.
func (m *Machine) reforkRefusal() error {
	switch {
	case m.phase == PhaseStopping:
		return ErrStopping
	case !m.cfg.ForkWorker:
		return fmt.Errorf("%w: forkd runs in exec mode, and a refork needs fork-worker mode (%s, and an app "+
			"on a forkd SDK); to replace every worker, use forkctl reload", ErrNotReady, m.cfg.Settings.withDefaults().ForkWorker)
	case m.execMode:
		return fmt.Errorf("%w: forkd runs in exec mode, because worker 0 did not say it can fork (the app does "+
			"not run on a forkd SDK), so there is no template to refork from; to replace every worker, use forkctl reload", ErrNotReady)
	case (m.template == nil || m.phase != PhaseRunning) && !m.busy():
		// During another operation the template may come and go: the refork waits its turn and
		// is judged then.
		return fmt.Errorf("%w: worker 0 is not ready to be the template yet", ErrNotReady)
	}
	return nil
}

// maybeAutoRefork starts a refork when the busiest worker has served its quota of requests since the
// last refork (ReforkAfter): the busiest, not worker 0, because the kernel spreads connections
// unevenly (a template paused for a refork comes back to keep-alive clients that all stay with
// the others), and a count that waits for worker 0 may never come. Nothing starts while another
// operation runs or waits.
func (m *Machine) maybeAutoRefork() {
	t := m.template
	after := m.cfg.ReforkAfter
	if len(after) == 0 || m.busy() || len(m.ops) > 0 || m.phase != PhaseRunning || t == nil || t.state != Ready {
		return
	}
	if m.reforks >= len(after) && !m.cfg.ReforkAfterRepeats {
		return // the last refork of the list is done: refork_after ends with false
	}
	quota := after[min(m.reforks, len(after)-1)]
	var busiest *worker
	for _, w := range m.sortedWorkers() {
		if w.state == Ready && (busiest == nil || w.servedSinceRefork() > busiest.servedSinceRefork()) {
			busiest = w
		}
	}
	if served := busiest.servedSinceRefork(); served >= quota {
		m.log(slog.LevelInfo, fmt.Sprintf("worker %d served %d requests since the last refork (refork_after %d): automatic refork to generation %d",
			busiest.slot, served, quota, m.generation+1), slog.String("event", "refork-start"), slog.Int("generation", m.generation+1))
		m.opSeq++
		m.startRollout(&op{kind: KindRefork, seq: m.opSeq, automatic: true, trigger: TriggerRequests})
	}
}

// countRequestsAfresh starts every worker's count of requests since the last refork from now.
func (m *Machine) countRequestsAfresh() {
	for _, w := range m.workers {
		w.reforkBase = w.requests
	}
}
