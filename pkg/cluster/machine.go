package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"slices"
	"strings"
	"syscall"
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

// Config is the machine's view of forkd's configuration.
type Config struct {
	Workers    int
	MaxWorkers int
	// ReadyOnStart counts a worker as ready when it is spawned, without waiting for READY=1.
	ReadyOnStart bool

	BootTimeout time.Duration
	// HeartbeatTimeout is the initial WATCHDOG_USEC of every worker; zero disables heartbeats.
	HeartbeatTimeout time.Duration
	// ShutdownTimeout is the time between SIGTERM and SIGKILL; zero sends SIGKILL at once.
	ShutdownTimeout time.Duration

	BackoffMin, BackoffMax, ResetAfter time.Duration

	// ForkWorker turns on fork-worker mode: worker 0 is exec'd with a control channel and, if it
	// declares it can fork, every other worker is forked from it.
	ForkWorker bool
	// ForkTimeout bounds a fork (from spawn request to the template's reply) and a pause.
	ForkTimeout time.Duration
	// ReforkAfter lists, for each automatic refork in turn, how many requests the busiest worker
	// serves since the previous one (since the workers were replaced, for the first); empty
	// disables automatic reforks. Past the end of the list, the last entry repeats if
	// ReforkAfterRepeats, else automatic reforks stop.
	ReforkAfter        []uint64
	ReforkAfterRepeats bool

	// MaxSurge and MaxUnavailable shape rollouts: at most MaxSurge workers above the desired count,
	// at most MaxUnavailable of the desired workers stopped before their replacement is ready.
	MaxSurge, MaxUnavailable int

	// Settings names the settings the machine's messages point to, as the operator writes them.
	// Zero values name the config file's.
	Settings SettingNames
}

// SettingNames names the settings behind the machine's advice: a config file's attributes, or the
// flags of quick mode (forkd --readiness started -- app).
type SettingNames struct {
	// ReadyOnNotify and ReadyOnStart set readiness: `readiness = "notify"`, `readiness = "started"`.
	ReadyOnNotify, ReadyOnStart string
	// ForkWorker turns fork-worker mode on: "a fork_worker block in the config".
	ForkWorker string
}

// withDefaults fills in the config file's names for the settings left unnamed.
func (s SettingNames) withDefaults() SettingNames {
	if s.ReadyOnNotify == "" {
		s.ReadyOnNotify = `readiness = "notify"`
	}
	if s.ReadyOnStart == "" {
		s.ReadyOnStart = `readiness = "started"`
	}
	if s.ForkWorker == "" {
		s.ForkWorker = "a fork_worker block in the config"
	}
	return s
}

func (c *Config) validate() error {
	switch {
	case c.MaxWorkers < 1:
		return errors.New("cluster: MaxWorkers must be at least 1")
	case c.Workers < 1 || c.Workers > c.MaxWorkers:
		return fmt.Errorf("cluster: Workers must be in 1..%d", c.MaxWorkers)
	case c.BootTimeout <= 0:
		return errors.New("cluster: BootTimeout must be positive")
	case c.HeartbeatTimeout < 0 || c.ShutdownTimeout < 0:
		return errors.New("cluster: timeouts must not be negative")
	case c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin:
		return errors.New("cluster: need 0 < BackoffMin <= BackoffMax")
	case c.ResetAfter <= 0:
		return errors.New("cluster: ResetAfter must be positive")
	case c.ForkWorker && c.ForkTimeout <= 0:
		return errors.New("cluster: ForkTimeout must be positive in fork-worker mode")
	case c.MaxSurge < 0 || c.MaxUnavailable < 0 || c.MaxSurge+c.MaxUnavailable < 1:
		return errors.New("cluster: MaxSurge and MaxUnavailable must not be negative, and not both zero")
	}
	for _, n := range c.ReforkAfter {
		if n == 0 {
			return errors.New("cluster: ReforkAfter entries must be positive")
		}
	}
	return nil
}

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
	// reforks counts the reforks completed since the workers were last replaced (a reload), for
	// ReforkAfter.
	reforks int
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
	return &Machine{
		cfg:         cfg,
		generation:  1,
		desired:     cfg.Workers,
		workers:     make(map[WorkerID]*worker),
		byPID:       make(map[int]*worker),
		strays:      make(map[strayKey]*stray),
		recentExits: make(map[int]recentExit),
	}, nil
}

// Step feeds one event to the machine at time now. An error means the event made no sense (a
// driver bug, such as Spawned for an unknown worker); the machine is unchanged by it.
func (m *Machine) Step(now time.Time, ev Event) error {
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
	case TemplateReplied:
		m.templateReplied(e)
	case Stop:
		m.stop(e)
	case Scale:
		m.scale(e)
	case Refork:
		m.refork(e)
	case Reload:
		m.reload(e)
	case ReloadPrepared:
		err = m.reloadPrepared(e)
	case Restart:
		m.restart(e)
	case RestartFailed:
		m.restartFailed(e)
	case StrayFound:
		m.strayFound(e)
	case GroupEmptied:
		m.strayGone(strayKey{pid: e.PGID, group: true}, "no process left in it")
	case Stalled:
		m.stalled(e)
	default:
		err = fmt.Errorf("cluster: unknown event %T", ev)
	}
	m.settle()
	return err
}

// Ready returns the actions decided since the last call, in the order the driver must carry them
// out, and forgets them.
func (m *Machine) Ready() []Action {
	a := m.actions
	m.actions = nil
	return a
}

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

func (m *Machine) start() {
	if len(m.slots) > 0 || m.phase != PhaseStarting {
		return
	}
	mode := "exec"
	if m.cfg.ForkWorker {
		mode = "fork-worker"
	}
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
	m.lastID++
	w := &worker{
		id:         m.lastID,
		slot:       s.index,
		generation: m.generation,
		state:      Spawning,
		spawnedAt:  m.now,
		heartbeat:  m.cfg.HeartbeatTimeout,
		channel:    m.cfg.ForkWorker && (s.index == 0 || template != nil),
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
	m.emit(SpawnWorker{Worker: w.id, Slot: s.index, Generation: w.generation, Template: w.template,
		Channel: w.channel && template == nil})
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
	if w.forked() {
		how = "forked"
	}
	m.log(slog.LevelInfo, "worker spawned ("+how+")", m.workerAttrs(w, "worker-spawned")...)
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
	if w.stopReason != "" {
		how += " (" + w.stopReason + ")"
	}
	if w.stopAsked == "STOPPING=1" && e.Status.Success() {
		// It said it was stopping, then exited cleanly: a worker recycling itself (gunicorn's
		// max_requests, Puma's worker killer) is replaced as a planned exit, not as a crash.
		w.expected = true
	}
	level := slog.LevelWarn
	if w.expected {
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
	s, current, replacement := m.forget(w)
	if replacement {
		if !w.expected {
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
		m.emit(WorkerCrashed{Slot: s.index, PID: w.pid, Generation: w.generation, Status: how})
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
	w.state = Ready
	w.readyAt = m.now
	w.deadline = time.Time{}
	if w.heartbeat > 0 {
		w.deadline = m.now.Add(w.heartbeat)
	}
	attrs := append(m.workerAttrs(w, "worker-ready"), slog.Duration("boot", m.now.Sub(w.spawnedAt)))
	m.log(slog.LevelInfo, "worker ready", attrs...)
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
			m.kill(w, "boot timeout")
		case Ready:
			m.log(slog.LevelError, fmt.Sprintf("worker sent no heartbeat (WATCHDOG=1) for %s", w.heartbeat),
				m.workerAttrs(w, "heartbeat-timeout")...)
			m.kill(w, "heartbeat timeout")
		case Stopping:
			m.log(slog.LevelWarn, fmt.Sprintf("worker did not exit within %s of %s", m.cfg.ShutdownTimeout, w.stopAsked),
				m.workerAttrs(w, "shutdown-timeout")...)
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

func (m *Machine) notified(e Notified) {
	w, ok := m.workers[e.Worker]
	if !ok {
		// Sent before the worker exited, read after: not a stranger's, and too late to matter.
		m.late++
		m.log(slog.LevelDebug, "ignored a notification from a worker that has exited", slog.String("event", "notify-late"),
			slog.Uint64("worker_id", uint64(e.Worker)), slog.Uint64("late", m.late))
		return
	}
	msg := e.Message
	if msg.HasStatus {
		w.statusLine = msg.Status
	}
	if msg.HasRequests {
		m.countRequests(w, msg.Requests)
	}
	if msg.WatchdogTimeout > 0 {
		w.heartbeat = msg.WatchdogTimeout
	}
	if msg.Ready && w.state == Booting {
		m.becomeReady(w)
	}
	if (msg.Watchdog || msg.WatchdogTimeout > 0) && w.state == Ready && w.heartbeat > 0 {
		w.deadline = m.now.Add(w.heartbeat)
	}
	if ext := msg.ExtendTimeout; ext > 0 && (w.state == Booting || w.state == Stopping) {
		if t := m.now.Add(ext); t.After(w.deadline) {
			w.deadline = t
		}
	}
	if msg.Stopping && (w.state == Booting || w.state == Ready) {
		m.log(slog.LevelInfo, "worker is stopping on its own (STOPPING=1)", m.workerAttrs(w, "worker-stopping")...)
		if m.template == w {
			m.loseTemplate()
		}
		w.state = Stopping
		w.stopAsked = "STOPPING=1"
		w.stopReason = "stopped on its own"
		w.deadline = m.now.Add(m.cfg.ShutdownTimeout)
	}
	if msg.WatchdogTrigger && w.state != Killing && w.state != Spawning {
		m.log(slog.LevelError, "worker triggered its watchdog (WATCHDOG=trigger)", m.workerAttrs(w, "watchdog-trigger")...)
		m.kill(w, "watchdog triggered")
	}
	if msg.HasRequests {
		m.maybeAutoRefork()
	}
}

// maxRequestRate bounds how fast a worker's X_FORKD_REQUESTS may grow: ten million requests a
// second is beyond any one process; a count that grows faster is a bug, not traffic.
const maxRequestRate = 10_000_000

// countRequests takes a worker's cumulative request count, unless it makes no sense: a count that
// goes back (a process's cumulative count never does; a forked worker starts its own at 0), or
// grows faster than maxRequestRate since the last one (or since the worker spawned, with a second
// of slack). Such a count is ignored, and said once per worker; the rest of the message applies.
func (m *Machine) countRequests(w *worker, n uint64) {
	since := w.requestsAt
	if since.IsZero() {
		since = w.spawnedAt
	}
	elapsed := max(m.now.Sub(since), 0) + time.Second
	limit := w.requests + uint64(elapsed.Seconds()*maxRequestRate)
	var why string
	switch {
	case n < w.requests:
		why = fmt.Sprintf("X_FORKD_REQUESTS=%d after %d: a cumulative count never goes back", n, w.requests)
	case n > limit:
		why = fmt.Sprintf("X_FORKD_REQUESTS=%d after %d in %s: more than %d requests a second", n, w.requests,
			elapsed-time.Second, maxRequestRate)
	default:
		w.requests, w.requestsAt = n, m.now
		return
	}
	if !w.badRequests {
		w.badRequests = true
		m.log(slog.LevelWarn, "ignoring the worker's request count: "+why+" (said once per worker)",
			m.workerAttrs(w, "requests-ignored")...)
	}
}

func (m *Machine) notifyRejected(e NotifyRejected) {
	before := m.dropped
	m.dropped += max(e.Count, 1)
	// At every power of two passed: a process flooding the socket cannot flood the log.
	if bits.Len64(m.dropped) > bits.Len64(before) {
		m.log(slog.LevelWarn, "dropped a notification: "+e.Reason, slog.String("event", "notify-dropped"),
			slog.Int("pid", e.PID), slog.Uint64("dropped", m.dropped))
	}
}

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
	n := e.Workers
	if n == 0 {
		n = m.desired + e.Delta
	}
	if n < 1 || n > m.cfg.MaxWorkers {
		m.emit(Reply{Request: e.Request, Err: fmt.Errorf("%w: %d workers asked, the range is 1..%d", ErrScaleRange, n, m.cfg.MaxWorkers)})
		return
	}
	prev := m.resize(n)
	m.emit(Reply{Request: e.Request, Result: ScaleResult{Previous: prev, Workers: n}})
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
	}
	if n != prev {
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
		m.dispatch()
		if m.rollout != nil {
			m.rollout.advance(m)
		}
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
	switch {
	case m.phase == PhaseStarting:
		fmt.Fprintf(&b, "starting: %d/%d workers ready, generation %d", m.readyCount(), m.desired, m.generation)
	case m.rollout != nil:
		fmt.Fprintf(&b, "rolling (%s): %d/%d workers on generation %d, %d ready", m.rollout.kind,
			m.rollout.onTarget(m), m.desired, m.rollout.to, m.readyCount())
	default:
		fmt.Fprintf(&b, "%d/%d workers ready, generation %d", m.readyCount(), m.desired, m.generation)
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
