package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// State is the machine's state in a form that survives the master's hot restart: the new master
// image restores it and adopts the running workers instead of starting new ones. Times are
// relative to the moment of export, so the two images need not share a monotonic clock.
type State struct {
	Generation int
	Desired    int
	Running    bool // the cluster had been ready (PhaseRunning), else starting
	Dropped    uint64
	Late       uint64
	Reforks    int
	ExecMode   bool
	// Mold: the cluster runs in mold mode (its slot 0 is the template's, Desired counts it).
	Mold    bool `json:",omitempty"`
	LastID  WorkerID
	Slots   []SlotState
	Workers []WorkerRecord
	Strays  []StrayRecord
	// OpSeq numbers the operations; Last is how the last one ended.
	OpSeq int
	Last  *RolloutRecord `json:",omitempty"`
	// Restart is the hot restart that exports the state, and Queued the operations that wait
	// behind it: the new image runs them after it (their callers' connections are gone).
	Restart *OpRecord  `json:",omitempty"`
	Queued  []OpRecord `json:",omitempty"`
	// Decay is what the memory refork trigger learned of the app's reforks; the baseline is
	// measured again after the exec.
	Decay DecayRecord `json:",omitzero"`
	// TrafficAgo is how long before the export a worker last reported a new request (-1: never),
	// for the warm-up's idle rule (warm.go) of the phased restart that follows the exec. An image
	// that does not export it gives 0: traffic just now, so the idle rule waits its WarmUpIdle.
	TrafficAgo time.Duration `json:",omitempty"`
	// HeapSize is the heap size the last exec'd template reported (heapsize.go), which the new
	// image carries to the next worker 0 it execs; an image that does not export it gives none.
	HeapSize *HeapSize `json:",omitempty"`
}

// DecayRecord is the memory refork trigger's verdicts in a State (decay.go).
type DecayRecord struct {
	Raises, Fruitless int
	Stopped           bool
}

// StrayRecord is a stray being stopped, in a State.
type StrayRecord struct {
	PID       int
	Group     bool
	SIGKILLed bool
	// KillIn is the time left before SIGKILL, when not SIGKILLed yet.
	KillIn time.Duration
}

// OpRecord is an operation in a State.
type OpRecord struct {
	Kind              RolloutKind
	Seq               int
	Exec, KeepWorkers bool
}

// RolloutRecord is a RolloutResult in a State.
type RolloutRecord struct {
	Seq        int
	Kind       RolloutKind
	Generation int
	Target     int `json:",omitempty"`
	Err        string
}

// SlotState is one slot in a State.
type SlotState struct {
	Index, Failures, Restarts int
	LastExit                  string
	LastExitAgo               time.Duration
	Crashed, Retiring         bool
	// NextSpawnIn is the rest of a backoff delay; zero when not waiting.
	NextSpawnIn time.Duration
}

// WorkerRecord is one worker process in a State.
type WorkerRecord struct {
	ID, Template            WorkerID
	Slot, Generation, PID   int
	State                   string
	Role                    string // "current", "replacement" or "detached"
	IsTemplate              bool
	Channel, Hello, CanFork bool
	Expected                bool
	StopReason, StopAsked   string
	StatusLine              string
	Requests, ReforkBase    uint64
	Busy                    *int `json:",omitempty"`
	Heartbeat               time.Duration
	SpawnedAgo, ReadyAgo    time.Duration
	// KillReason and Recycled are why forkd ended the worker, so that its exit after the
	// adoption is recorded as what it was (a recycled worker draining is not "stopped").
	KillReason ExitReason `json:",omitempty"`
	Recycled   ExitReason `json:",omitempty"`
	// Source is where a template made by a mold came from.
	Source *MoldSource `json:",omitempty"`
}

// ErrNotQuiet: the machine cannot be exported now (a rollout runs, or a fork is under way).
var ErrNotQuiet = errors.New("cluster: a rollout or a fork is in progress")

// Export returns the machine's state at now. It fails while a rollout runs, a reload is being
// prepared, or a worker is being forked: those are conversations with processes that the exec
// would cut. The hot restart being carried out (ExecRestart), and what is queued behind it, go
// with the state.
func (m *Machine) Export(now time.Time) (State, error) {
	if m.rollout != nil {
		return State{}, fmt.Errorf("%w (%s)", ErrNotQuiet, m.rollout.kind)
	}
	if m.preparing != nil && !m.preparing.exec {
		return State{}, fmt.Errorf("%w (%s)", ErrNotQuiet, m.preparing.kind)
	}
	if m.phase != PhaseRunning && m.phase != PhaseStarting {
		return State{}, fmt.Errorf("%w: the cluster is %s", ErrNotQuiet, m.phase)
	}
	for _, s := range m.slots {
		if s.next != nil {
			return State{}, fmt.Errorf("%w: worker %d is being recycled", ErrNotQuiet, s.index)
		}
	}
	ago := func(t time.Time) time.Duration {
		if t.IsZero() {
			return -1
		}
		return now.Sub(t)
	}
	st := State{
		Generation: m.generation, Desired: m.desired, Running: m.phase == PhaseRunning,
		Dropped: m.dropped, Late: m.late, Reforks: m.reforks, ExecMode: m.execMode, Mold: m.cfg.Mold, LastID: m.lastID,
		OpSeq: m.opSeq, TrafficAgo: ago(m.trafficAt), HeapSize: m.heapSize,
		Decay: DecayRecord{Raises: m.decay.raises, Fruitless: m.decay.fruitless, Stopped: m.decay.stopped},
	}
	if m.last.Seq != 0 {
		st.Last = &RolloutRecord{Seq: m.last.Seq, Kind: m.last.Kind, Generation: m.last.Generation, Target: m.last.Target}
		if m.last.Err != nil {
			st.Last.Err = m.last.Err.Error()
		}
	}
	if o := m.preparing; o != nil {
		st.Restart = &OpRecord{Kind: o.kind, Seq: o.seq, Exec: o.exec, KeepWorkers: o.keepWorkers}
	}
	for _, o := range m.ops {
		st.Queued = append(st.Queued, OpRecord{Kind: o.kind, Seq: o.seq, Exec: o.exec, KeepWorkers: o.keepWorkers})
	}
	for _, s := range m.slots {
		ss := SlotState{Index: s.index, Failures: s.failures, Restarts: s.restarts, LastExit: s.lastExit,
			LastExitAgo: ago(s.lastExitAt), Crashed: s.crashed, Retiring: s.retiring}
		if !s.nextSpawn.IsZero() {
			ss.NextSpawnIn = max(s.nextSpawn.Sub(now), time.Nanosecond)
		}
		st.Slots = append(st.Slots, ss)
	}
	for _, k := range m.sortedStrays() {
		sr := m.strays[k]
		r := StrayRecord{PID: k.pid, Group: k.group, SIGKILLed: sr.sigkilled}
		if !sr.sigkilled {
			r.KillIn = max(sr.deadline.Sub(now), 0)
		}
		st.Strays = append(st.Strays, r)
	}
	for _, w := range m.sortedWorkers() {
		if w.state == Spawning {
			return State{}, fmt.Errorf("%w: worker %d is being spawned", ErrNotQuiet, w.slot)
		}
		_, current, replacement := m.ownerSlot(w)
		role := "detached"
		switch {
		case current:
			role = "current"
		case replacement:
			role = "replacement"
		}
		st.Workers = append(st.Workers, WorkerRecord{
			ID: w.id, Template: w.template, Slot: w.slot, Generation: w.generation, PID: w.pid,
			State: w.state.String(), Role: role, IsTemplate: w == m.template,
			Channel: w.channel, Hello: w.hello, CanFork: w.canFork, Expected: w.expected,
			StopReason: w.stopReason, StopAsked: w.stopAsked, StatusLine: w.statusLine, Requests: w.requests, ReforkBase: w.reforkBase,
			Busy: w.busy, Heartbeat: w.heartbeat, SpawnedAgo: ago(w.spawnedAt), ReadyAgo: ago(w.readyAt),
			KillReason: w.killReason, Recycled: w.recycled, Source: w.source,
		})
	}
	return st, nil
}

// Restore makes a machine from an exported State at now, for the new master image of a hot
// restart. Deadlines start afresh: a booting worker gets a whole boot timeout again, a ready one a
// whole heartbeat timeout, a stopping one a whole shutdown timeout. No Start event follows: the
// workers are already running. The first event is Adopted: nothing queued begins before it.
func Restore(cfg Config, st State, now time.Time) (*Machine, error) {
	modeChanged := cfg.Mold != st.Mold
	if modeChanged {
		// The slots are laid out for the mode the workers run in: it changes with a restart
		// that replaces every process, not with an adoption.
		cfg.Mold = st.Mold
	}
	m, err := NewMachine(cfg)
	if err != nil {
		return nil, err
	}
	at := func(ago time.Duration) time.Time {
		if ago < 0 {
			return time.Time{}
		}
		return now.Add(-ago)
	}
	m.now = now
	m.generation, m.desired, m.dropped, m.late = st.Generation, st.Desired, st.Dropped, st.Late
	m.reforks, m.execMode, m.lastID = st.Reforks, st.ExecMode, st.LastID
	m.opSeq = st.OpSeq
	m.trafficAt = at(st.TrafficAgo)
	m.heapSize = st.HeapSize
	m.decay = decayTrigger{raises: st.Decay.Raises, fruitless: st.Decay.Fruitless, stopped: st.Decay.Stopped, since: now}
	if l := st.Last; l != nil {
		m.last = RolloutResult{Seq: l.Seq, Kind: l.Kind, Generation: l.Generation, Target: l.Target}
		if l.Err != "" {
			m.last.Err = errors.New(l.Err)
		}
	}
	// The hot restart that exported the state is done with the exec; Adopted decides what follows.
	if r := st.Restart; r != nil {
		handed := *r
		m.handedOver = &handed
	}
	for _, r := range st.Queued {
		m.ops = append(m.ops, &op{kind: r.Kind, seq: r.Seq, exec: r.Exec, keepWorkers: r.KeepWorkers})
	}
	if st.Running {
		m.phase = PhaseRunning
	}
	if modeChanged {
		m.log(slog.LevelWarn, "hot restart: fork_worker.refork_from differs from the running cluster's; it applies when forkd starts again",
			slog.String("event", "restart-warning"))
	}
	if m.desired < 1 || m.desired > cfg.slotsFor(cfg.MaxWorkers) {
		return nil, fmt.Errorf("cluster: restored state asks for %d workers", m.desired)
	}
	for i, ss := range st.Slots {
		if ss.Index != i {
			return nil, fmt.Errorf("cluster: restored slot %d at position %d", ss.Index, i)
		}
		s := &slot{index: i, failures: ss.Failures, restarts: ss.Restarts, lastExit: ss.LastExit,
			lastExitAt: at(ss.LastExitAgo), crashed: ss.Crashed, retiring: ss.Retiring}
		if ss.NextSpawnIn > 0 {
			s.nextSpawn = now.Add(ss.NextSpawnIn)
		}
		m.slots = append(m.slots, s)
	}
	states := map[string]WorkerState{}
	for s := Spawning; s <= Killing; s++ {
		states[s.String()] = s
	}
	for _, r := range st.Workers {
		state, ok := states[r.State]
		// A detached worker may drain in a slot that scale-down removed.
		if !ok || state == Spawning || r.PID <= 0 || r.Slot < 0 || (r.Slot >= len(m.slots) && r.Role != "detached") || r.ID > m.lastID {
			return nil, fmt.Errorf("cluster: restored worker %d is not valid (%+v)", r.ID, r)
		}
		if _, dup := m.byPID[r.PID]; dup {
			return nil, fmt.Errorf("cluster: restored pid %d twice", r.PID)
		}
		w := &worker{
			id: r.ID, slot: r.Slot, generation: r.Generation, pid: r.PID, state: state, template: r.Template,
			channel: r.Channel, hello: r.Hello, canFork: r.CanFork, expected: r.Expected,
			stopReason: r.StopReason, stopAsked: r.StopAsked, statusLine: r.StatusLine, requests: r.Requests, reforkBase: r.ReforkBase,
			busy: r.Busy, heartbeat: r.Heartbeat, spawnedAt: at(r.SpawnedAgo), readyAt: at(r.ReadyAgo),
			killReason: r.KillReason, recycled: r.Recycled, source: r.Source,
		}
		switch state {
		case Booting:
			w.deadline = now.Add(cfg.BootTimeout)
		case Ready:
			if w.heartbeat > 0 {
				w.deadline = now.Add(w.heartbeat)
			}
		case Stopping:
			w.deadline = now.Add(cfg.ShutdownTimeout)
		}
		switch r.Role {
		case "current":
			s := m.slots[r.Slot]
			if s.worker != nil {
				return nil, fmt.Errorf("cluster: restored slot %d has two current workers", r.Slot)
			}
			s.worker = w
		case "detached":
			if !state.gone() {
				return nil, fmt.Errorf("cluster: restored worker %d is detached but %s", r.ID, state)
			}
		default:
			return nil, fmt.Errorf("cluster: restored worker %d has role %q", r.ID, r.Role)
		}
		if r.IsTemplate {
			m.template = w
		}
		m.workers[w.id] = w
		m.byPID[w.pid] = w
	}
	for _, r := range st.Strays {
		k := strayKey{pid: r.PID, group: r.Group}
		if _, dup := m.strays[k]; dup || r.PID <= 0 {
			return nil, fmt.Errorf("cluster: restored stray %+v is not valid", r)
		}
		sr := &stray{sigkilled: r.SIGKILLed}
		if !r.SIGKILLed {
			sr.deadline = now.Add(r.KillIn)
		}
		m.strays[k] = sr
	}
	for _, s := range m.slots[:min(m.desired, len(m.slots))] {
		if s.empty() && !s.retiring {
			m.respawn(s)
		}
	}
	m.lastStatus = m.statusLine()
	return m, nil
}
