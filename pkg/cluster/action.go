package cluster

import (
	"log/slog"
	"syscall"
	"time"
)

// Action is an output of the machine, returned by Machine.Ready for the driver to carry out.
type Action interface{ isAction() }

// SpawnWorker asks the driver to start a worker process for a slot.
//
// With Template zero, the driver execs the worker from the spec registered as Spec, with
// WATCHDOG_USEC=Heartbeat when it is set, and answers with Spawned (with the PID) or SpawnFailed
// before it reaps anything, so an Exited event never arrives for a PID the machine has not seen.
// Channel asks for a control channel (FORKD_CONTROL_FD), for a worker 0 that may become the
// template.
//
// With Template set, the driver asks that template to fork the worker (a spawn request carrying
// the worker's new control channel) and answers later: Spawned with the template's reply, or
// SpawnFailed. The worker's Hello may come first.
//
// With Mold set (mold mode, mold.go), Template is a serving worker, asked to fork a mold: a new
// template for slot 0 (a mold request instead of a spawn request). Spawned, SpawnFailed or
// MoldRefused answers.
//
// HeapSize, on an exec'd worker 0, is the heap size an earlier template reported (heapsize.go):
// the driver adds it to the worker's environment.
type SpawnWorker struct {
	Worker     WorkerID
	Slot       int
	Generation int
	Template   WorkerID
	Mold       bool
	Channel    bool
	Spec       SpecHandle
	Heartbeat  time.Duration
	HeapSize   *HeapSize
}

// ReleaseSpec tells the driver that no worker will be spawned from the spec any more: the config
// that named it was refused, failed, or was replaced.
type ReleaseSpec struct {
	Spec SpecHandle
}

// CancelSpawn tells the driver the machine gave up on a forked spawn: it closes its end of the
// worker's channel (a worker that appears late sees end of file and exits) and kills a worker whose
// PID arrives after all.
type CancelSpawn struct {
	Worker WorkerID
}

// SendWelcome answers a worker's Hello on its control channel: it is worker Slot of Generation.
// NonServing, in mold mode, tells a template-to-be (worker 0, a mold) that it must not serve.
type SendWelcome struct {
	Worker     WorkerID
	Slot       int
	Generation int
	NonServing bool
	// ReportHeap asks an exec'd worker 0 to report its heap's size once the app has loaded
	// (X_FORKD_HEAP_SIZE, heapsize.go): fork_worker.carry_heap_size is on.
	ReportHeap bool
}

// SendRefuse refuses a worker on its control channel, saying why (Reason); the driver then closes
// the channel, and the worker exits.
type SendRefuse struct {
	Worker WorkerID
	Reason string
}

// PauseTemplate asks the template to stop serving (it finishes what is in flight, accepts
// nothing new), so that it holds no client connection when it forks; TemplatePaused answers.
type PauseTemplate struct {
	Worker WorkerID
}

// ResumeTemplate asks a paused template to serve again; TemplateResumed answers.
type ResumeTemplate struct {
	Worker WorkerID
}

// SignalWorker asks the driver to send a signal to a worker. The driver signals through the
// worker's pidfd, so a signal never reaches a recycled PID.
type SignalWorker struct {
	Worker WorkerID
	PID    int
	Signal syscall.Signal
}

// SetPriority asks the driver to run every thread of a worker's process Nice steps below the
// priority it had (Nice 0: the priority it had, back): a refork lowers the workers it is about to
// replace (priority.go). The driver does it only where it can undo it.
type SetPriority struct {
	Worker WorkerID
	PID    int
	Nice   int
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

// ScaleResult is the Result of a Reply to Scale.
type ScaleResult struct {
	Previous, Workers int
}

func (SpawnWorker) isAction()    {}
func (CancelSpawn) isAction()    {}
func (ReleaseSpec) isAction()    {}
func (SendWelcome) isAction()    {}
func (SendRefuse) isAction()     {}
func (PauseTemplate) isAction()  {}
func (ResumeTemplate) isAction() {}
func (SignalWorker) isAction()   {}
func (SetPriority) isAction()    {}
func (NotifySystemd) isAction()  {}
func (Reply) isAction()          {}
func (Log) isAction()            {}
func (Exit) isAction()           {}
