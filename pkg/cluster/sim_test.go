package cluster

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/notify"
)

var (
	simSeed  = flag.Uint64("sim.seed", 0, "run the simulation with this seed only")
	simRuns  = flag.Int("sim.runs", 400, "number of seeded simulation runs")
	simSteps = flag.Int("sim.steps", 400, "random events per simulation run")
)

// TestSimulation drives the machine with seeded random event orders on a simulated clock, against
// a fake world of processes that boot, serve, hang, crash and ignore SIGTERM, and checks the
// cluster's invariants after every step. A failure names its seed; rerun it alone with
// go test ./pkg/cluster -run TestSimulation -sim.seed=N -v.
func TestSimulation(t *testing.T) {
	if *simSeed != 0 {
		runSimulation(t, *simSeed)
		return
	}
	for i := range *simRuns {
		seed := uint64(i + 1)
		if !t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runSimulation(t, seed) }) {
			return
		}
	}
}

// proc is a fake worker process.
type proc struct {
	pid    int
	worker WorkerID
	slot   int
	hung   bool // sends nothing any more (SIGSTOP, deadlock)
	// stubborn processes ignore SIGTERM.
	stubborn bool
}

type pendingExit struct {
	pid    int
	at     time.Time
	status ExitStatus
}

type exitRecord struct {
	at      time.Time
	crashes int
}

type simulation struct {
	t   *testing.T
	rng *rand.Rand
	m   *Machine
	cfg Config
	now time.Time

	procs      map[int]*proc
	lastPID    int
	exits      []pendingExit
	lastExit   map[int]exitRecord // by slot
	maxDesired int
	requests   map[RequestID]bool // sent, not yet answered
	lastReq    RequestID
	exitCode   *int
	phase      Phase
	depth      int
	trace      []string
}

func runSimulation(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	cfg := Config{
		Workers:         1 + rng.IntN(5),
		MaxWorkers:      8,
		ReadyOnStart:    rng.IntN(4) == 0,
		BootTimeout:     time.Duration(1+rng.IntN(10)) * time.Second,
		ShutdownTimeout: time.Duration(rng.IntN(6)) * time.Second,
		BackoffMin:      time.Duration(100+rng.IntN(1000)) * time.Millisecond,
		ResetAfter:      time.Duration(5+rng.IntN(30)) * time.Second,
	}
	cfg.BackoffMax = cfg.BackoffMin * time.Duration(1+rng.IntN(40))
	if rng.IntN(2) == 0 {
		cfg.HeartbeatTimeout = time.Duration(1+rng.IntN(5)) * time.Second
	}
	m, err := NewMachine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &simulation{
		t: t, rng: rng, m: m, cfg: cfg, now: epoch,
		procs:      make(map[int]*proc),
		lastExit:   make(map[int]exitRecord),
		maxDesired: cfg.Workers,
		requests:   make(map[RequestID]bool),
		lastPID:    1000,
	}
	defer func() {
		if t.Failed() {
			t.Logf("seed %d, config %+v; last events:\n%s", seed, cfg, strings.Join(s.trace[max(0, len(s.trace)-40):], "\n"))
		}
	}()

	s.step(Start{})
	for i := 0; i < *simSteps && s.exitCode == nil && !t.Failed(); i++ {
		s.randomEvent()
	}
	if s.exitCode == nil && !t.Failed() {
		s.step(Stop{Request: s.newRequest(), Immediate: rng.IntN(3) == 0})
	}
	// Drain: with every process eventually exiting, the machine must reach Exit in bounded time.
	limit := s.now.Add(cfg.ShutdownTimeout + time.Minute)
	for s.exitCode == nil && !t.Failed() {
		if s.now.After(limit) {
			t.Fatalf("cluster did not stop by %s; status %+v", limit.Sub(epoch), m.Status())
		}
		s.advance(s.nextEventTime(time.Second))
	}
	if t.Failed() {
		return
	}
	if len(s.procs) != 0 {
		t.Fatalf("Exit emitted with %d processes alive", len(s.procs))
	}
	if len(s.requests) != 0 {
		t.Fatalf("requests never answered: %v", s.requests)
	}
	if *s.exitCode != 0 {
		t.Fatalf("exit code %d", *s.exitCode)
	}
}

func (s *simulation) newRequest() RequestID {
	s.lastReq++
	s.requests[s.lastReq] = true
	return s.lastReq
}

func (s *simulation) randomProc() *proc {
	if len(s.procs) == 0 {
		return nil
	}
	pids := make([]int, 0, len(s.procs))
	for pid := range s.procs {
		pids = append(pids, pid)
	}
	// Map order is random; sort for reproducibility.
	for i := 1; i < len(pids); i++ {
		for j := i; j > 0 && pids[j] < pids[j-1]; j-- {
			pids[j], pids[j-1] = pids[j-1], pids[j]
		}
	}
	return s.procs[pids[s.rng.IntN(len(pids))]]
}

func (s *simulation) randomEvent() {
	r := s.rng.IntN(100)
	switch {
	case r < 35:
		s.advance(s.nextEventTime(time.Duration(s.rng.IntN(2000)) * time.Millisecond))
	case r < 65:
		if p := s.randomProc(); p != nil && !p.hung {
			s.step(Notified{Worker: p.worker, Message: s.randomMessage()})
		}
	case r < 72:
		if p := s.randomProc(); p != nil {
			st := ExitStatus{Code: 1}
			if s.rng.IntN(2) == 0 {
				st = ExitStatus{Signal: syscall.SIGSEGV}
			}
			s.exitNow(p.pid, st)
		}
	case r < 76:
		if p := s.randomProc(); p != nil {
			p.hung = true
		}
	case r < 79:
		if p := s.randomProc(); p != nil {
			p.stubborn = true
		}
	case r < 84:
		s.step(NotifyRejected{PID: 99999, Reason: "sender is not a worker"})
	case r < 87:
		s.step(Exited{PID: 50000 + s.rng.IntN(100), Status: ExitStatus{}})
	case r < 90:
		// A stale notification for a worker that has gone.
		s.step(Notified{Worker: WorkerID(s.rng.IntN(int(s.m.lastID) + 1)), Message: notify.Message{Ready: true}})
	case r < 97:
		var e Scale
		e.Request = s.newRequest()
		if s.rng.IntN(2) == 0 {
			e.Workers = s.rng.IntN(s.cfg.MaxWorkers + 2)
		} else {
			e.Delta = s.rng.IntN(5) - 2
		}
		s.step(e)
	case r < 98:
		s.step(Tick{})
	default:
		if s.rng.IntN(4) == 0 {
			s.step(Stop{Request: s.newRequest(), Immediate: s.rng.IntN(2) == 0})
		}
	}
}

func (s *simulation) randomMessage() notify.Message {
	var msg notify.Message
	switch r := s.rng.IntN(100); {
	case r < 40:
		msg.Ready = true
	case r < 80:
		msg.Watchdog = true
	case r < 85:
		msg.HasStatus, msg.Status = true, "busy"
		msg.HasRequests, msg.Requests = true, uint64(s.rng.IntN(1000))
	case r < 90:
		msg.ExtendTimeout = time.Duration(s.rng.IntN(5000)) * time.Millisecond
	case r < 94:
		msg.Stopping = true
	case r < 97:
		msg.WatchdogTimeout = time.Duration(1+s.rng.IntN(4)) * time.Second
	default:
		msg.WatchdogTrigger = true
	}
	return msg
}

// nextEventTime is the earliest of the machine's deadline, the next scheduled exit, and now+d.
func (s *simulation) nextEventTime(d time.Duration) time.Time {
	next := s.now.Add(d)
	if dl, ok := s.m.NextDeadline(); ok && dl.Before(next) {
		next = dl
	}
	for _, e := range s.exits {
		if e.at.Before(next) {
			next = e.at
		}
	}
	if next.Before(s.now) {
		next = s.now
	}
	return next
}

// advance moves the clock to t, delivering the exits due by then in order, then a Tick.
func (s *simulation) advance(t time.Time) {
	s.now = t
	for {
		i := -1
		for j, e := range s.exits {
			if !e.at.After(s.now) && (i < 0 || e.at.Before(s.exits[i].at)) {
				i = j
			}
		}
		if i < 0 {
			break
		}
		e := s.exits[i]
		s.exits = append(s.exits[:i], s.exits[i+1:]...)
		s.exitNow(e.pid, e.status)
	}
	s.step(Tick{})
	if dl, ok := s.m.NextDeadline(); ok && !dl.After(s.now) && s.m.Phase() != PhaseStopped {
		s.t.Fatalf("after Tick at +%s a deadline is still due: +%s", s.now.Sub(epoch), dl.Sub(epoch))
	}
}

func (s *simulation) exitNow(pid int, st ExitStatus) {
	if _, ok := s.procs[pid]; !ok {
		return // already exited
	}
	delete(s.procs, pid)
	for i := 0; i < len(s.exits); i++ {
		if s.exits[i].pid == pid {
			s.exits = append(s.exits[:i], s.exits[i+1:]...)
			i--
		}
	}
	s.step(Exited{PID: pid, Status: st})
}

func (s *simulation) step(ev Event) {
	if s.exitCode != nil {
		return
	}
	s.trace = append(s.trace, fmt.Sprintf("+%s %T%+v", s.now.Sub(epoch), ev, ev))
	// Remember when a slot lost its process and how many crashes in a row that made, to check the
	// backoff of the respawn that follows.
	var ended *worker
	switch e := ev.(type) {
	case Exited:
		ended = s.m.byPID[e.PID]
	case SpawnFailed:
		ended = s.m.workers[e.Worker]
	}
	crashesBefore := 0
	if ended != nil {
		crashesBefore = s.m.slots[ended.slot].failures
	}
	if err := s.m.Step(s.now, ev); err != nil {
		s.t.Fatalf("Step(%T%+v): %v", ev, ev, err)
	}
	if ended != nil && ended.slot < len(s.m.slots) {
		after := s.m.slots[ended.slot].failures
		if after == crashesBefore && after > 1 {
			after = 0 // not a crash: an exit forkd asked for
		}
		s.lastExit[ended.slot] = exitRecord{at: s.now, crashes: after}
	}
	s.depth++
	for _, a := range s.m.Ready() {
		s.apply(a)
	}
	s.depth--
	// Answering an action steps the machine again (Spawned for SpawnWorker); the invariants hold
	// once every action of the outermost step has been carried out.
	if s.depth == 0 {
		s.checkInvariants()
	}
}

// apply plays the driver: it carries out an action and answers it the way the real driver does.
func (s *simulation) apply(a Action) {
	s.trace = append(s.trace, fmt.Sprintf("    -> %T%+v", a, a))
	switch a := a.(type) {
	case SpawnWorker:
		if rec, ok := s.lastExit[a.Slot]; ok {
			if earliest := rec.at.Add(s.expectedBackoff(rec.crashes)); s.now.Before(earliest) {
				s.t.Fatalf("slot %d respawned at +%s, %d crashes in a row allow +%s at the earliest",
					a.Slot, s.now.Sub(epoch), rec.crashes, earliest.Sub(epoch))
			}
		}
		if s.rng.IntN(20) == 0 {
			s.step(SpawnFailed{Worker: a.Worker, Err: "fork: resource temporarily unavailable"})
			return
		}
		s.lastPID++
		s.procs[s.lastPID] = &proc{pid: s.lastPID, worker: a.Worker, slot: a.Slot}
		s.step(Spawned{Worker: a.Worker, PID: s.lastPID})
	case SignalWorker:
		p, ok := s.procs[a.PID]
		if !ok || p.worker != a.Worker {
			s.t.Fatalf("signal %v to pid %d of worker %d, which is not that worker's live process", a.Signal, a.PID, a.Worker)
		}
		switch a.Signal {
		case syscall.SIGKILL:
			s.exits = append(s.exits, pendingExit{pid: a.PID, at: s.now.Add(time.Duration(s.rng.IntN(100)) * time.Millisecond), status: ExitStatus{Signal: syscall.SIGKILL}})
		case syscall.SIGTERM:
			if !p.stubborn && !p.hung {
				drain := time.Duration(s.rng.Int64N(int64(s.cfg.ShutdownTimeout)*3/2 + 1))
				s.exits = append(s.exits, pendingExit{pid: a.PID, at: s.now.Add(drain), status: ExitStatus{}})
			}
		default:
			s.t.Fatalf("unexpected signal %v", a.Signal)
		}
	case Reply:
		if !s.requests[a.Request] {
			s.t.Fatalf("reply to request %d, which is not pending", a.Request)
		}
		delete(s.requests, a.Request)
	case Exit:
		code := a.Code
		s.exitCode = &code
	case NotifySystemd, Log:
	default:
		s.t.Fatalf("unknown action %T", a)
	}
}

func (s *simulation) expectedBackoff(crashes int) time.Duration {
	if crashes <= 1 {
		return 0
	}
	d := s.cfg.BackoffMin
	for i := 2; i < crashes; i++ {
		d *= 2
		if d >= s.cfg.BackoffMax {
			return s.cfg.BackoffMax
		}
	}
	return min(d, s.cfg.BackoffMax)
}

func (s *simulation) checkInvariants() {
	t, m := s.t, s.m
	t.Helper()
	if m.phase < s.phase {
		t.Fatalf("phase went back from %s to %s", s.phase, m.phase)
	}
	s.phase = m.phase
	s.maxDesired = max(s.maxDesired, m.desired)

	// Every live process is a worker the machine knows, and every worker with a PID is alive:
	// every exited child is accounted for.
	for pid, p := range s.procs {
		w, ok := m.byPID[pid]
		if !ok || w.id != p.worker {
			t.Fatalf("live pid %d (worker %d) unknown to the machine", pid, p.worker)
		}
	}
	for pid, w := range m.byPID {
		if _, ok := s.procs[pid]; !ok {
			t.Fatalf("machine holds worker %d with pid %d, which has exited", w.id, pid)
		}
	}
	// Never more processes than configured.
	if len(s.procs) > s.maxDesired || len(m.workers) > len(m.slots) || len(m.slots) > m.cfg.MaxWorkers {
		t.Fatalf("%d processes, %d workers, %d slots, at most %d workers were ever asked for",
			len(s.procs), len(m.workers), len(m.slots), s.maxDesired)
	}
	perSlot := map[int]int{}
	for _, w := range m.workers {
		perSlot[w.slot]++
		if m.slots[w.slot].worker != w {
			t.Fatalf("worker %d is not its slot's current worker", w.id)
		}
		if w.state == Spawning {
			t.Fatalf("worker %d still spawning after the driver answered", w.id)
		}
		needsDeadline := w.state == Booting || w.state == Stopping || (w.state == Ready && w.heartbeat > 0)
		if needsDeadline == w.deadline.IsZero() {
			t.Fatalf("worker %d in state %s has deadline %v", w.id, w.state, w.deadline)
		}
	}
	// No slot stuck: a desired slot has a process or a respawn time.
	if m.phase == PhaseStarting || m.phase == PhaseRunning {
		for _, sl := range m.slots[:min(m.desired, len(m.slots))] {
			if sl.worker == nil && sl.nextSpawn.IsZero() {
				t.Fatalf("slot %d has no worker and no respawn scheduled", sl.index)
			}
			if sl.retiring {
				t.Fatalf("desired slot %d is retiring", sl.index)
			}
		}
	}
	for slot := range s.lastExit {
		if slot >= len(m.slots) {
			delete(s.lastExit, slot) // the slot is gone; a new one at this index starts afresh
		}
	}
	if m.phase == PhaseStopping {
		for _, sl := range m.slots {
			if !sl.nextSpawn.IsZero() {
				t.Fatalf("slot %d schedules a respawn while stopping", sl.index)
			}
		}
	}
	if st := m.Status(); st.Ready > st.Desired {
		t.Fatalf("%d ready of %d desired", st.Ready, st.Desired)
	}
}
