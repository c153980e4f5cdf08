package cluster

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	simSeed  = flag.Uint64("sim.seed", 0, "run the simulation with this seed only")
	simRuns  = flag.Int("sim.runs", 400, "number of seeded simulation runs")
	simSteps = flag.Int("sim.steps", 400, "random events per simulation run")
	simTrace = flag.Int("sim.trace", 60, "events shown for a failed run")
	simFrom  = flag.Uint64("sim.from", 1, "the first seed of the runs")
)

// TestSimulation drives the machine with seeded random event orders on a simulated clock, against
// a fake world of processes that boot, serve, hang, crash, ignore SIGTERM, fail to fork, and lose
// or reorder their control-channel replies, and checks the cluster's invariants after every step.
// Half the runs are in fork-worker mode, with reforks. A failure names its seed; rerun it alone
// with go test ./pkg/cluster -run TestSimulation -sim.seed=N -v.
func TestSimulation(t *testing.T) {
	if *simSeed != 0 {
		runSimulation(t, *simSeed)
		return
	}
	simDecay, simRecycled, simWarmUps, simMoldWarmUps = simDecayCounts{}, 0, 0, 0
	for i := range *simRuns {
		seed := uint64(i) + *simFrom
		if !t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runSimulation(t, seed) }) {
			return
		}
	}
	// The memory trigger's invariants are checked only if the histories exercise it.
	t.Logf("refork_on_decay: %d reforks started, %d judged fruitless, %d stops", simDecay.reforks, simDecay.fruitless, simDecay.stops)
	if *simRuns >= 100 && (simDecay.reforks == 0 || simDecay.fruitless == 0 || simDecay.stops == 0) {
		t.Fatalf("the simulation hardly exercises refork_on_decay: %+v", simDecay)
	}
	t.Logf("recycling: %d workers; warm-ups of a new template: %d, of a new worker that forks a mold: %d", simRecycled, simWarmUps, simMoldWarmUps)
	if *simRuns >= 100 && (simRecycled == 0 || simWarmUps == 0 || simMoldWarmUps == 0) {
		t.Fatal("the simulation never recycles a worker, or never warms a template (or a mold's source) up")
	}
}

// TestReforkCapacity runs reforks in a world without faults, at random moments and with random
// request counts and timings, half of the runs in mold mode and half in template mode, and checks
// after every step that a refork that began with every serving worker ready keeps every slot's
// worker ready until it ends, with a surge of 1 or more: in mold mode the mold serves nothing and
// is forked while the others serve; in template mode worker 0 is paused (ready, not serving) and
// every other slot keeps its old worker until its replacement is ready. In both modes the old
// workers drain detached: the refork waits for no drain.
func TestReforkCapacity(t *testing.T) {
	reforks := map[bool]int{}
	for i := range *simRuns / 4 {
		mold := i%2 == 0
		s := runCalm(t, uint64(i+1), mold, false)
		if s == nil {
			return
		}
		reforks[mold] += s.fullReforks
	}
	t.Logf("reforks that began with every serving worker ready and ended well: %d in mold mode, %d in template mode",
		reforks[true], reforks[false])
	for _, mold := range []bool{true, false} {
		if *simRuns >= 100 && reforks[mold] < *simRuns/8 {
			t.Fatalf("only %d reforks were checked (mold mode %v)", reforks[mold], mold)
		}
	}
}

// TestMoldReloadWarmUpCapacity runs reloads (and reforks) in mold mode with a warm-up, in a world
// where only the molds fail (their source's SDK refuses, the fork fails, no answer, a hello
// without "mold"), and checks after every step that a reload that began with every serving worker
// ready keeps every one ready until it ends; that every reload ends well, with a template in slot
// 0; and that every serving worker is forked from that template, but the one that warmed up and
// forked it when it is a mold.
func TestMoldReloadWarmUpCapacity(t *testing.T) {
	var total simulation
	for i := range *simRuns / 4 {
		s := runCalm(t, uint64(i+1), true, true)
		if s == nil {
			return
		}
		total.fullReforks += s.fullReforks
		total.moldReloads += s.moldReloads
		total.moldedReloads += s.moldedReloads
	}
	t.Logf("%d rollouts in mold mode began with every serving worker ready and ended well; %d reloads, %d of them from a mold",
		total.fullReforks, total.moldReloads, total.moldedReloads)
	if *simRuns >= 100 && (total.moldedReloads == 0 || total.moldReloads == total.moldedReloads) {
		t.Fatalf("reloads in mold mode with a warm-up hardly exercised: %d reloads, %d from a mold", total.moldReloads, total.moldedReloads)
	}
}

// runCalm plays one calm history, in mold mode if mold (reloads with a warm-up, if reloads), and
// returns it; nil when it failed.
func runCalm(t *testing.T, seed uint64, mold, reloads bool) *simulation {
	var s *simulation
	ok := t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
		rng := rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
		cfg := Config{
			Workers: 1 + rng.IntN(5), MaxWorkers: 8, BootTimeout: time.Duration(2+rng.IntN(10)) * time.Second,
			ShutdownTimeout: time.Duration(1+rng.IntN(5)) * time.Second, BackoffMin: time.Second, BackoffMax: time.Minute,
			ResetAfter: time.Minute, MaxSurge: 1 + rng.IntN(3), // max_unavailable 0: no old worker stops first
			ForkWorker: true, ForkTimeout: time.Duration(1+rng.IntN(5)) * time.Second, Mold: mold, Spec: 1,
		}
		if reloads {
			cfg.WarmUp = WarmUp{Requests: uint64(rng.IntN(40)), MaxWait: time.Duration(1+rng.IntN(8)) * time.Second}
		}
		m, err := NewMachine(cfg)
		if err != nil {
			t.Fatal(err)
		}
		s = &simulation{calm: true, calmReloads: reloads, t: t, rng: rng, m: m, cfg: cfg, now: epoch,
			specs: map[SpecHandle]bool{1: true}, lastSpec: 1, hooks: map[HookID]bool{},
			procs: map[int]*proc{}, cancelled: map[WorkerID]bool{}, leftovers: map[strayKey]*leftover{},
			lastExit: map[int]exitRecord{}, maxDesired: cfg.Workers, requests: map[RequestID]bool{},
			lastPID: 1000, lastRolloutStart: epoch, spawnedAt: map[WorkerID]time.Time{}}
		defer func() {
			if t.Failed() {
				t.Logf("seed %d, config %+v; last events:\n%s", seed, cfg, strings.Join(s.trace[max(0, len(s.trace)-*simTrace):], "\n"))
			}
		}()
		s.run()
	})
	if !ok {
		return nil
	}
	return s
}

// calmEvent is what happens in a world without faults: time passes, workers report requests,
// reforks are asked for.
func (s *simulation) calmEvent() {
	switch r := s.rng.IntN(10); {
	case r < 6:
		s.advance(s.nextEventTime(time.Duration(s.rng.IntN(2000)) * time.Millisecond))
	case r < 8:
		if p := s.randomProc(); p != nil {
			s.step(Notified{Worker: p.worker, Message: Notification{HasRequests: true, Requests: uint64(s.rng.IntN(500))}})
		}
	default:
		if s.calmReloads && s.rng.IntN(2) == 0 {
			s.step(Reload{Request: s.newRequest()})
			return
		}
		s.step(Refork{Request: s.newRequest()})
	}
}

// simDecay counts what the memory trigger did over all the runs.
var simDecay simDecayCounts

type simDecayCounts struct{ reforks, fruitless, stops int }

// proc is a fake worker process.
type proc struct {
	pid    int
	worker WorkerID
	slot   int
	hung   bool // sends nothing any more (SIGSTOP, deadlock)
	// stubborn processes ignore SIGTERM.
	stubborn bool
	// channel: it has a control channel; canFork: as worker 0, it would declare it can fork;
	// mold: forked as a mold, it says so in its hello.
	channel, canFork, mold bool
	// stray: forked for a spawn the machine gave up on; the driver kills it, the machine never
	// hears of it but as an orphan.
	stray bool
	// signalled is the last signal its process group got, which what is left of the group got too.
	signalled syscall.Signal
	// private is its Private_Dirty, which grows as it serves.
	private uint64
	// nice is how far SetPriority lowered it, inherited by what it forks.
	nice int
}

// leftover is a stray in the world: an orphan or what is left of a process group after its
// leader exited, which the driver reports as StrayFound.
type leftover struct {
	stubborn bool // ignores SIGTERM
}

// scheduled is something the world does at a given time: a process exits, a template answers.
type scheduled struct {
	at time.Time
	do func()
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

	procs   map[int]*proc
	lastPID int
	queue   []scheduled
	// cancelled holds the forked spawns the machine gave up on.
	cancelled  map[WorkerID]bool
	leftovers  map[strayKey]*leftover
	lastExit   map[int]exitRecord // by slot
	maxDesired int
	requests   map[RequestID]bool // sent, not yet answered
	lastReq    RequestID
	exitCode   *int
	phase      Phase
	trace      []string
	// learned holds what the driver learns while it carries a batch out (carrying), stepped after.
	learned  []Event
	carrying bool
	// lastStatus is the last STATUS= sent to systemd.
	lastStatus string
	// specs are the specs registered and not released (lastSpec the last one); hooks the hooks
	// running.
	specs    map[SpecHandle]bool
	lastSpec SpecHandle
	hooks    map[HookID]bool
	// execState is the state of an ExecRestart in the batch being carried out.
	execState *State
	// stalled: forkd does not run, so what the world tells it waits in backlog; replaying: the
	// backlog is being stepped, and the world and the machine agree only once it is done.
	stalled, replaying bool
	backlog            []Event
	// futile: reforks win no memory back (a new worker writes at once what the old one had);
	// decayReforks counts the reforks refork_on_decay started since new code last rolled out,
	// lastRolloutStart is when the last rollout began.
	futile           bool
	decayReforks     int
	lastRolloutStart time.Time
	// spawnedAt is when each worker's SpawnWorker was carried out.
	spawnedAt map[WorkerID]time.Time
	// calm: a world without faults (TestReforkCapacity); fullRefork: a refork (or, in mold mode,
	// a reload) runs that began with every serving worker ready, and has not failed;
	// fullReforks counts those that ended well.
	calm        bool
	fullRefork  bool
	fullReforks int
	// calmReloads: the calm world reloads too, and its reloads' molds fail at times; moldReloads
	// counts the reloads that ended, moldedReloads those whose template is a mold; reloading: a
	// reload's rollout runs.
	calmReloads, reloading     bool
	moldReloads, moldedReloads int
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
		MaxSurge:        rng.IntN(3),
		MaxUnavailable:  rng.IntN(2),
	}
	if cfg.MaxSurge+cfg.MaxUnavailable == 0 {
		cfg.MaxSurge = 1
	}
	cfg.BackoffMax = cfg.BackoffMin * time.Duration(1+rng.IntN(40))
	if rng.IntN(2) == 0 {
		cfg.HeartbeatTimeout = time.Duration(1+rng.IntN(5)) * time.Second
	}
	if rng.IntN(2) == 0 {
		cfg.ForkWorker = true
		cfg.ForkTimeout = time.Duration(1+rng.IntN(5)) * time.Second
		if rng.IntN(2) == 0 {
			cfg.ReforkAfter = []uint64{uint64(1 + rng.IntN(50)), uint64(1 + rng.IntN(100))}
			cfg.ReforkAfterRepeats = rng.IntN(2) == 0
		}
		if rng.IntN(3) == 0 {
			cfg.Mold = true
			if rng.IntN(3) > 0 {
				cfg.WarmUp = WarmUp{Requests: uint64(rng.IntN(30)), MaxWait: time.Duration(1+rng.IntN(10)) * time.Second}
			}
		} else if rng.IntN(3) == 0 {
			cfg.WarmUp = WarmUp{Requests: uint64(rng.IntN(30)), MaxWait: time.Duration(1+rng.IntN(10)) * time.Second}
		}
		if rng.IntN(2) == 0 {
			p := &DecayPolicy{MinInterval: time.Duration(1+rng.IntN(30)) * time.Second, Confirm: rng.IntN(3), MaxFruitless: rng.IntN(4)}
			if rng.IntN(3) > 0 {
				p.PrivateGrowth = uint64(1+rng.IntN(50)) << 20
			}
			if p.PrivateGrowth == 0 || rng.IntN(3) == 0 {
				p.Ratio = 1.1 + rng.Float64()
			}
			cfg.ReforkOnDecay = p
		}
	}
	if rng.IntN(3) == 0 {
		cfg.Recycle = RecyclePolicy{MinLifetime: time.Duration(rng.IntN(10)) * time.Second}
		if rng.IntN(3) > 0 {
			cfg.Recycle.MaxRequests = uint64(20 + rng.IntN(200))
			cfg.Recycle.MaxRequestsJitter = uint64(rng.IntN(50))
		}
		if cfg.Recycle.MaxRequests == 0 || rng.IntN(2) == 0 {
			cfg.Recycle.MaxPrivate = uint64(10+rng.IntN(60)) << 20
		}
	}
	cfg.ReforkNice = int(seed%2) * 10 // no draw of rng: the seeds keep their histories
	cfg.Spec = 1
	m, err := NewMachine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := &simulation{
		futile:   cfg.ReforkOnDecay != nil && rng.IntN(2) == 0,
		specs:    map[SpecHandle]bool{1: true},
		lastSpec: 1,
		hooks:    map[HookID]bool{},
		t:        t, rng: rng, m: m, cfg: cfg, now: epoch,
		procs:            make(map[int]*proc),
		cancelled:        make(map[WorkerID]bool),
		leftovers:        make(map[strayKey]*leftover),
		lastExit:         make(map[int]exitRecord),
		maxDesired:       cfg.Workers,
		requests:         make(map[RequestID]bool),
		lastPID:          1000,
		lastRolloutStart: epoch,
		spawnedAt:        map[WorkerID]time.Time{},
	}
	defer func() {
		if t.Failed() {
			t.Logf("seed %d, config %+v; last events:\n%s", seed, cfg, strings.Join(s.trace[max(0, len(s.trace)-*simTrace):], "\n"))
		}
	}()

	s.run()
}

// run plays the history: Start, random events, a stop, and the drain until Exit.
func (s *simulation) run() {
	t, cfg, rng := s.t, s.cfg, s.rng
	s.step(Start{})
	for i := 0; i < *simSteps && s.exitCode == nil && !t.Failed(); i++ {
		if s.calm {
			s.calmEvent()
		} else {
			s.randomEvent()
		}
	}
	if s.exitCode == nil && !t.Failed() {
		s.step(Stop{Request: s.newRequest(), Immediate: rng.IntN(3) == 0})
	}
	// Drain: with every process eventually exiting, the machine must reach Exit in bounded time.
	limit := s.now.Add(cfg.ShutdownTimeout + time.Minute)
	for s.exitCode == nil && !t.Failed() {
		if s.now.After(limit) {
			t.Fatalf("cluster did not stop by +%s; status %+v", limit.Sub(epoch), s.m.Status())
		}
		s.advance(s.nextEventTime(time.Second))
	}
	if t.Failed() {
		return
	}
	for _, p := range s.procs {
		if !p.stray {
			t.Fatalf("Exit emitted with worker %d (pid %d) alive", p.worker, p.pid)
		}
	}
	for k := range s.leftovers {
		t.Fatalf("Exit emitted with stray %s alive", k)
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

func (s *simulation) after(d time.Duration, do func()) {
	s.queue = append(s.queue, scheduled{at: s.now.Add(d), do: do})
}

func (s *simulation) randomDelay(max time.Duration) time.Duration {
	return time.Duration(s.rng.Int64N(int64(max) + 1))
}

// liveProcs lists the processes the machine may know, sorted by PID for reproducibility.
func (s *simulation) liveProcs() []*proc {
	var ps []*proc
	for _, p := range s.procs {
		if !p.stray {
			ps = append(ps, p)
		}
	}
	slices.SortFunc(ps, func(a, b *proc) int { return a.pid - b.pid })
	return ps
}

func (s *simulation) randomProc() *proc {
	ps := s.liveProcs()
	if len(ps) == 0 {
		return nil
	}
	return ps[s.rng.IntN(len(ps))]
}

func (s *simulation) randomEvent() {
	if (s.cfg.ReforkOnDecay != nil || s.cfg.Recycle.MaxPrivate > 0) && s.rng.IntN(6) > 0 {
		// Memory decays over calmer histories: time passes, and the sampler reads the workers.
		s.advance(s.nextEventTime(time.Duration(s.rng.IntN(4000)) * time.Millisecond))
		s.sampleMemory()
		return
	}
	r := s.rng.IntN(100)
	switch {
	case r < 32:
		s.advance(s.nextEventTime(time.Duration(s.rng.IntN(2000)) * time.Millisecond))
	case r < 60:
		if p := s.randomProc(); p != nil && !p.hung {
			s.step(Notified{Worker: p.worker, Message: s.randomMessage()})
		}
	case r < 64:
		if p := s.randomProc(); p != nil && p.channel && !p.hung {
			// A hello, perhaps a duplicate, perhaps of another version.
			h := Hello{Worker: p.worker, PID: p.pid, Fork: p.canFork, Mold: p.mold}
			if s.rng.IntN(20) == 0 {
				h.Mismatch = "this forkd master speaks protocol 1, the worker speaks 2"
			}
			s.step(h)
		}
	case r < 70:
		if p := s.randomProc(); p != nil {
			st := ExitStatus{Code: 1}
			if s.rng.IntN(2) == 0 {
				st = ExitStatus{Signal: syscall.SIGSEGV}
			}
			s.exitNow(p.pid, st)
		}
	case r < 73:
		if p := s.randomProc(); p != nil {
			p.hung = true
		}
	case r < 75:
		if p := s.randomProc(); p != nil {
			p.stubborn = true
		}
	case r < 79:
		s.step(NotifyRejected{PID: 99999, Reason: DropUnknownSender, Detail: "sender is not a worker"})
	case r < 80:
		s.step(Exited{PID: 50000 + s.rng.IntN(100), Status: ExitStatus{}})
	case r < 81:
		// A worker's grandchild, daemonized, is re-parented to the master; or a stray ends on its own.
		if s.rng.IntN(2) == 0 {
			s.newLeftover(false)
		} else if ks := s.leftoverKeys(); len(ks) > 0 {
			s.leftoverGone(ks[s.rng.IntN(len(ks))])
		}
	case r < 84:
		// A stale message for a worker that has gone.
		id := WorkerID(s.rng.IntN(int(s.m.lastID) + 1))
		if s.rng.IntN(2) == 0 {
			s.step(Notified{Worker: id, Message: Notification{Ready: true}})
		} else {
			s.step(TemplatePaused{Worker: id})
		}
	case r < 90:
		var e Scale
		e.Request = s.newRequest()
		if s.rng.IntN(2) == 0 {
			e.Workers = s.rng.IntN(s.cfg.MaxWorkers + 2)
		} else {
			e.Delta = s.rng.IntN(5) - 2
		}
		s.step(e)
	case r < 93:
		s.step(Refork{Request: s.newRequest()})
	case r < 96:
		s.step(Reload{Request: s.newRequest()})
	case r < 97:
		switch s.rng.IntN(4) {
		case 0:
			s.step(Tick{})
		case 3:
			s.step(WatchdogDue{})
		case 1:
			s.stall()
		default:
			s.step(Restart{Request: s.newRequest(), KeepWorkers: s.rng.IntN(2) == 0})
		}
	case r < 98:
		s.hotRestart()
	default:
		if s.rng.IntN(4) == 0 {
			s.step(Stop{Request: s.newRequest(), Immediate: s.rng.IntN(2) == 0})
		}
	}
}

// sampleMemory plays the memory sampler: every live process has written some more; one may be
// missed (it exited during the reads).
func (s *simulation) sampleMemory() {
	e := MemorySampled{At: s.now, Processes: map[int]Memory{}}
	for _, p := range s.liveProcs() {
		p.private += uint64(s.rng.IntN(16)) << 20
		if s.rng.IntN(20) > 0 {
			e.Processes[p.pid] = Memory{PSS: p.private, PrivateDirty: p.private}
		}
	}
	s.step(e)
}

// hotRestart replaces the machine by one restored from its export, as a hot restart does; the
// world goes on as if nothing happened, and the invariants must still hold.
func (s *simulation) hotRestart() {
	if s.m.preparing != nil || len(s.m.ops) > 0 {
		return // the machine's own hot restarts go through BeginRestart (exec)
	}
	st, err := s.m.Export(s.now)
	if err != nil {
		return // a rollout or a fork in progress: the restart would be refused
	}
	before := s.m.Status()
	m, err := Restore(s.m.Config(), st, s.now)
	if err != nil {
		s.t.Fatalf("Restore(Export()) failed: %v", err)
	}
	s.trace = append(s.trace, fmt.Sprintf("+%s hot restart", s.now.Sub(epoch)))
	// The warm-up's idle rule knows when traffic last came, so that the phased restart after an
	// exec does not take a busy cluster for an idle one.
	if !m.trafficAt.Equal(s.m.trafficAt) {
		s.t.Fatalf("the last traffic was at %v before a hot restart, %v after", s.m.trafficAt, m.trafficAt)
	}
	s.m = m
	after := s.m.Status()
	if before.Generation != after.Generation || before.Desired != after.Desired || before.Ready != after.Ready ||
		len(before.Workers) != len(after.Workers) || before.Forking != after.Forking || before.Strays != after.Strays {
		s.t.Fatalf("status changed across a hot restart:\n%+v\n%+v", before, after)
	}
	for i := range before.Workers {
		b, a := before.Workers[i], after.Workers[i]
		if b.ID != a.ID || b.PID != a.PID || b.State != a.State || b.Template != a.Template || b.Crashes != a.Crashes {
			s.t.Fatalf("worker %d changed across a hot restart: %+v -> %+v", i, b, a)
		}
	}
	s.checkInvariants()
}

// exec plays the driver's side of ExecRestart: the exec fails, or happens and a new machine is
// restored from the state the action carried (the callers' connections are cut: nobody gets a
// Reply), and steps Adopted, as the new image's driver does.
func (s *simulation) exec(st State) {
	if s.rng.IntN(4) == 0 {
		s.step(ExecFailed{Err: errors.New("exec: permission denied")})
		return
	}
	m, err := Restore(s.m.Config(), st, s.now)
	if err != nil {
		s.t.Fatalf("Restore of an ExecRestart's state failed: %v", err)
	}
	s.trace = append(s.trace, fmt.Sprintf("+%s exec", s.now.Sub(epoch)))
	s.m = m
	clear(s.requests)
	clear(s.hooks) // the old image's hooks are its own
	s.step(Adopted{})
}

// randomHooks are the hooks of a config: some of them, or none.
func (s *simulation) randomHooks() Hooks {
	var h Hooks
	for _, hook := range []*[]string{&h.BeforeReload, &h.AfterReload, &h.BeforeRestart, &h.OnWorkerCrash} {
		if s.rng.IntN(3) == 0 {
			*hook = []string{"hook"}
		}
	}
	h.Timeout = time.Duration(1+s.rng.IntN(5)) * time.Second
	return h
}

func (s *simulation) randomMessage() Notification {
	var msg Notification
	switch r := s.rng.IntN(100); {
	case r < 40:
		msg.Ready = true
	case r < 75:
		msg.Watchdog = true
	case r < 85:
		msg.HasStatus, msg.Status = true, "busy"
		msg.HasRequests, msg.Requests = true, uint64(s.rng.IntN(200))
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

// nextEventTime is the earliest of the machine's deadline, the world's next scheduled event, and
// now+d.
func (s *simulation) nextEventTime(d time.Duration) time.Time {
	next := s.now.Add(d)
	if dl, ok := s.m.NextDeadline(); ok && dl.Before(next) {
		next = dl
	}
	for _, e := range s.queue {
		if e.at.Before(next) {
			next = e.at
		}
	}
	if next.Before(s.now) {
		next = s.now
	}
	return next
}

// advance moves the clock to t, running what the world does by then in order, then a Tick.
func (s *simulation) advance(t time.Time) {
	s.runWorld(t)
	s.step(Tick{})
	if dl, ok := s.m.NextDeadline(); ok && !dl.After(s.now) && s.m.Phase() != PhaseStopped {
		s.t.Fatalf("after Tick at +%s a deadline is still due: +%s", s.now.Sub(epoch), dl.Sub(epoch))
	}
}

// stall plays forkd not running for a while (SIGSTOP): the world goes on, and what it tells forkd
// waits (in the notify socket, the control channels, as pending SIGCHLDs) until forkd runs again.
// Then the driver steps Stalled, reads what has arrived, and steps a Tick.
func (s *simulation) stall() {
	d := time.Duration(1+s.rng.IntN(20)) * time.Second
	s.trace = append(s.trace, fmt.Sprintf("+%s forkd stalls for %s", s.now.Sub(epoch), d))
	s.stalled = true
	s.runWorld(s.now.Add(d))
	s.stalled = false
	s.replaying = true
	s.step(Stalled{For: d})
	// The rule: right after a stall, nothing that waits for a message from a worker is due.
	for _, w := range s.m.workers {
		if (w.state == Spawning || w.state == Booting || w.state == Ready) && !w.deadline.IsZero() && !w.deadline.After(s.now) {
			s.t.Fatalf("after a stall of %s, worker %d (%s) is due at +%s", d, w.id, w.state, w.deadline.Sub(epoch))
		}
	}
	for _, sl := range s.m.slots {
		if !sl.awaitTemplate.IsZero() && !sl.awaitTemplate.After(s.now) {
			s.t.Fatalf("after a stall of %s, slot %d's wait for a template is due", d, sl.index)
		}
	}
	backlog := s.backlog
	s.backlog = nil
	for _, ev := range backlog {
		if s.cancelledMeanwhile(ev) {
			continue
		}
		s.step(ev)
	}
	s.replaying = false
	s.checkInvariants()
	s.step(Tick{})
}

// cancelledMeanwhile reports whether ev came from a spawn the machine gave up on while forkd read
// the backlog (Stalled can cancel one): the driver closed that worker's channel, so its hello
// never arrives, and it kills the worker when the template's late reply names it, instead of
// stepping it.
func (s *simulation) cancelledMeanwhile(ev Event) bool {
	switch e := ev.(type) {
	case Hello:
		return s.cancelled[e.Worker]
	case Spawned:
		return s.cancelled[e.Worker]
	case SpawnFailed:
		return s.cancelled[e.Worker]
	}
	return false
}

// runWorld moves the clock to t, running what the world does by then in order.
func (s *simulation) runWorld(t time.Time) {
	s.now = t
	for s.exitCode == nil {
		i := -1
		for j, e := range s.queue {
			if !e.at.After(s.now) && (i < 0 || e.at.Before(s.queue[i].at)) {
				i = j
			}
		}
		if i < 0 {
			break
		}
		e := s.queue[i]
		s.queue = slices.Delete(s.queue, i, i+1)
		e.do()
	}
}

func (s *simulation) exitNow(pid int, st ExitStatus) {
	p, ok := s.procs[pid]
	if !ok {
		return // already exited
	}
	if p.stray {
		delete(s.procs, pid)
		s.step(Exited{PID: pid, Status: st}) // an orphan, as far as the machine knows
		return
	}
	// What the process leaves behind is found before its exit is stepped: its process group's
	// other members, its children, re-parented to the master.
	if s.exitCode == nil && s.rng.IntN(4) == 0 {
		k := strayKey{pid: pid, group: true}
		s.addLeftover(k)
		switch l := s.leftovers[k]; {
		case l == nil:
		case p.signalled == syscall.SIGKILL:
			s.after(s.randomDelay(100*time.Millisecond), func() { s.leftoverGone(k) })
		case p.signalled == syscall.SIGTERM && !l.stubborn:
			s.after(s.randomDelay(s.cfg.ShutdownTimeout*3/2), func() { s.leftoverGone(k) })
		}
	}
	if s.exitCode == nil && s.rng.IntN(6) == 0 {
		s.newLeftover(false)
	}
	delete(s.procs, pid)
	s.step(Exited{PID: pid, Status: st})
}

// newLeftover makes an orphan, with a PID of its own.
func (s *simulation) newLeftover(group bool) {
	if s.exitCode != nil {
		return
	}
	s.lastPID++
	s.addLeftover(strayKey{pid: s.lastPID, group: group})
}

func (s *simulation) addLeftover(k strayKey) {
	s.leftovers[k] = &leftover{stubborn: s.rng.IntN(3) == 0}
	s.step(StrayFound{PID: k.pid, Group: k.group})
}

// leftoverGone ends a stray, as the driver reports it: an orphan's exit, a group found empty.
func (s *simulation) leftoverGone(k strayKey) {
	if _, ok := s.leftovers[k]; !ok {
		return
	}
	delete(s.leftovers, k)
	if k.group {
		s.step(GroupEmptied{PGID: k.pid})
	} else {
		s.step(Exited{PID: k.pid, Status: ExitStatus{Signal: syscall.SIGTERM}})
	}
}

func (s *simulation) leftoverKeys() []strayKey {
	var ks []strayKey
	for k := range s.leftovers {
		ks = append(ks, k)
	}
	slices.SortFunc(ks, func(a, b strayKey) int { return a.pid*2 + btoi(a.group) - b.pid*2 - btoi(b.group) })
	return ks
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (s *simulation) step(ev Event) {
	if s.exitCode != nil {
		return
	}
	if s.stalled {
		s.trace = append(s.trace, fmt.Sprintf("+%s (waits) %T%+v", s.now.Sub(epoch), ev, ev))
		s.backlog = append(s.backlog, ev)
		return
	}
	if s.carrying {
		s.learned = append(s.learned, ev)
		return
	}
	s.trace = append(s.trace, fmt.Sprintf("+%s %T%+v", s.now.Sub(epoch), ev, ev))
	// Remember when a slot lost its current process and how many crashes in a row that made, to
	// check the backoff of the respawn that follows.
	var ended *worker
	switch e := ev.(type) {
	case Exited:
		ended = s.m.byPID[e.PID]
	case SpawnFailed:
		ended = s.m.workers[e.Worker]
	}
	crashesBefore := 0
	wasCurrent := false
	if ended != nil {
		if sl, current, _ := s.m.ownerSlot(ended); current {
			crashesBefore, wasCurrent = sl.failures, true
		}
	}
	if err := s.m.Step(s.now, ev); err != nil {
		s.t.Fatalf("Step(%T%+v): %v", ev, ev, err)
	}
	if ended != nil && wasCurrent && ended.slot < len(s.m.slots) {
		after := s.m.slots[ended.slot].failures
		if after == crashesBefore && after > 1 {
			after = 0 // not a crash: an exit forkd asked for
		}
		s.lastExit[ended.slot] = exitRecord{at: s.now, crashes: after}
	}
	batch := s.m.Ready()
	s.carrying = true
	for _, a := range batch {
		s.apply(a)
	}
	s.carrying = false
	s.m.Advance()
	if st := s.execState; st != nil {
		s.execState = nil
		s.exec(*st)
		return
	}
	// What the driver learned while carrying the batch out (Spawned for SpawnWorker) is stepped
	// after it; the invariants hold once every learned event has been stepped.
	if len(s.learned) > 0 {
		next := s.learned[0]
		s.learned = s.learned[1:]
		s.step(next)
		return
	}
	if !s.replaying {
		s.checkInvariants()
	}
}

func (s *simulation) newProc(w WorkerID, slot int, channel bool) *proc {
	s.lastPID++
	p := &proc{pid: s.lastPID, worker: w, slot: slot, channel: channel, canFork: s.calm || s.rng.IntN(5) > 0}
	if s.cfg.ReforkOnDecay != nil || s.cfg.Recycle.MaxPrivate > 0 {
		// A new worker has written little yet, unless reforks are futile in this world.
		p.private = uint64(s.rng.IntN(4)) << 20
		if s.futile {
			for _, q := range s.procs {
				p.private = max(p.private, q.private)
			}
		}
	}
	s.procs[p.pid] = p
	s.live(p)
	return p
}

// live gives a process the life of a healthy worker, on top of which randomEvent injects faults:
// hello (with a channel), READY=1 within the boot timeout mostly, then heartbeats and requests.
func (s *simulation) live(p *proc) {
	alive := func() bool { q, ok := s.procs[p.pid]; return ok && q == p && !p.hung && !p.stray }
	boot := s.cfg.BootTimeout * 5 / 4
	if s.calm {
		boot = s.cfg.BootTimeout / 2
	}
	s.after(s.randomDelay(boot), func() {
		if !alive() {
			return
		}
		if p.channel {
			s.step(Hello{Worker: p.worker, PID: p.pid, Fork: p.canFork, Mold: p.mold})
		}
		if alive() {
			s.step(Notified{Worker: p.worker, Message: Notification{Ready: true}})
		}
		var requests uint64
		var beat func()
		beat = func() {
			if !alive() {
				return
			}
			requests += uint64(s.rng.IntN(10))
			s.step(Notified{Worker: p.worker, Message: Notification{Watchdog: true, HasRequests: true, Requests: requests}})
			s.after(time.Second/2+s.randomDelay(time.Second), beat)
		}
		beat()
	})
}

// apply plays the driver and the world: it carries out an action and answers it the way the real
// driver and a real (sometimes faulty) template would.
func (s *simulation) apply(a Action) {
	s.trace = append(s.trace, fmt.Sprintf("    -> %T%+v", a, a))
	switch a := a.(type) {
	case SpawnWorker:
		s.spawnedAt[a.Worker] = s.now
		// Only a slot's own respawn waits out its backoff; a rollout's replacement does not (and
		// may be detached again within the same step, if the rollout failed).
		current := false
		if w := s.m.workers[a.Worker]; w != nil {
			_, current, _ = s.m.ownerSlot(w)
		}
		if rec, ok := s.lastExit[a.Slot]; ok && a.Template == 0 && current {
			if earliest := rec.at.Add(s.expectedBackoff(rec.crashes)); s.now.Before(earliest) {
				s.t.Fatalf("slot %d respawned at +%s, %d crashes in a row allow +%s at the earliest",
					a.Slot, s.now.Sub(epoch), rec.crashes, earliest.Sub(epoch))
			}
		}
		if a.Mold {
			s.mold(a)
			return
		}
		if a.Template != 0 {
			s.fork(a)
			return
		}
		if !s.specs[a.Spec] {
			s.t.Fatalf("spawn of worker %d from spec %d, which is not registered (or released)", a.Worker, a.Spec)
		}
		if s.rng.IntN(20) == 0 && !s.calm {
			s.step(SpawnFailed{Worker: a.Worker, Err: "fork: resource temporarily unavailable"})
			return
		}
		p := s.newProc(a.Worker, a.Slot, a.Channel)
		s.step(Spawned{Worker: a.Worker, PID: p.pid})
	case CancelSpawn:
		s.cancelled[a.Worker] = true
		for _, p := range s.procs {
			if p.worker == a.Worker && !p.stray {
				if _, known := s.m.byPID[p.pid]; known {
					s.t.Fatalf("CancelSpawn for worker %d, whose pid %d the machine knows", a.Worker, p.pid)
				}
				// Forked, but its reply was lost: the driver closed its channel, so it exits.
				p.stray = true
				s.after(s.randomDelay(100*time.Millisecond), func() { s.exitNow(p.pid, ExitStatus{}) })
			}
		}
	case SendWelcome:
	case SendRefuse:
		if p := s.procOf(a.Worker); p != nil {
			s.after(s.randomDelay(10*time.Millisecond), func() { s.exitNow(p.pid, ExitStatus{Code: 1}) })
		}
	case PauseTemplate:
		s.templateAnswer(a.Worker, TemplatePaused(a))
	case ResumeTemplate:
		s.templateAnswer(a.Worker, TemplateResumed(a))
	case NotifySystemd:
		if _, status, ok := strings.Cut(a.State, "STATUS="); ok {
			s.lastStatus = status
		}
	case SetPriority:
		p, ok := s.procs[a.PID]
		if !ok && s.replaying {
			return // its exit is still in the backlog
		}
		if !ok || p.worker != a.Worker || p.stray || s.cfg.ReforkNice == 0 {
			s.t.Fatalf("priority %d for pid %d of worker %d, which is not that worker's live process (refork nice %d)",
				a.Nice, a.PID, a.Worker, s.cfg.ReforkNice)
		}
		if (a.Nice > 0) == (p.nice > 0) {
			s.t.Fatalf("priority %d for worker %d, which runs at %d already", a.Nice, a.Worker, p.nice)
		}
		p.nice = a.Nice
	case SignalWorker:
		p, ok := s.procs[a.PID]
		if !ok && s.replaying {
			return // its exit is still in the backlog: the driver's signal finds it gone
		}
		if !ok || p.worker != a.Worker || p.stray {
			s.t.Fatalf("signal %v to pid %d of worker %d, which is not that worker's live process", a.Signal, a.PID, a.Worker)
		}
		p.signalled = a.Signal
		switch a.Signal {
		case syscall.SIGKILL:
			s.after(s.randomDelay(100*time.Millisecond), func() { s.exitNow(a.PID, ExitStatus{Signal: syscall.SIGKILL}) })
		case syscall.SIGTERM:
			if !p.stubborn && !p.hung {
				drain := s.randomDelay(s.cfg.ShutdownTimeout * 3 / 2)
				s.after(drain, func() { s.exitNow(a.PID, ExitStatus{}) })
			}
		default:
			s.t.Fatalf("unexpected signal %v", a.Signal)
		}
	case SignalStray:
		k := strayKey{pid: a.PID, group: a.Group}
		l, ok := s.leftovers[k]
		if !ok && s.replaying {
			return
		}
		if !ok {
			s.t.Fatalf("signal %v to stray %s, which is not alive", a.Signal, k)
		}
		switch {
		case a.Signal == syscall.SIGKILL:
			s.after(s.randomDelay(100*time.Millisecond), func() { s.leftoverGone(k) })
		case a.Signal == syscall.SIGTERM && !l.stubborn:
			s.after(s.randomDelay(s.cfg.ShutdownTimeout*3/2), func() { s.leftoverGone(k) })
		case a.Signal != syscall.SIGTERM:
			s.t.Fatalf("unexpected signal %v to stray %s", a.Signal, k)
		}
	case Reply:
		if !s.requests[a.Request] {
			s.t.Fatalf("reply to request %d, which is not pending", a.Request)
		}
		delete(s.requests, a.Request)
	case Exit:
		code := a.Code
		s.exitCode = &code
	case LoadConfig:
		// The driver loads the config (perhaps with another worker count, other hooks), which may
		// be invalid, and registers its spec.
		s.after(s.randomDelay(2*time.Second), func() {
			var e ConfigLoaded
			switch r := s.rng.IntN(10); {
			case r == 0:
				e.Err = errors.New("invalid config")
			case r < 6:
				cfg := s.m.cfg
				if s.rng.IntN(2) == 0 {
					cfg.Workers = 1 + s.rng.IntN(cfg.MaxWorkers)
				}
				cfg.Hooks = s.randomHooks()
				s.lastSpec++
				cfg.Spec = s.lastSpec
				s.specs[cfg.Spec] = true
				e.Config = &cfg
			}
			s.step(e)
		})
	case ReleaseSpec:
		if !s.specs[a.Spec] {
			s.t.Fatalf("release of spec %d, which is not registered", a.Spec)
		}
		delete(s.specs, a.Spec)
	case RunHook:
		// A hook runs for a while, and may fail.
		s.hooks[a.ID] = true
		s.after(s.randomDelay(a.Timeout/10), func() {
			if !s.hooks[a.ID] {
				return // the image that ran it has exec'd
			}
			delete(s.hooks, a.ID)
			e := HookFinished{ID: a.ID}
			if s.rng.IntN(5) == 0 {
				e.Status = ExitStatus{Code: 1}
			}
			s.step(e)
		})
	case CheckRestart:
		s.after(s.randomDelay(time.Second), func() {
			var e RestartChecked
			if s.rng.IntN(4) == 0 {
				e.Err = errors.New("the new binary cannot take over")
			}
			s.step(e)
		})
	case ExecRestart:
		// The exec happens once the rest of the batch is carried out, before anything else.
		s.execState = &a.State
	case Record:
		s.recorded(a.What)
	case Log:
		if strings.Contains(a.Msg, "the new template warms up") {
			simWarmUps++
		}
		if strings.Contains(a.Msg, "warms up, then forks the new template") {
			simMoldWarmUps++
		}
	default:
		s.t.Fatalf("unknown action %T", a)
	}
}

// fork plays a template asked to fork: it answers late, out of order with the new worker's hello,
// with a failure, or never; it may die meanwhile.
func (s *simulation) fork(a SpawnWorker) {
	template := s.m.workers[a.Template]
	if template == nil || template.pid == 0 {
		s.t.Fatalf("fork of worker %d through template %d, which has no process", a.Worker, a.Template)
	}
	delay := s.randomDelay(s.cfg.ForkTimeout * 3 / 2)
	r := s.rng.IntN(10)
	if s.calm {
		delay, r = s.randomDelay(s.cfg.ForkTimeout/2), 0
	}
	switch {
	case r < 6: // forks; the reply and the new worker's hello race
		s.after(delay, func() {
			if _, alive := s.procs[template.pid]; !alive {
				return // the template died before forking
			}
			p := s.newProc(a.Worker, a.Slot, true)
			p.nice = s.procs[template.pid].nice
			if s.cancelled[a.Worker] {
				// The driver kills a worker whose spawn it gave up on.
				p.stray = true
				s.after(0, func() { s.exitNow(p.pid, ExitStatus{Signal: syscall.SIGKILL}) })
				return
			}
			if s.rng.IntN(2) == 0 {
				s.step(Hello{Worker: a.Worker, PID: p.pid})
			}
			if s.rng.IntN(8) > 0 && !s.cancelled[a.Worker] { // the reply may be lost
				s.step(Spawned{Worker: a.Worker, PID: p.pid})
			}
		})
	case r < 8:
		s.after(delay, func() {
			if !s.cancelled[a.Worker] && s.m.workers[a.Worker] != nil {
				s.step(SpawnFailed{Worker: a.Worker, Err: "fork: out of memory"})
			}
		})
	default: // never answers
	}
}

// mold plays a serving worker asked to fork a mold: it answers molded (late, after the mold's
// hello at times, or lost), mold_failed, error (its SDK does not know the op), or never; the
// mold may say a hello without "mold".
func (s *simulation) mold(a SpawnWorker) {
	src := s.m.workers[a.Template]
	if src == nil || src.pid == 0 || !s.cfg.Mold || a.Slot != 0 {
		s.t.Fatalf("mold for slot %d through worker %d, which has no process (mold mode %v)", a.Slot, a.Template, s.cfg.Mold)
	}
	if src.slot == 0 || src.state != Ready {
		s.t.Fatalf("mold asked of worker %d in slot %d (%s)", src.id, src.slot, src.state)
	}
	for _, sl := range s.m.slots[1:] {
		if w := sl.worker; w != nil && w != src && w.state == Ready && w.generation == src.generation && w.requests > src.requests {
			s.t.Fatalf("mold asked of worker %d (%d requests), worker %d served %d", src.id, src.requests, w.id, w.requests)
		}
	}
	delay := s.randomDelay(s.cfg.ForkTimeout * 3 / 2)
	r := s.rng.IntN(12)
	if s.calm {
		delay = s.randomDelay(s.cfg.ForkTimeout / 2)
		if ro := s.m.rollout; !s.calmReloads || ro == nil || ro.kind == KindRefork {
			r = 0
		}
	}
	switch {
	case r < 7:
		s.after(delay, func() {
			if _, alive := s.procs[src.pid]; !alive {
				return // the source died before forking
			}
			p := s.newProc(a.Worker, a.Slot, true)
			p.nice = s.procs[src.pid].nice
			p.mold = (s.calm && !s.calmReloads) || s.rng.IntN(10) > 0
			if s.cancelled[a.Worker] {
				p.stray = true
				s.after(0, func() { s.exitNow(p.pid, ExitStatus{Signal: syscall.SIGKILL}) })
				return
			}
			if s.rng.IntN(8) > 0 || (s.calm && !s.calmReloads) {
				s.step(Spawned{Worker: a.Worker, PID: p.pid})
			}
		})
	case r < 9:
		s.after(delay, func() {
			if !s.cancelled[a.Worker] && s.m.workers[a.Worker] != nil {
				s.step(SpawnFailed{Worker: a.Worker, Err: "fork: out of memory"})
			}
		})
	case r < 11:
		s.after(delay, func() {
			if !s.cancelled[a.Worker] && s.m.workers[a.Worker] != nil {
				s.step(MoldRefused{Worker: a.Worker, Err: `unknown op "mold"`})
			}
		})
	default: // never answers
	}
}

// procOf returns the live process of a worker the machine sends a control message to, or nil when
// its exit is still in the backlog of a stall (the driver's send fails, as for any dead channel).
func (s *simulation) procOf(id WorkerID) *proc {
	if s.m.workers[id] == nil {
		s.t.Fatalf("control message to worker %d, which the machine does not know", id)
	}
	for _, q := range s.procs {
		if q.worker == id {
			return q
		}
	}
	if !s.replaying {
		s.t.Fatalf("control message to worker %d, which has no process", id)
	}
	return nil
}

// templateAnswer plays the template's answer to a pause or resume: late, or lost.
func (s *simulation) templateAnswer(id WorkerID, answer Event) {
	p := s.procOf(id)
	if p == nil || p.hung || s.rng.IntN(10) == 0 {
		return // a lost reply
	}
	s.after(s.randomDelay(s.cfg.ForkTimeout*3/2), func() {
		if _, alive := s.procs[p.pid]; alive {
			s.step(answer)
		}
	})
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

// recorded checks what the machine records of the memory trigger: never more than one refork per
// min_interval (counted from the start of the rollout before it, of any kind), and, where reforks
// win nothing back, no more than MaxFruitless of them until new code rolls out.
func (s *simulation) recorded(h Happening) {
	if r, ok := h.(WorkerRecycling); ok {
		s.checkRecycling(r)
	}
	if j, ok := h.(DecayJudged); ok {
		simDecay.fruitless += btoi(!j.Fruitful)
		simDecay.stops += btoi(j.Stopped)
	}
	if e, ok := h.(RolloutEnded); ok && (e.Kind == KindRefork || s.calmReloads) {
		if s.fullRefork && e.Err == nil {
			s.fullReforks++
		}
		s.fullRefork = false
		if e.Kind == KindReload && s.reloading {
			s.checkCalmReload(e)
		}
		s.reloading = false
	}
	r, ok := h.(RolloutStarted)
	if !ok {
		return
	}
	s.reloading = r.Kind == KindReload
	if ready, desired := s.m.servingReady(); (r.Kind == KindRefork || (s.calmReloads && s.cfg.Mold)) && s.cfg.MaxSurge > 0 {
		s.fullRefork = ready == desired
	}
	if p := s.cfg.ReforkOnDecay; r.Trigger == TriggerMemory {
		if since := s.now.Sub(s.lastRolloutStart); since < p.MinInterval {
			s.t.Fatalf("refork_on_decay started a refork %s after the last rollout began, min_interval %s", since, p.MinInterval)
		}
		s.decayReforks++
		simDecay.reforks++
		if s.futile && s.decayReforks > max(p.MaxFruitless, 1) {
			s.t.Fatalf("refork_on_decay started %d reforks that won nothing back, max_fruitless %d", s.decayReforks, p.MaxFruitless)
		}
	}
	if r.Kind != KindRefork {
		s.decayReforks = 0
	}
	s.lastRolloutStart = s.now
}

// checkCalmReload checks the end of a reload in the calm world, where only molds fail: it ended
// well, with a template of its generation in slot 0, and every forked serving worker is forked
// from that template, but, when it is a mold, the one that warmed up and forked it.
func (s *simulation) checkCalmReload(e RolloutEnded) {
	m := s.m
	if m.phase == PhaseStopping {
		return // the stop deals with every process
	}
	if e.Err != nil {
		s.t.Fatalf("reload to generation %d failed in a calm world: %v", e.Generation, e.Err)
	}
	t := m.template
	if t == nil || m.slots[0].worker != t || t.generation != e.Generation {
		s.t.Fatalf("reload to generation %d ended without a template of its generation in slot 0 (%+v)", e.Generation, t)
	}
	s.moldReloads++
	s.moldedReloads += btoi(t.mold)
	others := 0
	for _, sl := range m.slots[1:] {
		if w := sl.worker; w != nil && w.forked() && w.template != t.id { // exec'd: a fork that did not answer
			others++
		}
	}
	if others > btoi(t.mold) {
		s.t.Fatalf("reload to generation %d: %d serving workers not forked from the template (a mold: %v)", e.Generation, others, t.mold)
	}
}

// checkRecycling checks a decision to recycle a worker against the policy: old enough, and past
// its limit.
func (s *simulation) checkRecycling(r WorkerRecycling) {
	p := s.cfg.Recycle
	simRecycled++
	w := s.m.byPID[r.PID]
	if w == nil {
		s.t.Fatalf("recycling pid %d, which is no worker", r.PID)
	}
	if age := s.now.Sub(s.spawnedAt[w.id]); age < p.MinLifetime {
		s.t.Fatalf("worker %d recycled %s after its spawn, min_lifetime %s", w.id, age, p.MinLifetime)
	}
	switch r.Reason {
	case ExitMaxRequests:
		if p.MaxRequests == 0 || r.Requests < p.MaxRequests || r.Requests > p.MaxRequests+p.MaxRequestsJitter && r.Requests < p.requestLimit(w) {
			s.t.Fatalf("worker %d recycled at %d requests, max_requests %d jitter %d", w.id, r.Requests, p.MaxRequests, p.MaxRequestsJitter)
		}
	case ExitMemoryLimit:
		if p.MaxPrivate == 0 || r.PrivateDirty <= p.MaxPrivate {
			s.t.Fatalf("worker %d recycled at %d bytes private, max_private %d", w.id, r.PrivateDirty, p.MaxPrivate)
		}
	default:
		s.t.Fatalf("recycling for %q", r.Reason)
	}
}

// simRecycled counts the workers recycled over all the runs, simWarmUps the warm-ups of new
// templates, simMoldWarmUps those of a reload's first new worker in mold mode.
var simRecycled, simWarmUps, simMoldWarmUps int

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
		if p.stray {
			continue
		}
		if w, ok := m.byPID[pid]; ok && w.id != p.worker {
			t.Fatalf("live pid %d is worker %d, the machine says worker %d", pid, p.worker, w.id)
		}
		if w, known := m.workers[p.worker]; !known || (w.pid != 0 && w.pid != pid) {
			t.Fatalf("live pid %d (worker %d) unknown to the machine", pid, p.worker)
		}
	}
	for pid, w := range m.byPID {
		if p, ok := s.procs[pid]; !ok || p.stray {
			t.Fatalf("machine holds worker %d with pid %d, which has exited", w.id, pid)
		}
	}
	// A refork lowers only what it replaces: never the template (nor the mold it forks, which
	// inherits its source's priority), and nothing that goes on serving once it has ended.
	for _, sl := range m.slots {
		w := sl.worker
		if w == nil || w.pid == 0 || w.state.gone() {
			continue
		}
		p := s.procs[w.pid]
		if p == nil || p.nice == 0 {
			continue
		}
		if w == m.template {
			t.Fatalf("the template, worker %d (pid %d), runs lowered by %d", w.id, w.pid, p.nice)
		}
		if m.rollout == nil || m.rollout.kind != KindRefork {
			t.Fatalf("worker %d (pid %d) of slot %d runs lowered by %d with no refork under way", w.id, w.pid, sl.index, p.nice)
		}
	}
	// Never more serving processes than configured, plus the rollout surge; draining ones are
	// bounded by the shutdown timeout instead.
	serving := 0
	for _, w := range m.workers {
		if !w.state.gone() {
			serving++
		}
	}
	molds := btoi(m.cfg.Mold) // the template's replacement is no surge: it serves nothing
	if serving > s.maxDesired+m.cfg.MaxSurge+molds || len(m.slots) > m.cfg.slotsFor(m.cfg.MaxWorkers) {
		t.Fatalf("%d serving workers, %d slots; at most %d workers were ever asked for, surge %d",
			serving, len(m.slots), s.maxDesired, m.cfg.MaxSurge)
	}
	for _, w := range m.workers {
		if _, current, replacement := m.ownerSlot(w); !current && !replacement && !w.state.gone() {
			t.Fatalf("worker %d (%s) belongs to no slot and is not draining", w.id, w.state)
		}
		if w.state == Spawning && !w.forked() {
			t.Fatalf("exec'd worker %d still spawning after the driver answered", w.id)
		}
		needsDeadline := w.state == Spawning || w.state == Booting || w.state == Stopping || (w.state == Ready && w.heartbeat > 0)
		if needsDeadline == w.deadline.IsZero() {
			t.Fatalf("worker %d in state %s has deadline %v", w.id, w.state, w.deadline)
		}
		if m.template == w && (w.state != Ready || w.slot != 0 || !w.canFork) {
			t.Fatalf("template %d is %s in slot %d", w.id, w.state, w.slot)
		}
	}
	// At most one template-to-be per generation in slot 0 (in mold mode, never two molds; a
	// reload's warm-up has its cold template and the mold that replaces it), and never a serving
	// worker there.
	type zero struct {
		generation int
		mold       bool
	}
	zeros := map[zero]int{}
	for _, w := range m.workers {
		if z := (zero{w.generation, w.mold}); w.slot == 0 && !w.state.gone() && m.cfg.Mold {
			if zeros[z]++; zeros[z] > 1 {
				t.Fatalf("two processes of generation %d in slot 0 (molds: %v)", w.generation, w.mold)
			}
		}
		if w.mold && (w.slot != 0 || !m.cfg.Mold) {
			t.Fatalf("mold %d in slot %d, mold mode %v", w.id, w.slot, m.cfg.Mold)
		}
	}
	// A refork (or a reload in mold mode) that began with every serving worker ready keeps each
	// slot's worker ready, unless it fails: the mold is forked while they serve (in template
	// mode, worker 0 is paused, not gone), and each is replaced with a surge.
	if r := m.rollout; s.calm && s.fullRefork && r != nil && (r.kind == KindRefork || s.calmReloads) && r.failure == nil {
		if ready, desired := m.servingReady(); ready < desired {
			t.Fatalf("%d of %d serving workers ready during a %s (mold mode %v)", ready, desired, r.kind, m.cfg.Mold)
		}
		// Nor does a refork wait for an old worker's drain (max_unavailable is 0 here: none
		// stops before its replacement is ready), which would hold the next fork and its end back.
		if r.kind == KindRefork && len(r.draining) > 0 {
			t.Fatalf("a refork (mold mode %v) waits for %d old workers to exit", m.cfg.Mold, len(r.draining))
		}
	}
	if r := m.rollout; r != nil && r.failure != nil {
		s.fullRefork = false
	}
	// No slot stuck: a desired slot has a process, a respawn time, or a bounded wait for a template.
	if m.phase == PhaseStarting || m.phase == PhaseRunning {
		for _, sl := range m.slots[:min(m.desired, len(m.slots))] {
			if sl.worker == nil && sl.next == nil && sl.nextSpawn.IsZero() && sl.awaitTemplate.IsZero() {
				t.Fatalf("slot %d has no worker and nothing scheduled", sl.index)
			}
			if sl.retiring {
				t.Fatalf("desired slot %d is retiring", sl.index)
			}
		}
	}
	if r := m.rollout; r != nil {
		if (r.pause == pausePending || r.pause == resumePending) && r.deadline.IsZero() {
			t.Fatalf("rollout waits for the template (%d) without a deadline", r.pause)
		}
		for _, i := range r.active {
			if m.slots[i].next == nil && r.failure == nil {
				t.Fatalf("rollout slot %d has no replacement", i)
			}
		}
		if len(r.early) > m.cfg.MaxUnavailable {
			t.Fatalf("%d old workers stopped early, max_unavailable %d", len(r.early), m.cfg.MaxUnavailable)
		}
		// The rollout waits for what it stopped, which is still there.
		for id := range r.draining {
			if m.workers[id] == nil {
				t.Fatalf("rollout waits for worker %d, which has exited", id)
			}
		}
		// An automatic refork gives way to what an operator asked for.
		if r.op.automatic && len(m.ops) > 0 && (!r.cutShort || len(r.queue) > 0) {
			t.Fatalf("automatic refork goes on (queue %v) while %s waits", r.queue, m.ops[0].kind)
		}
	}
	// A failed rollout's generation is abandoned: once the rollout has ended, none of its workers
	// is left, so that the next rollout, which reuses its number, takes none for one of its own.
	if m.rollout == nil && m.phase == PhaseRunning {
		for _, w := range m.workers {
			if w.generation > m.generation {
				t.Fatalf("worker %d (%s) of generation %d is left with the cluster on generation %d",
					w.id, w.state, w.generation, m.generation)
			}
		}
	}
	// Nothing waits for nothing: a queued operation begins as soon as none runs.
	if !m.busy() && len(m.ops) > 0 && m.phase == PhaseRunning {
		t.Fatalf("%s waits while nothing runs", m.ops[0].kind)
	}
	if m.phase == PhaseStopping && (len(m.ops) > 0 || m.preparing != nil) {
		t.Fatalf("operations wait while the cluster stops")
	}
	for slot := range s.lastExit {
		if slot >= len(m.slots) {
			delete(s.lastExit, slot) // the slot is gone; a new one at this index starts afresh
		}
	}
	if m.phase == PhaseStopping {
		for _, sl := range m.slots {
			if !sl.nextSpawn.IsZero() || !sl.awaitTemplate.IsZero() {
				t.Fatalf("slot %d schedules a respawn while stopping", sl.index)
			}
		}
	}
	// Every stray the machine stops is alive, and on its way out: SIGKILL sent, or due.
	for k, sr := range m.strays {
		if _, ok := s.leftovers[k]; !ok {
			t.Fatalf("machine stops stray %s, which is gone", k)
		}
		if sr.sigkilled == !sr.deadline.IsZero() {
			t.Fatalf("stray %s: SIGKILLed %v, deadline %v", k, sr.sigkilled, sr.deadline)
		}
	}
	for k := range s.leftovers {
		if _, ok := m.strays[k]; !ok && m.phase != PhaseStopped {
			t.Fatalf("stray %s alive, unknown to the machine", k)
		}
	}
	// systemd's last STATUS= is the machine's status: a batch is carried out in the order the
	// machine decided it, and what it taught the driver is stepped after it.
	if st := m.Status(); m.phase != PhaseStopped && s.lastStatus != st.StatusLine {
		t.Fatalf("systemd's last STATUS is %q, the machine's status %q", s.lastStatus, st.StatusLine)
	}
	if st := m.Status(); st.Ready > st.Desired {
		t.Fatalf("%d ready of %d desired", st.Ready, st.Desired)
	}
	// A warm-up the status shows is one the rollout still waits for: its template's (in mold
	// mode, the first new serving worker's), its requests not yet served, its time not up.
	if wu := m.Status().WarmUp; wu != nil {
		warming := m.template
		if r := m.rollout; r != nil && r.moldStep == moldStepWarming {
			warming = m.slots[r.warmSlot].worker
		}
		switch {
		case warming == nil || wu.Worker != warming.id:
			t.Fatalf("the status shows worker %d warming up; the warming worker is %v", wu.Worker, warming)
		case wu.Requests > 0 && wu.Served >= wu.Requests:
			t.Fatalf("the status shows a warm-up that served %d of %d requests", wu.Served, wu.Requests)
		case !m.now.Before(wu.Until) || !m.now.Before(wu.IdleUntil):
			t.Fatalf("the status shows a warm-up that ended at +%s (idle at +%s)", wu.Until.Sub(epoch), wu.IdleUntil.Sub(epoch))
		}
	}
}
