package cluster

import (
	"cmp"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"
)

// This file holds the cluster as a whole: stop, scale, and what settles after every event (phase,
// STATUS=).

func (m *Machine) stop(e Stop) {
	if e.Request != 0 {
		m.stopWaiters = append(m.stopWaiters, e.Request)
	}
	if m.phase == PhaseStopping {
		if e.Immediate && !m.immediate {
			m.immediate = true
			m.log(slog.LevelWarn, "stopping immediately: SIGKILL to every worker", slog.String("event", "stop-immediate"))
			for _, w := range m.sortedWorkers() {
				m.kill(w, "immediate stop")
			}
			m.killAllStrays()
		}
		return
	}
	if m.rollout != nil {
		m.rollout.abandon(m, ErrStopping)
	}
	m.abandonOps()
	m.phase = PhaseStopping
	m.immediate = e.Immediate
	how := "stopping: draining the workers"
	if e.Immediate {
		how = "stopping immediately: SIGKILL to every worker"
	}
	m.log(slog.LevelInfo, how, slog.String("event", "cluster-stopping"), slog.Int("workers", len(m.workers)))
	m.lastStatus = m.statusLine()
	m.emit(NotifySystemd{State: "STOPPING=1\nSTATUS=" + m.lastStatus})
	for _, s := range m.slots {
		s.nextSpawn = time.Time{}
		s.awaitTemplate = time.Time{}
	}
	for _, w := range m.sortedWorkers() {
		if e.Immediate && !(w.state == Spawning && w.forked()) {
			w.expected = true
			m.kill(w, "immediate stop")
		} else {
			m.dismiss(w, "shutdown")
		}
	}
	if e.Immediate {
		m.killAllStrays()
	}
}

func (m *Machine) scale(e Scale) {
	switch {
	case m.phase == PhaseStopping:
		m.emit(Reply{Request: e.Request, Err: ErrStopping})
		return
	case m.busy():
		m.emit(Reply{Request: e.Request, Err: fmt.Errorf("%w (%s): scale after it", ErrBusy, m.current())})
		return
	}
	n := e.Workers // serving workers: in mold mode, the template's slot comes on top
	if n == 0 {
		n = m.cfg.servingOf(m.desired) + e.Delta
	}
	if n < 1 || n > m.cfg.MaxWorkers {
		m.emit(Reply{Request: e.Request, Err: fmt.Errorf("%w: %d workers asked, the range is 1..%d", ErrScaleRange, n, m.cfg.MaxWorkers)})
		return
	}
	prev := m.resize(m.cfg.slotsFor(n))
	m.emit(Reply{Request: e.Request, Result: ScaleResult{Previous: m.cfg.servingOf(prev), Workers: n}})
}

// resize changes the desired number of workers to n, spawning new slots or retiring the highest
// ones, and returns the previous number.
func (m *Machine) resize(n int) int {
	prev := m.desired
	m.desired = n
	for i := prev; i < n; i++ {
		if i < len(m.slots) {
			// A retiring slot comes back with its crash history: a backoff still running is
			// waited out.
			s := m.slots[i]
			s.retiring = false
			if s.worker == nil && !s.nextSpawn.After(m.now) {
				m.place(s, false)
			}
			continue
		}
		s := &slot{index: i}
		m.slots = append(m.slots, s)
		m.place(s, false)
	}
	for i := n; i < len(m.slots); i++ {
		s := m.slots[i]
		s.retiring = true
		s.awaitTemplate = time.Time{}
		if w := s.worker; w != nil {
			m.dismiss(w, "scaled down")
		}
		if w := s.next; w != nil && m.rollout == nil {
			s.next = nil // a recycling replacement: detached, it drains on its own
			m.dismiss(w, "scaled down")
		}
	}
	if n != prev {
		n, prev := m.cfg.servingOf(n), m.cfg.servingOf(prev)
		m.log(slog.LevelInfo, fmt.Sprintf("scaling from %d to %d workers", prev, n), slog.String("event", "scale"),
			slog.Int("workers", n), slog.Int("previous", prev))
	}
	return prev
}

// settle runs after every event: it moves a rollout along, drops drained retiring slots, moves the
// cluster between phases and keeps systemd's STATUS= current.
func (m *Machine) settle() {
	if m.rollout != nil {
		m.rollout.advance(m)
	}
	for len(m.slots) > m.desired && m.slots[len(m.slots)-1].empty() {
		m.slots = m.slots[:len(m.slots)-1]
	}
	if m.phase == PhaseStarting && len(m.slots) > 0 && m.readyCount() == m.desired {
		m.phase = PhaseRunning
		m.log(slog.LevelInfo, fmt.Sprintf("all %d workers ready", m.desired), slog.String("event", "cluster-ready"),
			slog.Int("workers", m.desired), slog.Int("generation", m.generation))
		m.lastStatus = m.statusLine()
		m.emit(NotifySystemd{State: "READY=1\nSTATUS=" + m.lastStatus})
	}
	if (m.phase == PhaseStarting || m.phase == PhaseRunning) && !m.busy() {
		// A rollout with nothing to do (a refork in mold mode whose workers are all booting)
		// ends as it begins: the next operation's turn comes in the same step.
		for {
			m.dispatch()
			if m.rollout == nil {
				break
			}
			m.rollout.advance(m)
			if m.busy() || len(m.ops) == 0 {
				break
			}
		}
		m.maybeRecycle()
	}
	// forkd never exits while a process it started still runs.
	if m.phase == PhaseStopping && len(m.workers) == 0 && len(m.strays) == 0 {
		m.phase = PhaseStopped
		m.log(slog.LevelInfo, "all workers have exited", slog.String("event", "cluster-stopped"))
		for _, r := range m.stopWaiters {
			m.emit(Reply{Request: r})
		}
		m.stopWaiters = nil
		m.emit(Exit{Code: 0})
		return
	}
	if line := m.statusLine(); line != m.lastStatus {
		m.lastStatus = line
		m.emit(NotifySystemd{State: "STATUS=" + line})
	}
}

// servingReady counts the desired serving slots whose current worker is ready, and the desired
// serving slots: in mold mode, the template's slot is not one.
func (m *Machine) servingReady() (ready, desired int) {
	for _, s := range m.slots[:min(m.desired, len(m.slots))] {
		if m.cfg.serves(s.index) && s.worker != nil && s.worker.state == Ready {
			ready++
		}
	}
	return ready, m.cfg.servingOf(m.desired)
}

// readyCount counts the desired slots whose current worker is ready.
func (m *Machine) readyCount() int {
	n := 0
	for _, s := range m.slots[:min(m.desired, len(m.slots))] {
		if s.worker != nil && s.worker.state == Ready {
			n++
		}
	}
	return n
}

func (m *Machine) statusLine() string {
	switch m.phase {
	case PhaseStopping, PhaseStopped:
		if len(m.workers) == 0 && len(m.strays) == 1 {
			return "stopping: 1 stray process left"
		} else if len(m.workers) == 0 && len(m.strays) > 1 {
			return fmt.Sprintf("stopping: %d stray processes left", len(m.strays))
		}
		return fmt.Sprintf("stopping: %s left", plural(len(m.workers), "worker"))
	}
	var b strings.Builder
	ready, desired := m.servingReady()
	switch {
	case m.phase == PhaseStarting:
		fmt.Fprintf(&b, "starting: %d/%d workers ready, generation %d", ready, desired, m.generation)
	case m.rollout != nil:
		fmt.Fprintf(&b, "rolling (%s): %d/%d workers on generation %d, %d ready", m.rollout.kind,
			m.rollout.onTarget(m), desired, m.rollout.to, ready)
	default:
		fmt.Fprintf(&b, "%d/%d workers ready, generation %d", ready, desired, m.generation)
	}
	if m.rollout != nil {
		if p, ok := m.rollout.warmUpProgress(m); ok {
			fmt.Fprintf(&b, "; warming up: %d", p.served)
			if p.need > 0 {
				fmt.Fprintf(&b, "/%d", p.need)
			}
			b.WriteString(" requests")
		}
	}
	if m.cfg.Mold && (m.template == nil || m.template.state != Ready) && m.phase == PhaseRunning {
		b.WriteString("; no template")
	}
	var looping []string
	for _, s := range m.slots {
		// A slot stays in the crash loop from its second crash in a row until a worker is ready
		// again, so STATUS does not flap with every attempt.
		if s.failures >= 2 && !s.retiring && (s.worker == nil || s.worker.state != Ready) {
			looping = append(looping, fmt.Sprint(s.index))
		}
	}
	if len(looping) > 0 {
		fmt.Fprintf(&b, "; crash loop: worker %s", strings.Join(looping, ", "))
	}
	return b.String()
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func (m *Machine) sortedWorkers() []*worker {
	ws := make([]*worker, 0, len(m.workers))
	for _, w := range m.workers {
		ws = append(ws, w)
	}
	slices.SortFunc(ws, func(a, b *worker) int { return cmp.Compare(a.id, b.id) })
	return ws
}
