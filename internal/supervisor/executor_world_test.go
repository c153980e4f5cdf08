package supervisor

import (
	"errors"
	"log/slog"
	"math/rand/v2"
	"strings"
	"syscall"
	"time"

	"github.com/forkd/forkd/pkg/cluster"
)

// This file holds the fake world's side of the executor's seams (executor_sim_test.go): each
// action carried out the way the real driver and real, sometimes faulty, processes would.

// learnLater delivers an answer of the master's own (a hook, a check, a fork's reply) if the image
// that asked still runs: an exec loses what the old image waited for.
func (w *world) learnLater(d time.Duration, ev func() cluster.Event) {
	image := w.image
	w.after(d, func() {
		if w.image == image {
			w.step(ev())
		}
	})
}

func (w *world) newProc(id cluster.WorkerID, channel bool) *fakeProc {
	w.lastPID++
	p := &fakeProc{pid: w.lastPID, worker: id, channel: channel, stubborn: w.rng.IntN(8) == 0}
	w.procs[p.pid], w.byWorker[id] = p, p
	w.live(p)
	return p
}

// live gives a process a worker's life: a hello, READY=1 mostly within the boot timeout, then
// heartbeats and requests, until it hangs or exits.
func (w *world) live(p *fakeProc) {
	alive := func() bool { return !p.exited && !p.hung && !p.cancelled }
	w.after(w.delay(w.cfg.BootTimeout*5/4), func() {
		if p.channel && alive() {
			w.step(cluster.Hello{Worker: p.worker, PID: p.pid, Fork: p.mold || w.rng.IntN(5) > 0, Mold: p.mold})
		}
		var requests uint64
		var beat func()
		beat = func() {
			if !alive() {
				return
			}
			requests += uint64(w.rng.IntN(20))
			w.step(cluster.Notified{Worker: p.worker, Message: cluster.Notification{Ready: true, Watchdog: true,
				HasRequests: true, Requests: requests}})
			w.after(time.Second/2+w.delay(time.Second), beat)
		}
		beat()
	})
}

// exit ends a process; the master hears of it (SIGCHLD) soon, and sometimes a datagram it sent
// before its end comes after.
func (w *world) exit(p *fakeProc, st cluster.ExitStatus) {
	if p.exited {
		return
	}
	p.exited = true
	w.after(w.delay(50*time.Millisecond), func() {
		ev := cluster.Exited{PID: p.pid, Status: st}
		w.tell(ev, func() {
			delete(w.procs, p.pid) // reaped
			w.x.Step(ev)
		})
		if w.rng.IntN(4) == 0 {
			simCovered.late++
			w.step(cluster.Notified{Worker: p.worker, Message: cluster.Notification{Watchdog: true}})
		}
	})
}

var discard = slog.New(slog.DiscardHandler)

func (w *world) Spawn(a cluster.SpawnWorker) {
	if a.Template != 0 {
		w.fork(a)
		return
	}
	if !w.specs[a.Spec] {
		w.fail("spawn of worker %d from spec %d, which is not registered", a.Worker, a.Spec)
	}
	if w.rng.IntN(20) == 0 {
		w.x.Learn(cluster.SpawnFailed{Worker: a.Worker, Err: "fork: resource temporarily unavailable"})
		return
	}
	p := w.newProc(a.Worker, a.Channel)
	w.x.Learn(cluster.Spawned{Worker: a.Worker, PID: p.pid})
}

// fork plays a template, or a serving worker asked for a mold: it forks late, fails, never
// answers, or (asked for a mold by an SDK without them) answers error.
func (w *world) fork(a cluster.SpawnWorker) {
	r := w.rng.IntN(10)
	if a.Mold && r == 9 {
		w.learnLater(w.delay(time.Second), func() cluster.Event {
			return cluster.MoldRefused{Worker: a.Worker, Err: `unknown op "mold"`}
		})
		return
	}
	switch {
	case r < 7:
		image := w.image
		w.after(w.delay(w.cfg.ForkTimeout*5/4), func() {
			if a.Mold {
				simCovered.molds++
			}
			p := w.newProc(a.Worker, true)
			p.mold = a.Mold
			if w.image != image {
				w.exit(p, cluster.ExitStatus{Code: 1}) // its channel closed with the old image
				return
			}
			w.step(cluster.Spawned{Worker: a.Worker, PID: p.pid})
		})
	case r < 9:
		w.learnLater(w.delay(time.Second), func() cluster.Event {
			return cluster.SpawnFailed{Worker: a.Worker, Err: "the template cannot fork"}
		})
	}
}

func (w *world) CancelSpawn(id cluster.WorkerID) {
	if p := w.byWorker[id]; p != nil && !p.exited {
		p.cancelled = true
		w.exit(p, cluster.ExitStatus{Signal: syscall.SIGKILL})
	}
}

func (w *world) Control(a cluster.Action) {
	switch a := a.(type) {
	case cluster.SendRefuse:
		if p := w.byWorker[a.Worker]; p != nil {
			w.exit(p, cluster.ExitStatus{Code: 1})
		}
	case cluster.PauseTemplate:
		w.learnLater(w.delay(w.cfg.ForkTimeout*5/4), func() cluster.Event { return cluster.TemplatePaused(a) })
	case cluster.ResumeTemplate:
		w.learnLater(w.delay(w.cfg.ForkTimeout*5/4), func() cluster.Event { return cluster.TemplateResumed(a) })
	}
}

func (w *world) Priority(a cluster.SetPriority) {
	if p := w.procs[a.PID]; p == nil || p.worker != a.Worker {
		w.fail("priority %d for pid %d of worker %d, which is not that worker's process", a.Nice, a.PID, a.Worker)
	}
}

func (w *world) Signal(a cluster.SignalWorker) {
	p := w.procs[a.PID]
	if p == nil || p.worker != a.Worker {
		w.fail("signal %v to pid %d of worker %d, which is not that worker's process", a.Signal, a.PID, a.Worker)
		return
	}
	switch {
	case a.Signal == syscall.SIGKILL:
		w.exit(p, cluster.ExitStatus{Signal: syscall.SIGKILL})
	case !p.stubborn && !p.hung:
		w.after(w.delay(w.cfg.ShutdownTimeout*3/2), func() { w.exit(p, cluster.ExitStatus{}) })
	}
}

func (w *world) SignalStray(cluster.SignalStray) {}

func (w *world) Systemd(state string) {
	if _, status, ok := strings.Cut(state, "STATUS="); ok {
		w.lastState, _, _ = strings.Cut(status, "\n")
	}
}

func (w *world) RunHook(a cluster.RunHook) {
	w.learnLater(w.delay(a.Timeout/4), func() cluster.Event {
		return cluster.HookFinished{ID: a.ID, Status: cluster.ExitStatus{Code: btoi(w.rng.IntN(5) == 0)}}
	})
}

func (w *world) LoadConfig(cluster.LoadConfig) {
	w.learnLater(w.delay(time.Second), func() cluster.Event {
		if w.rng.IntN(8) == 0 {
			return cluster.ConfigLoaded{Err: errors.New("invalid config")}
		}
		cfg := w.x.Machine().Config()
		cfg.Workers = 1 + w.rng.IntN(4)
		cfg.Hooks = randomHooks(w.rng)
		w.lastSpec++
		cfg.Spec = w.lastSpec
		w.specs[cfg.Spec] = true
		return cluster.ConfigLoaded{Config: &cfg}
	})
}

func (w *world) ReleaseSpec(h cluster.SpecHandle) {
	if !w.specs[h] {
		w.fail("release of spec %d, which is not registered", h)
	}
	delete(w.specs, h)
}

func (w *world) CheckRestart(cluster.CheckRestart) {
	w.learnLater(w.delay(time.Second), func() cluster.Event {
		if w.rng.IntN(5) == 0 {
			return cluster.RestartChecked{Err: errors.New("the new binary reads another handover")}
		}
		return cluster.RestartChecked{}
	})
}

// errExeced stands for an exec that happened: the image's code never returns from it.
var errExeced = errors.New("exec'd")

func (w *world) Exec(a cluster.ExecRestart) {
	if w.rng.IntN(5) == 0 {
		w.x.Learn(cluster.ExecFailed{Err: errors.New("exec: permission denied")})
		return
	}
	w.execState = &a.State
	panic(errExeced)
}

// execute runs an exec that happened: a new image restores the machine from the handed-over state
// and adopts the workers; nobody waits for a Reply any more.
func (w *world) execute(cfg cluster.Config, st cluster.State) {
	m, err := cluster.Restore(cfg, st, w.now)
	if err != nil {
		w.fail("Restore of an ExecRestart's state: %v", err)
		return
	}
	w.image++
	w.execs++
	simCovered.execs++
	if w.execs == 2 {
		simCovered.twoOrMore++
	}
	clear(w.requests)
	w.x = NewExecutor(m, w, w.clock, w.x.log, w.x.observer)
	w.step(cluster.Adopted{})
}

func (w *world) clock() time.Time { return w.now }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func randomHooks(rng *rand.Rand) cluster.Hooks {
	var h cluster.Hooks
	for _, hook := range []*[]string{&h.BeforeReload, &h.AfterReload, &h.BeforeRestart, &h.OnWorkerCrash} {
		if rng.IntN(3) == 0 {
			*hook = []string{"hook"}
		}
	}
	h.Timeout = time.Duration(1+rng.IntN(5)) * time.Second
	return h
}

var _ Seams = (*world)(nil)
