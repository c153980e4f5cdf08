package supervisor

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/cluster"
)

var (
	simSeed      = flag.Uint64("sim.seed", 0, "run the executor simulation with this seed only, and show its trace")
	simHistories = flag.Int("sim.histories", 0, "seeded histories of the executor simulation (0: 10,000, 300 under -race)")
	simEvents    = flag.Int("sim.events", 120, "random world events per history")
)

var simEpoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// simCovered counts what the histories went through, to show the faults happen.
var simCovered struct{ execs, twoOrMore, stalls, late, molds int }

// TestExecutorSimulation drives the real Executor, over seams that fake a world of processes
// (they boot, hang, crash, ignore SIGTERM; templates fork late or not at all; hooks and checks
// fail; the master stalls with datagrams queued, hears late datagrams from reaped workers, and
// hot-restarts, twice in a row sometimes), on a simulated clock. After every input it checks the
// invariants of docs/architecture.md that an executor can see. A failure prints the command line
// that replays its history exactly, with its trace.
func TestExecutorSimulation(t *testing.T) {
	if *simSeed != 0 {
		if err := runHistory(*simSeed, true); err != nil {
			t.Fatal(err)
		}
		return
	}
	n := *simHistories
	if n == 0 {
		n = 10000
		if raceEnabled {
			n = 300
		}
	}
	start := time.Now()
	for i := range n {
		seed := uint64(i + 1)
		if err := runHistory(seed, false); err != nil {
			t.Fatalf("history %d: %v\nreplay: go test ./internal/supervisor -run TestExecutorSimulation -sim.seed=%d -v", seed, err, seed)
		}
	}
	t.Logf("%d histories in %s (%.0f/s): %d hot restarts exec'd (%d histories with two or more), %d stalls, %d late datagrams, %d molds",
		n, time.Since(start).Round(time.Millisecond), float64(n)/time.Since(start).Seconds(),
		simCovered.execs, simCovered.twoOrMore, simCovered.stalls, simCovered.late, simCovered.molds)
	if n >= 1000 && simCovered.molds == 0 {
		t.Fatal("no history forked a mold")
	}
}

// fakeProc is a process of the fake world.
type fakeProc struct {
	pid       int
	worker    cluster.WorkerID
	channel   bool
	mold      bool // forked as a mold: its hello says so
	hung      bool // sends nothing any more
	stubborn  bool // ignores SIGTERM
	exited    bool // its exit is scheduled or delivered
	cancelled bool
}

// input is something the world tells the master, which waits while the master stalls.
type input struct {
	what any
	do   func()
}

// traced is an input in a history's trace, formatted only if it is shown.
type traced struct {
	at   time.Time
	what any
}

func (t traced) String() string {
	switch w := t.what.(type) {
	case string:
		return fmt.Sprintf("+%s %s", t.at.Sub(simEpoch), w)
	case fmt.Stringer:
		return fmt.Sprintf("+%s %s", t.at.Sub(simEpoch), w)
	}
	return fmt.Sprintf("+%s %T%+v", t.at.Sub(simEpoch), t.what, t.what)
}

// afterStall marks an input that waited out a stall of the master.
type afterStall struct{ what any }

func (a afterStall) String() string { return fmt.Sprintf("%T%+v (after the stall)", a.what, a.what) }

type event struct {
	at time.Time
	do func()
}

// world is the fake world and the executor's seams in it.
type world struct {
	rng   *rand.Rand
	cfg   cluster.Config
	now   time.Time
	x     *Executor
	image int // which image of the master runs: a hot restart makes a new one
	trace []traced
	err   error

	procs    map[int]*fakeProc
	byWorker map[cluster.WorkerID]*fakeProc
	lastPID  int
	queue    []event
	// stalled: the master does not run; what the world tells it waits in backlog.
	stalled bool
	backlog []input

	specs     map[cluster.SpecHandle]bool
	lastSpec  cluster.SpecHandle
	requests  map[cluster.RequestID]bool
	lastState string // the last STATUS= sent to systemd
	execs     int    // hot restarts' execs
	execState *cluster.State
	// spawned holds the PIDs the observer was told of, ended those whose end it was told of.
	spawned, ended map[int]bool
}

func (w *world) fail(format string, args ...any) {
	if w.err == nil {
		w.err = fmt.Errorf("+%s: %s", w.now.Sub(simEpoch), fmt.Sprintf(format, args...))
	}
}

func (w *world) after(d time.Duration, do func()) {
	w.queue = append(w.queue, event{at: w.now.Add(d), do: do})
}

func (w *world) delay(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return time.Duration(w.rng.Int64N(int64(max)))
}

// tell delivers an input to the master: now, or after a stall, in order.
func (w *world) tell(what any, do func()) {
	if w.stalled {
		w.backlog = append(w.backlog, input{what, do})
		return
	}
	w.trace = append(w.trace, traced{w.now, what})
	if w.run(do) {
		w.check()
	}
}

// run runs do, and plays the exec it may end in.
func (w *world) run(do func()) (returned bool) {
	defer func() {
		if r := recover(); r != nil {
			if r != errExeced { //nolint:errorlint // the sentinel itself
				panic(r)
			}
			w.trace = append(w.trace, traced{w.now, "exec"})
			w.execute(w.x.Machine().Config(), *w.execState)
		}
	}()
	do()
	return true
}

func (w *world) step(ev cluster.Event) {
	w.tell(ev, func() { w.x.Step(ev) })
}

// runHistory plays one seeded history; verbose prints its trace.
func runHistory(seed uint64, verbose bool) error {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	cfg := cluster.Config{
		Workers: 1 + rng.IntN(4), MaxWorkers: 6, ReadyOnStart: rng.IntN(3) == 0,
		BootTimeout:     time.Duration(1+rng.IntN(5)) * time.Second,
		ShutdownTimeout: time.Duration(rng.IntN(4)) * time.Second,
		BackoffMin:      time.Duration(100+rng.IntN(500)) * time.Millisecond,
		ResetAfter:      time.Duration(5+rng.IntN(20)) * time.Second,
		MaxSurge:        rng.IntN(3), MaxUnavailable: rng.IntN(2),
		WatchdogMinReady: rng.IntN(3), Spec: 1, Hooks: randomHooks(rng),
	}
	cfg.MaxSurge = max(cfg.MaxSurge, 1-cfg.MaxUnavailable)
	cfg.BackoffMax = cfg.BackoffMin * time.Duration(1+rng.IntN(20))
	if rng.IntN(2) == 0 {
		cfg.HeartbeatTimeout = time.Duration(1+rng.IntN(4)) * time.Second
	}
	if rng.IntN(2) == 0 {
		cfg.ForkWorker, cfg.ForkTimeout = true, time.Duration(1+rng.IntN(4))*time.Second
		if rng.IntN(2) == 0 {
			cfg.ReforkAfter = []uint64{uint64(20 + rng.IntN(200))}
		}
		cfg.Mold = rng.IntN(3) == 0
		cfg.ReforkNice = int(seed%2) * 10 // no draw of rng: the seeds keep their histories
	}
	w := &world{rng: rng, cfg: cfg, now: simEpoch, procs: map[int]*fakeProc{}, byWorker: map[cluster.WorkerID]*fakeProc{},
		specs: map[cluster.SpecHandle]bool{1: true}, lastSpec: 1, requests: map[cluster.RequestID]bool{},
		spawned: map[int]bool{}, ended: map[int]bool{}}
	m, err := cluster.NewMachine(cfg)
	if err != nil {
		return fmt.Errorf("config %+v: %w", cfg, err)
	}
	w.x = NewExecutor(m, w, w.clock, discard, ObserverFunc(w.observe))
	w.step(cluster.Start{})
	for range *simEvents {
		if w.err != nil {
			break
		}
		w.randomEvent()
		w.runWorld(w.now.Add(w.delay(2 * time.Second)))
	}
	// The end: a stop, then time enough for every process to go; every command is answered.
	if w.err == nil {
		w.command(func(id cluster.RequestID) cluster.Event { return cluster.Stop{Request: id} })
		for i := 0; i < 200 && w.err == nil && w.x.Machine().Phase() != cluster.PhaseStopped; i++ {
			w.runWorld(w.now.Add(time.Second))
			w.step(cluster.Tick{})
		}
		if _, exited := w.x.ExitCode(); w.err == nil && !exited {
			w.fail("the cluster did not stop: %+v", w.x.Machine().Status())
		}
		if w.err == nil && len(w.requests) > 0 {
			w.fail("commands never answered: %v", w.requests)
		}
	}
	if w.err != nil || verbose {
		trace := w.trace
		if !verbose && len(trace) > 40 {
			trace = trace[len(trace)-40:]
		}
		var lines []string
		for _, t := range trace {
			lines = append(lines, t.String())
		}
		msg := strings.Join(lines, "\n")
		if w.err != nil {
			return fmt.Errorf("%w\nconfig %+v\ntrace (last inputs):\n%s", w.err, cfg, msg)
		}
		fmt.Println(msg)
	}
	return nil
}

// runWorld plays what the world does until t, with a Tick whenever a deadline of the machine's
// comes first, as the driver's timer does.
func (w *world) runWorld(t time.Time) {
	for w.err == nil {
		next, i := t, -1
		for j, e := range w.queue {
			if !e.at.After(next) {
				next, i = e.at, j
			}
		}
		if d, ok := w.x.Machine().NextDeadline(); ok && !w.stalled && d.Before(next) {
			w.now = d
			w.step(cluster.Tick{})
			continue
		}
		if i < 0 {
			w.now = t
			return
		}
		e := w.queue[i]
		w.queue = append(w.queue[:i], w.queue[i+1:]...)
		w.now = next
		e.do()
	}
}

// command sends a command whose Reply the world expects exactly once.
func (w *world) command(ev func(cluster.RequestID) cluster.Event) {
	image := w.image
	id := w.x.Expect(func(r cluster.Reply) {
		if !w.requests[r.Request] && w.image == image {
			w.fail("reply to request %d, which is not pending", r.Request)
		}
		delete(w.requests, r.Request)
	})
	w.requests[id] = true
	w.step(ev(id))
}

func (w *world) randomEvent() {
	live := func() *fakeProc {
		var ps []*fakeProc
		for _, p := range w.procs {
			if !p.exited {
				ps = append(ps, p)
			}
		}
		if len(ps) == 0 {
			return nil
		}
		// Map order is random, but not seeded: pick by the lowest PID above a seeded one.
		var best *fakeProc
		pivot := 1 + w.rng.IntN(w.lastPID)
		for _, p := range ps {
			if best == nil || (p.pid >= pivot) != (best.pid >= pivot) && p.pid >= pivot || (p.pid >= pivot) == (best.pid >= pivot) && p.pid < best.pid {
				best = p
			}
		}
		return best
	}
	switch r := w.rng.IntN(100); {
	case r < 12:
		if p := live(); p != nil {
			w.exit(p, cluster.ExitStatus{Code: w.rng.IntN(2)})
		}
	case r < 16:
		if p := live(); p != nil {
			p.hung = true
		}
	case r < 20:
		if p := live(); p != nil {
			w.step(cluster.Notified{Worker: p.worker, Message: cluster.Notification{Stopping: true}})
		}
	case r < 30:
		w.command(func(id cluster.RequestID) cluster.Event { return cluster.Reload{Request: id} })
	case r < 38:
		keep := w.rng.IntN(2) == 0
		w.command(func(id cluster.RequestID) cluster.Event { return cluster.Restart{Request: id, KeepWorkers: keep} })
	case r < 44:
		w.command(func(id cluster.RequestID) cluster.Event { return cluster.Refork{Request: id} })
	case r < 50:
		n := 1 + w.rng.IntN(w.cfg.MaxWorkers)
		w.command(func(id cluster.RequestID) cluster.Event { return cluster.Scale{Request: id, Workers: n} })
	case r < 58:
		w.step(cluster.WatchdogDue{})
	case r < 64:
		w.stall()
	}
}

// stall freezes the master for a while: the world goes on, what it tells the master waits, then
// comes all at once after Stalled, as the driver's loop sees it on waking.
func (w *world) stall() {
	d := time.Duration(1+w.rng.IntN(8)) * time.Second
	simCovered.stalls++
	w.stalled = true
	w.runWorld(w.now.Add(d))
	w.stalled = false
	backlog := w.backlog
	w.backlog = nil
	w.step(cluster.Stalled{For: d})
	for _, in := range backlog {
		w.tell(afterStall{in.what}, in.do)
	}
}

// observe checks what the machine records, as an observer (metrics, the events stream) sees it.
func (w *world) observe(at time.Time, what cluster.Happening) {
	if !at.Equal(w.now) {
		w.fail("record %T at %s, stepped at %s", what, at, w.now)
	}
	switch h := what.(type) {
	case cluster.WorkerSpawned:
		w.spawned[h.PID] = true
	case cluster.WorkerExited:
		if h.PID != 0 && !w.spawned[h.PID] || w.ended[h.PID] {
			w.fail("worker pid %d exited (%s), recorded spawned %t, ended already %t", h.PID, h.Reason, w.spawned[h.PID], w.ended[h.PID])
		}
		w.ended[h.PID] = h.PID != 0
	}
}

// check asserts the invariants an executor sees, after every input.
func (w *world) check() {
	if w.err != nil || w.stalled {
		return
	}
	st := w.x.Machine().Status()
	// The last STATUS= systemd heard is the machine's status line: no batch was carried out
	// inside another (issue 13).
	if st.StatusLine != "" && w.lastState != st.StatusLine {
		w.fail("systemd's last STATUS is %q, the machine's %q", w.lastState, st.StatusLine)
	}
	// A slot holds its current process, and during a rollout its replacement; never more (those
	// on their way out aside).
	perSlot := map[int]int{}
	replacements := 0
	for _, ws := range st.Workers {
		if ws.PID == 0 {
			continue
		}
		if p := w.procs[ws.PID]; p == nil || p.worker != ws.ID {
			w.fail("the machine's worker %d (pid %d) is no live process of the world", ws.ID, ws.PID)
		}
		if ws.Detached || ws.State == "stopping" || ws.State == "killing" {
			continue // on its way out: it holds no place in its slot
		}
		perSlot[ws.Index]++
		if ws.Replacement {
			replacements++
		}
	}
	allowed := 1
	if st.Rollout != cluster.NoRollout {
		allowed = 2
	}
	for slot, n := range perSlot {
		if n > allowed {
			w.fail("slot %d has %d processes, the rollout (%v) allows %d: %+v", slot, n, st.Rollout, allowed, st.Workers)
		}
	}
	if st.Rollout == cluster.NoRollout && replacements > 0 {
		w.fail("%d replacements without a rollout", replacements)
	}
}
