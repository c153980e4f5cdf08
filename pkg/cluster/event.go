package cluster

import (
	"fmt"
	"syscall"

	"github.com/forkd/forkd/pkg/notify"
)

// WorkerID names one worker process for its whole life: from the SpawnWorker action that creates
// it to the Exited event that ends it. IDs are never reused, unlike PIDs and slot indexes.
type WorkerID uint64

// RequestID ties a command to its Reply. Zero means the caller wants no reply.
type RequestID uint64

// Event is an input to Machine.Step.
type Event interface{ isEvent() }

// Start brings the cluster up: one worker per slot. It must be the first event.
type Start struct{}

// Tick tells the machine that time has passed; it acts on every deadline at or before now.
// The driver sends it when the timer set to NextDeadline fires.
type Tick struct{}

// Spawned reports that the process for a SpawnWorker action is running. For a worker forked by
// the template, it is the template's reply, which may come after the worker's own Hello.
type Spawned struct {
	Worker WorkerID
	PID    int
}

// SpawnFailed reports that a SpawnWorker action could not start a process: exec failed (a crash
// of the slot), or the template could not fork (the worker is exec'd instead).
type SpawnFailed struct {
	Worker WorkerID
	Err    string
}

// Exited reports that a child process was reaped. PIDs that are not workers (orphans re-parented
// to the subreaper master) are accepted and only logged.
type Exited struct {
	PID    int
	Status ExitStatus
}

// Notified carries an sd_notify datagram from a worker, or from one of its descendants (the driver
// resolves which worker a sender belongs to).
type Notified struct {
	Worker  WorkerID
	Message notify.Message
}

// NotifyRejected reports datagrams on the notify sockets that were dropped: the sender's uid is
// refused, it is not a worker nor a worker's descendant, or the datagram could not be parsed.
// Count is how many were dropped for Reason (the driver adds up a flood into one event); 0 counts
// as 1. PID is the sender of one of them.
type NotifyRejected struct {
	PID    int
	Reason string
	Count  uint64
}

// Stop drains the cluster: SIGTERM to every worker (SIGKILL after the shutdown timeout), then an
// Exit action. Immediate sends SIGKILL at once. Stop is idempotent: a second Stop only adds a
// waiter, or escalates a graceful stop to an immediate one. The Reply comes when every worker has
// exited, just before Exit.
type Stop struct {
	Request   RequestID
	Immediate bool
}

// Scale changes the number of workers: to Workers when it is non-zero, else by Delta. The Reply
// carries a ScaleResult.
type Scale struct {
	Request RequestID
	Workers int
	Delta   int
}

// Hello is a worker's first message on its control channel (fork-worker mode): its PID, and whether
// it can be the template. The driver opens a pidfd for PID before stepping it.
type Hello struct {
	Worker  WorkerID
	PID     int
	Version int
	Fork    bool
	SDK     string
}

// TemplateReplied reports the template's answer to a pause or resume request: protocol.OpPaused or
// protocol.OpResumed.
type TemplateReplied struct {
	Worker WorkerID
	Op     string
}

// Refork re-forks workers 1..n-1 from the template (fork-worker mode), as a rolling update. The
// Reply comes when the refork has ended: its new workers ready and the old ones gone, or failed.
//
// The machine runs one operation (refork, reload, hot restart) at a time. A command that arrives
// while another operation runs or waits is queued behind it, and joins one of its kind that waits
// already (a refork joins a refork that runs); an operator's reload or hot restart that arrives
// during an automatic refork cuts that refork short at its next safe point (no new fork is
// started; those under way finish, the template resumes) and goes next. Nothing is dropped: each
// command ends with a Reply, success or the reason.
type Refork struct {
	Request RequestID
}

// Reload is a phased restart: every worker is replaced, one by one as a rolling update, by a worker
// of the next generation, spawned from the config loaded again. When its turn comes the machine
// asks the driver for that config (PrepareReload); the rollout begins with ReloadPrepared. In
// fork-worker mode a new worker 0 boots first and, once ready, becomes the template the others are
// forked from. The Reply comes when the reload has ended (its old workers gone), or failed.
type Reload struct {
	Request RequestID
}

// ReloadPrepared is the driver's answer to PrepareReload. Config, when not nil, is the machine's
// part of the config loaded again: it applies from now on, and is reverted if the reload fails.
// Err, when set, is why the reload cannot begin (an invalid config, a failed before_reload hook):
// it is the Reply to every command that asked for it.
type ReloadPrepared struct {
	Config *Config
	Err    error
}

// Restart is a hot restart: the master execs its binary again in place. When its turn comes the
// machine asks the driver for it (BeginRestart); if the exec happens, the new image's machine is
// restored from the old one's Export and carries on, replacing every worker by a phased restart
// (kind "restart"), or, with KeepWorkers, keeping them as they are. Without an exec, the driver
// answers RestartFailed. A Reply comes only then: the exec cuts the callers' connections, so they
// learn the outcome from LastRollout in the new image's Status.
type Restart struct {
	Request     RequestID
	KeepWorkers bool
}

// RestartFailed is the driver's answer to BeginRestart when the new image did not take over: the
// new binary or the before_restart hook refused, or the exec failed. Nothing changed.
type RestartFailed struct {
	Err error
}

func (Start) isEvent()           {}
func (Tick) isEvent()            {}
func (Spawned) isEvent()         {}
func (SpawnFailed) isEvent()     {}
func (Exited) isEvent()          {}
func (Notified) isEvent()        {}
func (NotifyRejected) isEvent()  {}
func (Stop) isEvent()            {}
func (Scale) isEvent()           {}
func (Hello) isEvent()           {}
func (TemplateReplied) isEvent() {}
func (Refork) isEvent()          {}
func (Reload) isEvent()          {}
func (ReloadPrepared) isEvent()  {}
func (Restart) isEvent()         {}
func (RestartFailed) isEvent()   {}

// ExitStatus is how a process ended: an exit code, or the signal that killed it.
type ExitStatus struct {
	Code   int            // valid when Signal is 0
	Signal syscall.Signal // non-zero when the process was killed by a signal
}

// ExitStatusFromWait converts a wait status.
func ExitStatusFromWait(ws syscall.WaitStatus) ExitStatus {
	if ws.Signaled() {
		return ExitStatus{Signal: ws.Signal()}
	}
	return ExitStatus{Code: ws.ExitStatus()}
}

// Success reports whether the process exited with status 0.
func (s ExitStatus) Success() bool { return s.Signal == 0 && s.Code == 0 }

func (s ExitStatus) String() string {
	if s.Signal != 0 {
		return fmt.Sprintf("killed by %s", signalName(s.Signal))
	}
	return fmt.Sprintf("exit status %d", s.Code)
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGABRT: "SIGABRT", syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE",
	syscall.SIGHUP: "SIGHUP", syscall.SIGILL: "SIGILL", syscall.SIGINT: "SIGINT",
	syscall.SIGKILL: "SIGKILL", syscall.SIGPIPE: "SIGPIPE", syscall.SIGQUIT: "SIGQUIT",
	syscall.SIGSEGV: "SIGSEGV", syscall.SIGTERM: "SIGTERM", syscall.SIGUSR1: "SIGUSR1",
	syscall.SIGUSR2: "SIGUSR2", syscall.SIGSTOP: "SIGSTOP", syscall.SIGCONT: "SIGCONT",
	syscall.SIGALRM: "SIGALRM", syscall.SIGURG: "SIGURG", syscall.SIGTTIN: "SIGTTIN",
	syscall.SIGTTOU: "SIGTTOU", syscall.SIGXCPU: "SIGXCPU", syscall.SIGSYS: "SIGSYS",
}

func signalName(s syscall.Signal) string {
	if n, ok := signalNames[s]; ok {
		return n
	}
	return fmt.Sprintf("signal %d", int(s))
}
