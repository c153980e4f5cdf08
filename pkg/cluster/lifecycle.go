package cluster

import (
	"fmt"
	"log/slog"
	"syscall"
	"time"
)

// This file holds a worker's life: spawned, booting, ready, stopped or crashed, and what its slot
// does next.

func (m *Machine) start() {
	if len(m.slots) > 0 || m.phase != PhaseStarting {
		return
	}
	mode := "exec"
	if m.cfg.ForkWorker {
		mode = "fork-worker"
	}
	m.decay.since = m.now
	m.log(slog.LevelInfo, fmt.Sprintf("starting %d workers in %s mode", m.desired, mode),
		slog.String("event", "cluster-starting"), slog.Int("workers", m.desired), slog.Int("generation", m.generation))
	for i := 0; i < m.desired; i++ {
		s := &slot{index: i}
		m.slots = append(m.slots, s)
		m.place(s, false)
	}
}

// place gives a slot a new process: its current one, or its rollout replacement. In fork-worker
// mode a worker other than worker 0 is forked from the template, or waits for one (bounded by the
// boot timeout, after which it is exec'd).
func (m *Machine) place(s *slot, replacement bool) {
	s.nextSpawn = time.Time{}
	if m.cfg.ForkWorker && s.index > 0 && !m.execMode {
		if t := m.template; t != nil {
			s.awaitTemplate = time.Time{}
			m.spawn(s, replacement, t)
			return
		}
		if s.awaitTemplate.IsZero() {
			s.awaitTemplate = m.now.Add(m.cfg.BootTimeout)
		}
		if m.now.Before(s.awaitTemplate) {
			return
		}
		m.log(slog.LevelWarn, fmt.Sprintf("no template to fork worker %d from within %s: starting it with exec",
			s.index, m.cfg.BootTimeout), slog.String("event", "fork-fallback"), slog.Int("worker", s.index))
	}
	s.awaitTemplate = time.Time{}
	m.spawn(s, replacement, nil)
}

func (m *Machine) spawn(s *slot, replacement bool, template *worker) {
	m.spawnFrom(s, replacement, template, false)
}

// spawnFrom spawns the slot's worker: exec'd (template nil), forked by the template, or, with
// mold, a mold forked by the serving worker template names.
func (m *Machine) spawnFrom(s *slot, replacement bool, template *worker, mold bool) *worker {
	m.lastID++
	w := &worker{
		id:         m.lastID,
		slot:       s.index,
		generation: m.generation,
		state:      Spawning,
		spawnedAt:  m.now,
		heartbeat:  m.cfg.HeartbeatTimeout,
		channel:    m.cfg.ForkWorker && (s.index == 0 || template != nil),
		mold:       mold,
	}
	if template != nil {
		w.template = template.id
		w.deadline = m.now.Add(m.cfg.ForkTimeout)
	}
	m.workers[w.id] = w
	if replacement {
		s.next = w
	} else {
		s.worker = w
	}
	a := SpawnWorker{Worker: w.id, Slot: s.index, Generation: w.generation, Template: w.template, Mold: mold,
		Spec: m.cfg.Spec, Heartbeat: m.cfg.HeartbeatTimeout,
		Channel: w.channel && template == nil}
	if a.Channel {
		a.HeapSize = m.carriedHeapSize(w)
	}
	m.emit(a)
	return w
}

// ownerSlot returns the slot w belongs to and whether w is its current worker or its replacement.
// A worker that is neither drains detached from its slot, which may be gone (scaled down).
func (m *Machine) ownerSlot(w *worker) (s *slot, current, replacement bool) {
	if w.slot >= len(m.slots) {
		return nil, false, false
	}
	s = m.slots[w.slot]
	return s, s.worker == w, s.next == w
}

func (m *Machine) spawned(e Spawned) error {
	w, ok := m.workers[e.Worker]
	if !ok {
		return fmt.Errorf("cluster: Spawned for unknown worker %d", e.Worker)
	}
	if e.PID <= 0 {
		return fmt.Errorf("cluster: Spawned with invalid pid %d", e.PID)
	}
	if w.state != Spawning {
		if w.pid == e.PID {
			return nil // the template's reply after the worker's own hello
		}
		return fmt.Errorf("cluster: Spawned for worker %d, which is not spawning", e.Worker)
	}
	if other, dup := m.byPID[e.PID]; dup {
		return fmt.Errorf("cluster: pid %d of worker %d already belongs to worker %d", e.PID, e.Worker, other.id)
	}
	m.started(w, e.PID)
	return nil
}

// started records a worker's PID: the process exists and boots.
func (m *Machine) started(w *worker, pid int) {
	w.pid = pid
	m.byPID[pid] = w
	w.state = Booting
	w.deadline = m.now.Add(m.cfg.BootTimeout)
	how := "exec"
	switch {
	case w.mold:
		how = "a mold, forked by a serving worker"
	case w.forked():
		how = "forked"
	}
	m.log(slog.LevelInfo, "worker spawned ("+how+")", m.workerAttrs(w, "worker-spawned")...)
	m.record(WorkerSpawned{Slot: w.slot, Generation: w.generation, PID: pid, Forked: w.forked()})
	if r := m.rollout; w.mold && r != nil && r.mold != nil {
		m.lowerReplaced(r) // the mold exists: its source's priority is no longer passed on
	}
	switch {
	case w.pendingStop && m.immediate:
		m.kill(w, w.stopReason)
	case w.pendingStop:
		m.terminate(w, w.stopReason)
	case m.cfg.ReadyOnStart:
		m.becomeReady(w)
	}
}

func (m *Machine) spawnFailed(e SpawnFailed) error {
	w, ok := m.workers[e.Worker]
	if !ok || w.state != Spawning {
		return fmt.Errorf("cluster: SpawnFailed for worker %d, which is not spawning", e.Worker)
	}
	if w.mold {
		m.moldFailed(w, "the serving worker could not fork it: "+e.Err)
		return nil
	}
	if w.forked() {
		m.forkFailed(w, "worker 0 could not fork it: "+e.Err)
		return nil
	}
	m.log(slog.LevelError, "cannot spawn worker: "+e.Err, slog.String("event", "spawn-failed"),
		slog.Int("worker", w.slot), slog.Int("generation", w.generation))
	m.remove(w, "spawn failed: "+e.Err)
	return nil
}

func (m *Machine) exited(e Exited) {
	w, ok := m.byPID[e.PID]
	if !ok {
		if m.strayGone(strayKey{pid: e.PID}, e.Status.String()) {
			return
		}
		m.log(slog.LevelDebug, "reaped a child that is not a worker", slog.String("event", "orphan-reaped"),
			slog.Int("pid", e.PID), slog.String("status", e.Status.String()))
		return
	}
	how := e.Status.String()
	switch {
	case e.OOM.Killed:
		// The kernel's kill, not forkd's: whatever forkd was doing to the worker, this ended it.
		how += " (" + e.OOM.String() + ")"
		w.killReason = ExitOOM
	case w.stopReason != "":
		how += " (" + w.stopReason + ")"
	}
	if w.stopAsked == "STOPPING=1" && e.Status.Success() && !w.expected {
		// It said it was stopping, then exited cleanly: a worker recycling itself (gunicorn's
		// max_requests, Puma's worker killer) is replaced as a planned exit, not as a crash.
		w.expected = true
		if w.killReason == "" {
			w.killReason = ExitRecycled
		}
	}
	level := slog.LevelWarn
	if w.expected && !e.OOM.Killed {
		level = slog.LevelInfo
	}
	attrs := append(m.workerAttrs(w, "worker-exited"), slog.String("status", how))
	m.log(level, "worker exited: "+how, attrs...)
	m.remove(w, how)
}

// forget drops a worker from the machine's tables and its slot.
func (m *Machine) forget(w *worker) (s *slot, current, replacement bool) {
	delete(m.workers, w.id)
	if w.pid != 0 {
		delete(m.byPID, w.pid)
		m.rememberExit(w)
	}
	if m.rollout != nil {
		delete(m.rollout.draining, w.id)
	}
	s, current, replacement = m.ownerSlot(w)
	if current {
		s.worker = nil
	}
	if replacement {
		s.next = nil
	}
	if m.template == w {
		m.loseTemplate()
	}
	m.moldSourceGone(w)
	return s, current, replacement
}

// rememberExit keeps w's PID for lateWindow, and forgets the PIDs kept longer.
func (m *Machine) rememberExit(w *worker) {
	for pid, e := range m.recentExits {
		if m.now.Sub(e.at) > lateWindow {
			delete(m.recentExits, pid)
		}
	}
	m.recentExits[w.pid] = recentExit{id: w.id, at: m.now}
}

// remove forgets a worker whose process is gone (or never started) and decides what its slot does
// next: nothing while stopping or retiring, respawn at once after an expected exit or a first
// crash, respawn after a backoff delay within a crash series. A rollout's replacement failing ends
// the rollout instead.
func (m *Machine) remove(w *worker, how string) {
	reason := w.killReason
	switch {
	case reason != "":
	case w.expected:
		reason = ExitStopped
	default:
		reason = ExitCrash
	}
	m.record(WorkerExited{Slot: w.slot, Generation: w.generation, PID: w.pid, Reason: reason, Status: how})
	s, current, replacement := m.forget(w)
	if replacement {
		if m.rollout == nil {
			m.recycleFailed(s, how)
		} else if !w.expected && !(w.mold && m.rollout.moldLost(m, "the mold exited before it was ready: "+how)) {
			m.rolloutFailed(fmt.Sprintf("worker %d of generation %d did not become ready: %s", w.slot, w.generation, how))
		}
		return
	}
	if !current {
		return // a worker a rollout replaced, done draining
	}
	s.lastExit = how
	s.lastExitAt = m.now
	s.crashed = !w.expected
	if s.crashed {
		m.crashHook(s.index, w.pid, w.generation, how)
		if m.now.Sub(w.spawnedAt) >= m.cfg.ResetAfter {
			s.failures = 1
		} else {
			s.failures++
		}
	}
	if m.phase == PhaseStopping || s.retiring {
		return
	}
	if m.rollout != nil && m.rollout.slotExited(s) {
		return // its replacement is on the way
	}
	if w := s.next; m.rollout == nil && w != nil {
		// Its recycling replacement is on the way: the slot's worker now, unless a crash series
		// holds the slot back for a backoff, which the replacement must wait out too.
		if !s.crashed || m.backoff(s.failures) == 0 {
			s.worker, s.next = w, nil
			return
		}
		s.next = nil
		m.dismiss(w, "its slot is crash-looping")
	}
	m.respawn(s)
}

// respawn gives a slot that lost its worker a new one: at once after an expected exit or a first
// crash, after a backoff delay (counted from the exit) within a crash series.
func (m *Machine) respawn(s *slot) {
	s.restarts++
	delay := time.Duration(0)
	if s.crashed {
		delay = m.backoff(s.failures)
	}
	at := s.lastExitAt.Add(delay)
	if !at.After(m.now) {
		m.place(s, false)
		return
	}
	s.nextSpawn = at
	m.log(slog.LevelWarn, fmt.Sprintf("worker %d is crash-looping (%d crashes in a row): next restart in %s",
		s.index, s.failures, at.Sub(m.now)), slog.String("event", "crash-loop"), slog.Int("worker", s.index),
		slog.Int("crashes", s.failures), slog.Duration("delay", at.Sub(m.now)))
}

// backoff is the delay before respawning a slot after its n-th consecutive crash: none for the
// first, then BackoffMin doubling up to BackoffMax.
func (m *Machine) backoff(failures int) time.Duration {
	if failures <= 1 {
		return 0
	}
	d := m.cfg.BackoffMin
	for i := 2; i < failures && d < m.cfg.BackoffMax; i++ {
		d *= 2
	}
	return min(d, m.cfg.BackoffMax)
}

func (m *Machine) becomeReady(w *worker) {
	if w.mold && !w.canFork {
		// Taken as the template, it would put the cluster in exec mode: the refork fails instead.
		m.log(slog.LevelError, "the mold said READY=1 before its hello", m.workerAttrs(w, "mold-failed")...)
		m.kill(w, "a mold ready before its hello")
		return
	}
	w.state = Ready
	w.readyAt = m.now
	w.deadline = time.Time{}
	if w.heartbeat > 0 {
		w.deadline = m.now.Add(w.heartbeat)
	}
	attrs := append(m.workerAttrs(w, "worker-ready"), slog.Duration("boot", m.now.Sub(w.spawnedAt)))
	m.log(slog.LevelInfo, "worker ready", attrs...)
	m.record(WorkerReady{Slot: w.slot, Generation: w.generation, PID: w.pid, Forked: w.forked(), Boot: m.now.Sub(w.spawnedAt)})
	s, current, replacement := m.ownerSlot(w)
	if replacement {
		m.promote(s) // which also makes a new worker 0 the template
	} else if current && s.index == 0 {
		m.workerZeroReady(w)
	}
}

// terminate asks a worker to drain with SIGTERM; SIGKILL follows after the shutdown timeout.
func (m *Machine) terminate(w *worker, reason string) {
	w.stopReason = reason
	switch w.state {
	case Spawning:
		w.pendingStop = true
		return
	case Stopping, Killing:
		return
	}
	if m.cfg.ShutdownTimeout == 0 {
		m.kill(w, reason)
		return
	}
	w.state = Stopping
	w.stopAsked = "SIGTERM"
	m.log(slog.LevelDebug, "stopping worker: "+reason, m.workerAttrs(w, "worker-stop")...)
	w.deadline = m.now.Add(m.cfg.ShutdownTimeout)
	if m.template == w {
		m.loseTemplate()
	}
	m.emit(SignalWorker{Worker: w.id, PID: w.pid, Signal: syscall.SIGTERM})
}

// dismiss stops a worker forkd no longer needs, which is not its fault: a fork still pending is
// called off, a process is asked to drain.
func (m *Machine) dismiss(w *worker, reason string) {
	w.expected = true
	if w.state == Spawning && w.forked() {
		w.stopReason = reason
		m.emit(CancelSpawn{Worker: w.id})
		m.forget(w)
		return
	}
	m.terminate(w, reason)
}

// kill sends SIGKILL; the worker's exit is all that is left to wait for.
func (m *Machine) kill(w *worker, reason string) {
	w.stopReason = reason
	switch w.state {
	case Spawning:
		w.pendingStop = true
		return
	case Killing:
		return
	}
	w.state = Killing
	w.deadline = time.Time{}
	if m.template == w {
		m.loseTemplate()
	}
	m.emit(SignalWorker{Worker: w.id, PID: w.pid, Signal: syscall.SIGKILL})
}

func (m *Machine) tick() {
	for _, w := range m.sortedWorkers() {
		if w.deadline.IsZero() || m.now.Before(w.deadline) {
			continue
		}
		switch w.state {
		case Spawning:
			if w.mold {
				m.moldFailed(w, fmt.Sprintf("the serving worker asked for it did not answer within %s", m.cfg.ForkTimeout))
				continue
			}
			m.forkFailed(w, fmt.Sprintf("worker 0 did not fork it within %s", m.cfg.ForkTimeout))
		case Booting:
			hint := ""
			if !m.cfg.ReadyOnStart {
				names := m.cfg.Settings.withDefaults()
				hint = fmt.Sprintf("; a worker is ready when it sends READY=1 to NOTIFY_SOCKET (%s); "+
					"an app that does not speak sd_notify needs %s", names.ReadyOnNotify, names.ReadyOnStart)
			}
			m.log(slog.LevelError, fmt.Sprintf("worker did not become ready within %s%s", m.cfg.BootTimeout, hint),
				m.workerAttrs(w, "boot-timeout")...)
			w.killReason = ExitBootTimeout
			m.kill(w, "boot timeout")
		case Ready:
			m.log(slog.LevelError, fmt.Sprintf("worker sent no heartbeat (WATCHDOG=1) for %s", w.heartbeat),
				m.workerAttrs(w, "heartbeat-timeout")...)
			w.killReason = ExitHeartbeatTimeout
			m.kill(w, "heartbeat timeout")
		case Stopping:
			m.log(slog.LevelWarn, fmt.Sprintf("worker did not exit within %s of %s", m.cfg.ShutdownTimeout, w.stopAsked),
				m.workerAttrs(w, "shutdown-timeout")...)
			w.killReason = ExitShutdownTimeout
			m.kill(w, w.stopReason+", then shutdown timeout")
		}
	}
	for _, s := range m.slots {
		if s.retiring || m.phase == PhaseStopping {
			continue
		}
		if s.inBackoff() && !m.now.Before(s.nextSpawn) {
			m.place(s, false)
		}
		if s.worker == nil && !s.awaitTemplate.IsZero() && !m.now.Before(s.awaitTemplate) {
			m.place(s, false)
		}
	}
	if m.rollout != nil {
		m.rollout.tick(m)
	}
	m.tickStrays()
}
