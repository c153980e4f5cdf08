package cluster

import (
	"fmt"
	"strconv"
	"syscall"
	"time"
)

// WorkerID names one worker process for its whole life: from the SpawnWorker action that creates
// it to the Exited event that ends it. IDs are never reused, unlike PIDs and slot indexes.
type WorkerID uint64

// RequestID ties a command to its Reply. Zero means the caller wants no reply.
type RequestID uint64

// Event is an input to Machine.Step.
type Event interface{ isEvent() }

// Command is an event a caller can ask a Reply to: WithRequest returns a copy of it that carries
// the RequestID its Reply will name. The driver hands the machine a command it must answer only
// as a Command, so a new command cannot lose its caller's Reply.
type Command interface {
	Event
	WithRequest(RequestID) Command
}

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
	// OOM: the kernel's OOM killer killed the worker, in its cgroup.
	OOM OOMKill
}

// OOMKill says whether the kernel's OOM killer killed a worker, as its cgroup's memory.events
// tells (oom_kill), and the worker's memory.max then (0: none).
type OOMKill struct {
	Killed    bool
	MemoryMax uint64
}

// String says it as a worker's exit does: "out of memory: ...".
func (o OOMKill) String() string {
	if o.MemoryMax == 0 {
		return "out of memory: the kernel's OOM killer, in the worker's cgroup"
	}
	size := strconv.FormatUint(o.MemoryMax, 10) + " bytes"
	for _, u := range []struct {
		shift  uint
		suffix string
	}{{30, "G"}, {20, "M"}, {10, "K"}} {
		if o.MemoryMax%(1<<u.shift) == 0 {
			size = strconv.FormatUint(o.MemoryMax>>u.shift, 10) + u.suffix
			break
		}
	}
	return "out of memory: the worker's cgroup reached memory.max, " + size
}

// Notified carries an sd_notify datagram from a worker, or from one of its descendants (the driver
// resolves which worker a sender belongs to).
type Notified struct {
	Worker  WorkerID
	Message Notification
}

// Notification is what the machine reads in an sd_notify datagram (sd_notify(3)).
type Notification struct {
	// Ready, Stopping, Watchdog and WatchdogTrigger are READY=1, STOPPING=1, WATCHDOG=1 and
	// WATCHDOG=trigger.
	Ready, Stopping, Watchdog, WatchdogTrigger bool
	// Status is STATUS=, when HasStatus.
	Status    string
	HasStatus bool
	// Requests is X_FORKD_REQUESTS=, the worker's cumulative count of requests, when HasRequests.
	Requests    uint64
	HasRequests bool
	// Busy is X_FORKD_BUSY=, the threads serving a request now, when HasBusy.
	Busy    int
	HasBusy bool
	// HeapSize is X_FORKD_HEAP_SIZE=, as sent (the machine checks it: heapsize.go), when
	// HasHeapSize.
	HeapSize    string
	HasHeapSize bool
	// WatchdogTimeout is WATCHDOG_USEC= (a new heartbeat timeout), ExtendTimeout
	// EXTEND_TIMEOUT_USEC=; zero when absent.
	WatchdogTimeout, ExtendTimeout time.Duration
}

// NotifyRejected reports datagrams on the notify sockets that were dropped: the sender's uid is
// refused, it is not a worker nor a worker's descendant, or the datagram could not be parsed.
// Count is how many were dropped for Reason (the driver adds up a flood into one event); 0 counts
// as 1. PID is the sender of one of them; Detail says in words what was wrong with it, for the log.
type NotifyRejected struct {
	PID    int
	Reason DropReason
	Detail string
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
// it can be the template. The driver opens a pidfd for PID before stepping it. Mismatch, when set,
// is why the worker's protocol is not the master's (the driver checks the version where it decodes
// the message): the machine refuses the worker with it.
type Hello struct {
	Worker WorkerID
	PID    int
	Fork   bool
	// Mold: the worker says it is a mold (mold.go), forked by a serving worker to be the template.
	Mold     bool
	SDK      string
	Mismatch string
}

// MoldRefused reports that the serving worker asked to fork a mold (SpawnWorker with Mold)
// answered that it cannot: its SDK does not know the op (Err is its answer). The refork then
// forks from the template as it is.
type MoldRefused struct {
	Worker WorkerID
	Err    string
}

// TemplatePaused is the template's answer to PauseTemplate: it serves nothing until resumed.
type TemplatePaused struct {
	Worker WorkerID
}

// TemplateResumed is the template's answer to ResumeTemplate.
type TemplateResumed struct {
	Worker WorkerID
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
// asks the driver for that config (LoadConfig) and runs before_reload; the rollout begins when the
// config is loaded (ConfigLoaded) and the hook has succeeded. In
// fork-worker mode a new worker 0 boots first and, once ready, becomes the template the others are
// forked from. The Reply comes when the reload has ended (its old workers gone), or failed.
type Reload struct {
	Request RequestID
}

// Restart is a hot restart: the master execs its binary again in place (restart.go). A Reply
// comes only if it is refused: the exec cuts the callers' connections, so they learn the outcome
// from LastRollout in the new image's Status.
type Restart struct {
	Request     RequestID
	KeepWorkers bool
}

func (e Stop) WithRequest(id RequestID) Command    { e.Request = id; return e }
func (e Scale) WithRequest(id RequestID) Command   { e.Request = id; return e }
func (e Refork) WithRequest(id RequestID) Command  { e.Request = id; return e }
func (e Reload) WithRequest(id RequestID) Command  { e.Request = id; return e }
func (e Restart) WithRequest(id RequestID) Command { e.Request = id; return e }

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
func (TemplatePaused) isEvent()  {}
func (MoldRefused) isEvent()     {}
func (TemplateResumed) isEvent() {}
func (Refork) isEvent()          {}
func (Reload) isEvent()          {}
func (Restart) isEvent()         {}

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
