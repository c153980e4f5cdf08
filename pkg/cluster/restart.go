package cluster

import (
	"fmt"
	"log/slog"
)

// This file holds the hot restart as the machine runs it: the master execs a new image of itself
// in place (same PID, so systemd's MAINPID, the subreaper flag and every worker's parent stay), and
// the new image adopts the workers, then replaces them by a phased restart of kind KindRestart, or,
// with KeepWorkers, keeps them as they are. In order:
//
//   - Restart (the command) queues the operation; when its turn comes the machine asks the driver
//     to check the new binary (CheckRestart: it reads the handover format, and finds the config
//     valid), answered by RestartChecked;
//   - the before_restart hook, if any (RunHook, HookFinished);
//   - the machine exports its state and asks for the exec (ExecRestart); the driver hands the
//     state and its descriptors over and execs. An exec that fails is stepped as ExecFailed;
//   - in the new image, the driver restores the machine (Restore) and steps Adopted first.
//
// A refusal at any step leaves everything as it was, and is the Reply to the commands that asked.
// After the exec there is nobody to reply to: the callers learn the outcome from LastRollout.

// CheckRestart asks the driver whether the new binary can take over (it reads this image's
// handover format and finds the config valid), answered by RestartChecked. KeepWorkers says which
// kind of hot restart it is, for the driver's log.
type CheckRestart struct {
	KeepWorkers bool
}

// RestartChecked is the driver's answer to CheckRestart: Err is why the new binary cannot take
// over, nil when it can.
type RestartChecked struct {
	Err error
}

// ExecRestart asks the driver to hand State over to a new image of the master and exec it. It is
// the last action of its batch. If the exec does not happen, the driver steps ExecFailed.
type ExecRestart struct {
	State State
}

// ExecFailed reports that the exec of ExecRestart did not happen; nothing changed.
type ExecFailed struct {
	Err error
}

// Adopted is the first event of a new image's machine made by Restore: the workers are its now.
type Adopted struct{}

func (CheckRestart) isAction()  {}
func (ExecRestart) isAction()   {}
func (RestartChecked) isEvent() {}
func (ExecFailed) isEvent()     {}
func (Adopted) isEvent()        {}

// restartStage is how far a hot restart before its exec has come.
type restartStage int

const (
	restartChecking restartStage = iota + 1
	restartHooking
	restartExecing
)

// beginRestart starts the hot restart whose turn it is, with the check of the new binary.
func (m *Machine) beginRestart(o *op) {
	m.preparing = o
	o.stage = restartChecking
	what := "replacing the workers after the exec"
	if o.keepWorkers {
		what = "keeping the workers"
	}
	m.log(slog.LevelInfo, "hot restart ("+what+"): checking the new binary", slog.String("event", "restart-start"))
	m.emit(CheckRestart{KeepWorkers: o.keepWorkers})
}

// restarting returns the hot restart before its exec at stage, or nil.
func (m *Machine) restarting(stage restartStage) *op {
	if o := m.preparing; o != nil && o.exec && o.stage == stage {
		return o
	}
	return nil
}

func (m *Machine) restartChecked(e RestartChecked) {
	o := m.restarting(restartChecking)
	if o == nil {
		return
	}
	if e.Err != nil {
		m.restartRefused(o, e.Err)
		return
	}
	if h := m.cfg.Hooks; len(h.BeforeRestart) > 0 {
		o.stage = restartHooking
		o.hook = m.runHook(HookBeforeRestart, h.BeforeRestart, h.Timeout)
		return
	}
	m.execRestart(o)
}

func (m *Machine) beforeRestartDone(id HookID, err error) {
	o := m.restarting(restartHooking)
	if o == nil || o.hook != id {
		return
	}
	if err != nil {
		m.restartRefused(o, err)
		return
	}
	m.execRestart(o)
}

// execRestart exports the machine and asks for the exec; a machine that cannot be exported now (a
// fork is under way) refuses the restart.
func (m *Machine) execRestart(o *op) {
	o.stage = restartExecing
	st, err := m.Export(m.now)
	if err != nil {
		m.restartRefused(o, fmt.Errorf("%w: %v", ErrBusy, err))
		return
	}
	m.log(slog.LevelInfo, fmt.Sprintf("hot restart: exec the new binary in place, handing over %s", plural(len(st.Workers), "worker")),
		slog.String("event", "restart-exec"))
	m.emit(ExecRestart{State: st})
}

func (m *Machine) execFailed(e ExecFailed) {
	if o := m.restarting(restartExecing); o != nil {
		m.restartRefused(o, e.Err)
	}
}

// restartRefused ends a hot restart that did not exec: nothing changed.
func (m *Machine) restartRefused(o *op, err error) {
	m.preparing = nil
	m.log(slog.LevelError, "hot restart refused: "+err.Error(), slog.String("event", "restart-failed"))
	m.endOp(o, err)
}

// adopted decides, in the new image, what follows the exec: a phased restart first, before what
// was queued behind the hot restart, or, keeping the workers, nothing: the hot restart is done.
func (m *Machine) adopted() {
	r := m.handedOver
	if r == nil {
		return
	}
	m.handedOver = nil
	how := "replacing the workers by a phased restart"
	if r.KeepWorkers {
		how = "keeping the workers as they are"
		m.last = RolloutResult{Seq: r.Seq, Kind: KindRestart, Generation: m.generation, Target: m.generation}
		m.record(RolloutEnded{Kind: KindRestart, Generation: m.generation})
	} else {
		m.ops = append([]*op{{kind: KindRestart, seq: r.Seq}}, m.ops...)
	}
	m.log(slog.LevelInfo, "hot restart: took over the cluster; "+how, slog.String("event", "restart-adopted"))
}
