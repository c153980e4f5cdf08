package cluster

import "time"

// This file holds the machine's account of what happened, for whatever observes the cluster
// (metrics, an event stream): one Record action carrying a typed Happening. The machine decides
// what is worth recording, the driver hands each record to its observer, and nothing here changes
// what the cluster does.

// Record reports something that happened in the cluster. The driver passes What to its observer.
type Record struct {
	What Happening
}

func (Record) isAction() {}

// Happening is one of the records below.
type Happening interface{ isHappening() }

// WorkerSpawned: a worker's process exists (its PID is known).
type WorkerSpawned struct {
	Slot, Generation, PID int
	// Forked: the template forked it; else it was exec'd.
	Forked bool
}

// WorkerReady: a worker became ready, Boot after its spawn.
type WorkerReady struct {
	Slot, Generation, PID int
	Forked                bool
	Boot                  time.Duration
}

// ExitReason says why a worker's process ended, as far as forkd is concerned.
type ExitReason string

const (
	// ExitStopped: forkd asked (a stop, a scale down, a rollout replaced it).
	ExitStopped ExitReason = "stopped"
	// ExitRecycled: it said STOPPING=1, then exited with status 0 (a worker recycling itself).
	ExitRecycled ExitReason = "recycled"
	// ExitCrash: it exited without forkd asking, or could not be started.
	ExitCrash ExitReason = "crash"
	// ExitBootTimeout, ExitHeartbeatTimeout, ExitWatchdogTrigger: forkd killed it for failing to
	// become ready in time, for missing its heartbeat, or because it asked (WATCHDOG=trigger).
	ExitBootTimeout      ExitReason = "boot-timeout"
	ExitHeartbeatTimeout ExitReason = "heartbeat-timeout"
	ExitWatchdogTrigger  ExitReason = "watchdog-trigger"
	// ExitShutdownTimeout: forkd killed it for not exiting within the shutdown timeout.
	ExitShutdownTimeout ExitReason = "shutdown-timeout"
	// ExitOOM: the kernel's OOM killer killed it, in its cgroup (its memory.max, most often).
	ExitOOM ExitReason = "oom"
)

// WorkerExited: a worker's process ended (or never started: PID 0), Status as the log says it.
type WorkerExited struct {
	Slot, Generation, PID int
	Reason                ExitReason
	Status                string
}

// RolloutStarted: an operation began its rollout; Automatic for a refork nobody asked for, which
// Trigger started.
type RolloutStarted struct {
	Kind       RolloutKind
	Generation int
	Automatic  bool
	Trigger    string
}

// What starts an automatic refork, in RolloutStarted.Trigger.
const (
	// TriggerRequests: the busiest worker served its quota of requests (refork_after).
	TriggerRequests = "refork_after"
	// TriggerMemory: the forked workers' private memory grew past the threshold (refork_on_decay).
	TriggerMemory = "refork_on_decay"
)

// RolloutEnded: an operation ended, Err nil when it succeeded; Duration from the start of its
// rollout (zero for one that never began one).
type RolloutEnded struct {
	Kind       RolloutKind
	Generation int
	Err        error
	Duration   time.Duration
}

// NotifyDropped: Count datagrams on the notify sockets were dropped, for Reason.
type NotifyDropped struct {
	Reason DropReason
	Count  uint64
}

func (WorkerSpawned) isHappening()  {}
func (WorkerReady) isHappening()    {}
func (WorkerExited) isHappening()   {}
func (RolloutStarted) isHappening() {}
func (RolloutEnded) isHappening()   {}
func (NotifyDropped) isHappening()  {}

func (m *Machine) record(h Happening) { m.emit(Record{What: h}) }
