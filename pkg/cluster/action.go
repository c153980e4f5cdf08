package cluster

import (
	"log/slog"
	"syscall"
)

// Action is an output of the machine, returned by Machine.Ready for the driver to carry out.
type Action interface{ isAction() }

// SpawnWorker asks the driver to start a worker process for a slot.
//
// With Template zero, the driver execs the worker and answers with Spawned (with the PID) or
// SpawnFailed before it reaps anything, so an Exited event never arrives for a PID the machine has
// not seen. Channel asks for a control channel (FORKD_CONTROL_FD), for a worker 0 that may become
// the template.
//
// With Template set, the driver asks that template to fork the worker (a spawn request carrying
// the worker's new control channel) and answers later: Spawned with the template's reply, or
// SpawnFailed. The worker's Hello may come first.
type SpawnWorker struct {
	Worker     WorkerID
	Slot       int
	Generation int
	Template   WorkerID
	Channel    bool
}

// CancelSpawn tells the driver the machine gave up on a forked spawn: it closes its end of the
// worker's channel (a worker that appears late sees end of file and exits) and kills a worker whose
// PID arrives after all.
type CancelSpawn struct {
	Worker WorkerID
}

// ControlWorker asks the driver to send a message on a worker's control channel: protocol.OpWelcome
// (with Slot and Generation), OpRefuse (with Error), OpPause or OpResume.
type ControlWorker struct {
	Worker     WorkerID
	Op         string
	Slot       int
	Generation int
	Error      string
}

// SignalWorker asks the driver to send a signal to a worker. The driver signals through the
// worker's pidfd, so a signal never reaches a recycled PID.
type SignalWorker struct {
	Worker WorkerID
	PID    int
	Signal syscall.Signal
}

// NotifySystemd asks the driver to send a state string to systemd's NOTIFY_SOCKET, e.g.
// "READY=1\nSTATUS=4/4 workers ready, generation 1". It is a no-op when not under systemd.
type NotifySystemd struct {
	State string
}

// Reply answers a command. Err is nil on success; Result holds a command-specific value
// (ScaleResult for Scale).
type Reply struct {
	Request RequestID
	Err     error
	Result  any
}

// Log is a record for forkd's log. The machine decides what is worth saying; the driver only
// writes it.
type Log struct {
	Level slog.Level
	Msg   string
	Attrs []slog.Attr
}

// Exit tells the driver that the cluster is down and the master should exit with Code.
// It is the last action the machine emits.
type Exit struct {
	Code int
}

// WorkerCrashed reports a worker's crash (an exit forkd did not ask for), for the on_worker_crash
// hook. PID is 0 when the process could not even be started.
type WorkerCrashed struct {
	Slot, PID, Generation int
	Status                string
}

// RolloutEnded reports the end of a rollout ("refork", "reload", "restart"): Err is nil when it
// replaced every worker, else why it stopped. Generation is the one it rolled out.
type RolloutEnded struct {
	Kind       string
	Generation int
	Err        error
}

// PrepareReload asks the driver for the config of a reload to generation Generation: load it again
// and, unless Restart (the phased restart that completes a hot restart), run the before_reload
// hook; then step ReloadPrepared, with the config or the reason the reload cannot begin. The
// machine starts nothing else meanwhile.
type PrepareReload struct {
	Generation int
	Restart    bool
}

// BeginRestart asks the driver for a hot restart: check the new binary, run the before_restart hook,
// hand the state over (Export) and exec the new image, which keeps the workers (KeepWorkers) or
// replaces them. If that does not happen, the driver steps RestartFailed. The machine starts
// nothing else meanwhile.
type BeginRestart struct {
	KeepWorkers bool
}

// ScaleResult is the Result of a Reply to Scale.
type ScaleResult struct {
	Previous, Workers int
}

func (SpawnWorker) isAction()   {}
func (CancelSpawn) isAction()   {}
func (ControlWorker) isAction() {}
func (SignalWorker) isAction()  {}
func (NotifySystemd) isAction() {}
func (Reply) isAction()         {}
func (Log) isAction()           {}
func (Exit) isAction()          {}
func (WorkerCrashed) isAction() {}
func (RolloutEnded) isAction()  {}
func (PrepareReload) isAction() {}
func (BeginRestart) isAction()  {}
