package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/cluster"
)

// This file holds the executor, in the manner of etcd-io/raft's Ready/Advance: it steps one event
// into the machine, takes the batch of actions the machine decided, carries every one out in order
// through its Seams, and only then advances the machine and steps what it learned meanwhile. The
// real master's seams are the Driver's syscalls; a simulation's are a fake world
// (executor_sim_test.go), so the same code runs in both. That simulation checks, after every
// input: the last STATUS= sent is the machine's status line (no batch inside another); a slot
// holds at most what the rollout allows; the machine's workers are live processes; specs are
// registered before use and released once; every command is answered once; the observer hears of
// each worker's end once, after its spawn.

// Seams are what the executor carries actions out with. A seam never steps the machine: what it
// learns (a spawned worker's PID, a failed spawn, a hook's exit) it hands to Executor.Learn, and
// the executor steps it once the whole batch is carried out.
type Seams interface {
	// Spawn starts a worker: exec'd, or forked by the template (SpawnWorker.Template). It learns
	// Spawned or SpawnFailed, at once for an exec, later for a fork.
	Spawn(cluster.SpawnWorker)
	// CancelSpawn gives a fork up: its channel closes, a PID that arrives late is killed.
	CancelSpawn(cluster.WorkerID)
	// Control sends a worker a message on its control channel: SendWelcome, SendRefuse,
	// PauseTemplate or ResumeTemplate.
	Control(cluster.Action)
	// Signal signals a worker's process group; SignalStray a stray.
	Signal(cluster.SignalWorker)
	SignalStray(cluster.SignalStray)
	// Priority lowers a worker's CPU priority, or puts it back.
	Priority(cluster.SetPriority)
	// Systemd sends a state string to systemd's NOTIFY_SOCKET (a no-op when not under systemd).
	Systemd(state string)
	// RunHook runs a hook, and learns HookFinished.
	RunHook(cluster.RunHook)
	// LoadConfig loads the config again and registers its spec, and learns ConfigLoaded.
	LoadConfig(cluster.LoadConfig)
	// ReleaseSpec forgets a spec no worker will be spawned from any more.
	ReleaseSpec(cluster.SpecHandle)
	// CheckRestart asks the new binary whether it can take over, and learns RestartChecked.
	CheckRestart(cluster.CheckRestart)
	// Exec hands the state over and execs the new image; it returns only if the exec failed, and
	// then learns ExecFailed. The executor calls it after the rest of the batch.
	Exec(cluster.ExecRestart)
}

// Executor owns a machine and carries out its decisions through Seams. It is not safe for
// concurrent use: one goroutine (the Driver's loop) owns it.
type Executor struct {
	m        *cluster.Machine
	seams    Seams
	clock    func() time.Time
	log      *slog.Logger
	observer Observer

	// inbox holds the events learned and not stepped yet; carrying is true while a batch is being
	// carried out, when a Step would be a re-entry.
	inbox    []cluster.Event
	carrying bool
	// steppedAt is when the event whose actions are being carried out was stepped.
	steppedAt time.Time
	// pending holds what to do with the Reply to each request still in the machine.
	pending  map[cluster.RequestID]func(cluster.Reply)
	lastReq  cluster.RequestID
	exitCode int
	exited   bool
}

// NewExecutor makes an executor for m. Clock is the time events are stepped at (time.Now for the
// real master); observer, when not nil, is told what the machine records.
func NewExecutor(m *cluster.Machine, seams Seams, clock func() time.Time, log *slog.Logger, observer Observer) *Executor {
	return &Executor{m: m, seams: seams, clock: clock, log: log, observer: observer,
		pending: make(map[cluster.RequestID]func(cluster.Reply))}
}

// Machine is the machine, for reading (Status, Phase, NextDeadline, WorkerByPID); only the
// executor steps it.
func (x *Executor) Machine() *cluster.Machine { return x.m }

// ExitCode is the code of the machine's Exit action; Exited reports whether it came.
func (x *Executor) ExitCode() (code int, exited bool) { return x.exitCode, x.exited }

// Learn queues ev, to be stepped after the batch being carried out (or at the next Flush). Seams
// call it; it never steps the machine.
func (x *Executor) Learn(ev cluster.Event) { x.inbox = append(x.inbox, ev) }

// Step steps ev after whatever was learned before it, and everything that follows. It is for
// the loop, between batches: a Step while a batch is being carried out would run a nested batch
// before the rest of the outer one (the stale STATUS of issue 13). In tests that panics; in the
// real master it is logged as a bug, and ev is learned instead.
func (x *Executor) Step(ev cluster.Event) {
	if x.carrying {
		x.reentered(ev)
		return
	}
	x.Learn(ev)
	x.Flush()
}

// Expect allocates a RequestID for a command, whose Reply goes to answer.
func (x *Executor) Expect(answer func(cluster.Reply)) cluster.RequestID {
	x.lastReq++
	x.pending[x.lastReq] = answer
	return x.lastReq
}

// Awaiting reports whether the Reply to id has not come yet.
func (x *Executor) Awaiting(id cluster.RequestID) bool { _, ok := x.pending[id]; return ok }

// Forget drops what waits for the Reply to id (the machine logs the outcome).
func (x *Executor) Forget(id cluster.RequestID) { x.pending[id] = func(cluster.Reply) {} }

// Flush steps every learned event in order, each with its whole batch carried out before the
// next is stepped.
func (x *Executor) Flush() {
	if x.carrying {
		x.reentered(nil)
		return
	}
	for len(x.inbox) > 0 {
		ev := x.inbox[0]
		x.inbox = x.inbox[1:]
		x.steppedAt = x.clock()
		if err := x.m.Step(x.steppedAt, ev); err != nil {
			// An executor bug, not an input error: log it loudly and keep the cluster running.
			x.log.Error("cluster state machine rejected an event", "error", err, "event", fmt.Sprintf("%T%+v", ev, ev))
		}
		var exec *cluster.ExecRestart
		x.carrying = true
		for _, a := range x.m.Ready() {
			if e, ok := a.(cluster.ExecRestart); ok {
				exec = &e // the batch's last word: carried out once the rest is done
				continue
			}
			x.carry(a)
		}
		x.carrying = false
		x.m.Advance()
		if exec != nil {
			x.seams.Exec(*exec) // returns only if the exec failed
		}
	}
}

func (x *Executor) reentered(ev cluster.Event) {
	msg := fmt.Sprintf("supervisor: the machine was stepped (%T) while a batch was being carried out", ev)
	if testing.Testing() {
		panic(msg)
	}
	x.log.Error(msg+" (a bug): it is stepped after the batch", "event", "executor-reentry")
	if ev != nil {
		x.Learn(ev)
	}
}

// carry carries one action out.
func (x *Executor) carry(a cluster.Action) {
	switch a := a.(type) {
	case cluster.SpawnWorker:
		x.seams.Spawn(a)
	case cluster.CancelSpawn:
		x.seams.CancelSpawn(a.Worker)
	case cluster.SendWelcome, cluster.SendRefuse, cluster.PauseTemplate, cluster.ResumeTemplate:
		x.seams.Control(a)
	case cluster.SignalWorker:
		x.seams.Signal(a)
	case cluster.SignalStray:
		x.seams.SignalStray(a)
	case cluster.SetPriority:
		x.seams.Priority(a)
	case cluster.NotifySystemd:
		x.seams.Systemd(a.State)
	case cluster.Reply:
		if answer, ok := x.pending[a.Request]; ok {
			delete(x.pending, a.Request)
			answer(a)
		}
	case cluster.Log:
		x.log.LogAttrs(context.Background(), a.Level, a.Msg, a.Attrs...)
	case cluster.Exit:
		x.exitCode, x.exited = a.Code, true
	case cluster.RunHook:
		x.seams.RunHook(a)
	case cluster.LoadConfig:
		x.seams.LoadConfig(a)
	case cluster.ReleaseSpec:
		x.seams.ReleaseSpec(a.Spec)
	case cluster.CheckRestart:
		x.seams.CheckRestart(a)
	case cluster.Record:
		if x.observer != nil {
			x.observer.Observe(x.steppedAt, a.What)
		}
	default:
		x.log.Error(fmt.Sprintf("supervisor: no way to carry out %T (a bug)", a))
	}
}

// Observer is told, in order and from the driver's loop, what the machine records (cluster.Record):
// a worker spawned, ready or exited and why, a rollout started or ended, datagrams dropped. At is
// when the event that led to it was stepped. Metrics and an event stream hang off it; it must not
// block, and changes nothing in what the cluster does.
type Observer interface {
	Observe(at time.Time, what cluster.Happening)
}

// ObserverFunc makes a function an Observer.
type ObserverFunc func(at time.Time, what cluster.Happening)

// Observe calls f.
func (f ObserverFunc) Observe(at time.Time, what cluster.Happening) { f(at, what) }
