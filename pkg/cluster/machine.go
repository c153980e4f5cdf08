package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// Errors returned in Reply actions, matched with errors.Is.
var (
	// ErrStopping: the command cannot run because the cluster is stopping.
	ErrStopping = errors.New("cluster: forkd is stopping")
	// ErrScaleRange: a Scale asked for fewer than one worker or more than MaxWorkers.
	ErrScaleRange = errors.New("cluster: worker count out of range")
	// ErrBusy: a rollout (refork, phased restart, hot restart) is in progress; a scale waits for it.
	ErrBusy = errors.New("cluster: a rollout is in progress")
	// ErrNotReady: the cluster has not been ready yet, or has no template to refork from.
	ErrNotReady = errors.New("cluster: not ready")
	// ErrRolloutFailed: a rollout stopped before replacing every worker; the message says why.
	ErrRolloutFailed = errors.New("cluster: rollout failed")
	// ErrBadConfig: a reload found the config invalid; nothing changed.
	ErrBadConfig = errors.New("cluster: invalid config")
	// ErrStopped is returned by Step once the machine has emitted Exit.
	ErrStopped = errors.New("cluster: machine has stopped")
)

// Phase is where the cluster as a whole is.
type Phase int

const (
	// PhaseStarting: not every slot has been ready yet; systemd has not been told READY=1.
	PhaseStarting Phase = iota
	// PhaseRunning: the cluster has been ready once; crashed workers are replaced.
	PhaseRunning
	// PhaseStopping: workers drain; none is replaced.
	PhaseStopping
	// PhaseStopped: every worker has exited and Exit was emitted.
	PhaseStopped
)

var phaseNames = [...]string{"starting", "running", "stopping", "stopped"}

func (p Phase) String() string { return phaseNames[p] }

// Machine is the cluster's logic as a deterministic state machine. It does no I/O and reads no
// clock: time arrives with every Step. It is not safe for concurrent use; one goroutine (the
// driver) owns it.
type Machine struct {
	cfg        Config
	now        time.Time
	phase      Phase
	generation int
	desired    int
	immediate  bool

	slots   []*slot
	workers map[WorkerID]*worker
	byPID   map[int]*worker
	lastID  WorkerID

	// template is worker 0 while it is ready and declared it can fork; nil otherwise.
	template *worker
	// execMode is set when worker 0 became ready without declaring it can fork: workers are
	// exec'd until a worker 0 that can fork comes along.
	execMode bool
	// moldRefusals counts the reforks that fell back to the template because the source's SDK
	// could not fork a mold; the first one is logged as a warning.
	moldRefusals int
	// reforks counts the reforks completed since the workers were last replaced (a reload), for
	// ReforkAfter.
	reforks int
	// trafficAt is when a worker last reported more requests than before (the warm-up's idle
	// rule, warm.go).
	trafficAt time.Time
	// heapSize is the heap size the last exec'd template reported (heapsize.go), which the next
	// worker 0 forkd execs boots with; nil before any did.
	heapSize *HeapSize
	// decay is the refork trigger that follows the workers' memory (decay.go).
	decay   decayTrigger
	rollout *rollout
	// ops wait for their turn (ops.go); preparing is the one the driver prepares; opSeq numbers
	// them; last is how the last one ended.
	ops       []*op
	preparing *op
	opSeq     int
	last      RolloutResult

	// strays are the processes forkd started and no longer tracks that it is stopping (stray.go).
	strays map[strayKey]*stray

	stopWaiters []RequestID
	dropped     uint64
	// late counts notifications from workers that had exited when they were read; recentExits
	// remembers the workers that exited within lateWindow, by PID, to recognize them.
	late        uint64
	recentExits map[int]recentExit
	lastStatus  string
	actions     []Action

	// loaded is a reload whose config is loaded and whose before_reload hook runs (reload.go).
	loaded *pendingReload
	// handedOver is the hot restart that exported the state this machine was restored from,
	// until Adopted decides what follows it (restart.go).
	handedOver *OpRecord
	// hooks are the hooks running, by ID (lastHook the last one given); crashHooks counts the
	// on_worker_crash ones among them.
	hooks      map[HookID]Hook
	lastHook   HookID
	crashHooks int
	// watchdogHeld: systemd's watchdog pings are withheld for want of ready workers.
	watchdogHeld bool
	// inBatch: Ready handed out a batch that Advance has not acknowledged yet.
	inBatch bool
}

// lateWindow is how long the machine remembers a worker's PID after its exit, so that what it sent
// just before exiting is known as its own when it is read after the exit (a datagram and a SIGCHLD
// race to the master). A PID is not reused that fast unless the system is out of PIDs.
const lateWindow = 10 * time.Second

type recentExit struct {
	id WorkerID
	at time.Time
}

// NewMachine returns a machine for cfg. Nothing happens until Step(now, Start{}).
func NewMachine(cfg Config) (*Machine, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.ReforkAfter = slices.Clone(cfg.ReforkAfter)
	cfg.ReforkOnDecay = clonePolicy(cfg.ReforkOnDecay)
	return &Machine{
		cfg:         cfg,
		generation:  1,
		desired:     cfg.slotsFor(cfg.Workers),
		workers:     make(map[WorkerID]*worker),
		byPID:       make(map[int]*worker),
		strays:      make(map[strayKey]*stray),
		recentExits: make(map[int]recentExit),
		hooks:       make(map[HookID]Hook),
	}, nil
}

// Step feeds one event to the machine at time now. An error means the event made no sense (a
// driver bug, such as Spawned for an unknown worker); the machine is unchanged by it.
//
// Step panics when called between Ready and Advance: what the driver learns while it carries out
// a batch (a PID, a failed spawn) is stepped after the whole batch, so that the actions of one
// step are carried out in the order the machine decided them.
func (m *Machine) Step(now time.Time, ev Event) error {
	if m.inBatch {
		panic(fmt.Sprintf("cluster: Step(%T) while a batch of actions is being carried out (Ready without Advance)", ev))
	}
	if m.phase == PhaseStopped {
		return ErrStopped
	}
	if now.After(m.now) {
		m.now = now
	}
	var err error
	switch e := ev.(type) {
	case Start:
		m.start()
	case Tick:
		m.tick()
	case Spawned:
		err = m.spawned(e)
	case SpawnFailed:
		err = m.spawnFailed(e)
	case Exited:
		m.exited(e)
	case Notified:
		m.notified(e)
	case NotifyRejected:
		m.notifyRejected(e)
	case Hello:
		m.hello(e)
	case MoldRefused:
		m.moldRefused(e)
	case TemplatePaused:
		m.templateReplied(e.Worker, true)
	case TemplateResumed:
		m.templateReplied(e.Worker, false)
	case Stop:
		m.stop(e)
	case Scale:
		m.scale(e)
	case Refork:
		m.refork(e)
	case Reload:
		m.reload(e)
	case ConfigLoaded:
		m.configLoaded(e)
	case HookFinished:
		m.hookFinished(e)
	case Restart:
		m.restart(e)
	case RestartChecked:
		m.restartChecked(e)
	case ExecFailed:
		m.execFailed(e)
	case Adopted:
		m.adopted()
	case WatchdogDue:
		m.watchdogDue()
	case StrayFound:
		m.strayFound(e)
	case GroupEmptied:
		m.strayGone(strayKey{pid: e.PGID, group: true}, "no process left in it")
	case Stalled:
		m.stalled(e)
	case MemorySampled:
		m.memorySampled(e)
	default:
		err = fmt.Errorf("cluster: unknown event %T", ev)
	}
	m.settle()
	return err
}

// Ready returns the batch of actions decided since the last call, in the order the driver must
// carry them out, and forgets them. The driver carries out the whole batch, then calls Advance;
// Step may not be called in between (Step panics), which rules out a nested step that would run
// its actions before the rest of the batch. As in etcd-io/raft's Ready/Advance.
func (m *Machine) Ready() []Action {
	a := m.actions
	m.actions = nil
	m.inBatch = true
	return a
}

// Advance tells the machine that the batch Ready returned has been carried out, so that it may be
// stepped again.
func (m *Machine) Advance() { m.inBatch = false }

// NextDeadline returns the earliest time at which the machine wants a Tick, and false when no
// deadline is pending (an idle cluster without heartbeats needs no timer at all).
func (m *Machine) NextDeadline() (time.Time, bool) {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	for _, w := range m.workers {
		consider(w.deadline)
	}
	for _, s := range m.slots {
		if !s.retiring {
			consider(s.nextSpawn)
			consider(s.awaitTemplate)
		}
	}
	if m.rollout != nil {
		consider(m.rollout.deadline)
		consider(m.rollout.warmUpDeadline(m))
	}
	for _, s := range m.strays {
		consider(s.deadline)
	}
	return next, !next.IsZero()
}

// WorkerByPID returns the worker whose process has pid.
func (m *Machine) WorkerByPID(pid int) (WorkerID, bool) {
	w, ok := m.byPID[pid]
	if !ok {
		return 0, false
	}
	return w.id, true
}

// ExitedWorker returns the worker whose process had pid and exited within the last 10 seconds
// (of the machine's time): a datagram from pid that arrives now is that worker's, late.
func (m *Machine) ExitedWorker(pid int) (WorkerID, bool) {
	e, ok := m.recentExits[pid]
	if !ok || m.now.Sub(e.at) > lateWindow {
		return 0, false
	}
	return e.id, true
}

// Phase returns the cluster's phase.
func (m *Machine) Phase() Phase { return m.phase }

// Config returns the machine's config in effect.
func (m *Machine) Config() Config {
	c := m.cfg
	c.ReforkAfter = slices.Clone(c.ReforkAfter)
	c.ReforkOnDecay = clonePolicy(c.ReforkOnDecay)
	return c
}

// Generation returns the generation new workers are made of: during a rollout, the one it rolls out.
func (m *Machine) Generation() int { return m.generation }

// ReadyCount returns how many of the desired workers are ready.
func (m *Machine) ReadyCount() int { return m.readyCount() }

// RollingOut reports whether a rollout (refork, reload) is in progress.
func (m *Machine) RollingOut() bool { return m.rollout != nil }

// LastRollout says how the last operation (refork, reload, hot restart) ended.
func (m *Machine) LastRollout() RolloutResult { return m.last }

func (m *Machine) emit(a Action) { m.actions = append(m.actions, a) }

func (m *Machine) log(level slog.Level, msg string, attrs ...slog.Attr) {
	m.emit(Log{Level: level, Msg: msg, Attrs: attrs})
}

func (m *Machine) workerAttrs(w *worker, event string) []slog.Attr {
	return []slog.Attr{
		slog.String("event", event),
		slog.Int("worker", w.slot),
		slog.Int("pid", w.pid),
		slog.Int("generation", w.generation),
	}
}
