package control

import (
	"time"
)

// Types of Event, in Event.Type. The names are those of forkd's log records (FORKD_EVENT in the
// journal) where an event is one of them; a client shows a type it does not know as it is.
const (
	// EventWorkerSpawned: a worker process exists and boots. Worker, Path.
	EventWorkerSpawned = "worker-spawned"
	// EventWorkerReady: a worker sent READY=1 (or, with readiness "started", was spawned). Worker,
	// Path, BootSeconds (spawn to ready).
	EventWorkerReady = "worker-ready"
	// EventWorkerExited: a worker process ended. Worker, Reason (an Exit* constant), Status ("exit
	// status 1", "killed by SIGKILL (heartbeat timeout)").
	EventWorkerExited = "worker-exited"
	// EventSpawnFailed: forkd could not start a worker process. Worker (without a PID), Error.
	EventSpawnFailed = "spawn-failed"
	// EventCrashLoop: a slot crashed again soon after its last crash and waits before it respawns.
	// Worker (the slot), Crashes (in a row), DelaySeconds.
	EventCrashLoop = "crash-loop"
	// EventRolloutQueued: a refork, reload or restart was asked for while another operation runs;
	// it begins when that one has ended. Kind.
	EventRolloutQueued = "rollout-queued"
	// EventRolloutStarted: a rollout began replacing the workers (a refork or a reload) or the
	// master (a hot restart, which checks the new binary first). Kind, Generation (the one it
	// makes; absent for a hot restart before its exec).
	EventRolloutStarted = "rollout-started"
	// EventRolloutEnded: a rollout ended. Kind, Generation, Result (a Result* constant),
	// DurationSeconds (since its rollout-started; absent when there was none, as for a reload
	// whose config did not load), Error (why it failed).
	EventRolloutEnded = "rollout-ended"
	// EventMasterRestart: a step of a hot restart. Stage MasterRestartExec: the master hands the
	// cluster over and execs the new image (PID: the master's, which it keeps);
	// MasterRestartAdopted: the new image has taken the cluster over.
	EventMasterRestart = "master-restart"
	// EventScale: the desired number of workers changed. Workers, Previous.
	EventScale = "scale"
	// EventNotifyDropped: sd_notify datagrams were dropped (from a process that is not a worker, or
	// that did not parse). Reported when the total passes a power of two, so that a flood of
	// datagrams is a handful of events: PID (the last sender), Reason, Dropped (the total so far).
	EventNotifyDropped = "notify-dropped"
	// EventClusterReady: every worker was ready for the first time after forkd started.
	// Workers, Generation.
	EventClusterReady = "cluster-ready"
	// EventClusterStopping: forkd began to stop (Immediate: with SIGKILL, without a drain).
	EventClusterStopping = "cluster-stopping"
	// EventClusterStopped: every worker has exited; forkd exits next.
	EventClusterStopped = "cluster-stopped"
	// EventLagged is the last record of a stream whose client did not read fast enough: the
	// server dropped it rather than hold events for it without bound. Seq is the first event it
	// was not sent; reconnecting with EventsRequest{Replay: true, Since: Seq - 1} gets what the
	// master still remembers from there.
	EventLagged = "lagged"
)

// Why a worker exited, in Event.Reason of an EventWorkerExited.
const (
	// ExitStopped: forkd stopped it (a rollout replaced it, a scale down, a stop) and it exited.
	ExitStopped = "stopped"
	// ExitStoppedItself: the worker said it was stopping (STOPPING=1), as a worker that recycles
	// itself after a number of requests does, and exited with status 0. (With another status it
	// is a crash.)
	ExitStoppedItself = "stopped_itself"
	// ExitCrash: the worker exited, or was killed, without forkd asking.
	ExitCrash = "crash"
	// ExitBootTimeout: forkd killed a worker that did not become ready within timeouts.boot.
	ExitBootTimeout = "boot_timeout"
	// ExitHeartbeatTimeout: forkd killed a worker that sent no heartbeat (WATCHDOG=1) within
	// timeouts.worker.
	ExitHeartbeatTimeout = "heartbeat_timeout"
	// ExitShutdownTimeout: forkd killed a worker that did not exit within timeouts.shutdown of being
	// asked to stop.
	ExitShutdownTimeout = "shutdown_timeout"
	// ExitWatchdog: forkd killed a worker that asked for it (WATCHDOG=trigger).
	ExitWatchdog = "watchdog"
	// ExitOOM: the kernel's OOM killer killed a worker in its cgroup (cgroups.memory_max).
	ExitOOM = "oom"
	// ExitMaxRequests and ExitMemoryLimit: forkd recycled the worker (recycle.max_requests,
	// recycle.max_private): its replacement was ready first, then it drained.
	ExitMaxRequests = "max_requests"
	ExitMemoryLimit = "memory_limit"
)

// How a worker process was started, in Event.Path.
const (
	// PathFork: forked from the template (fork-worker mode).
	PathFork = "fork"
	// PathExec: started with exec.
	PathExec = "exec"
)

// How a rollout ended, in Event.Result of an EventRolloutEnded.
const (
	ResultSucceeded = "succeeded"
	// ResultFailed: a rollout stopped before replacing every worker (the old workers serve on), or
	// did not begin (the new config does not load, the new binary refused it).
	ResultFailed = "failed"
	// ResultAborted: forkd began to stop while the rollout ran, or while it waited its turn (then
	// without a rollout-started before it).
	ResultAborted = "aborted"
)

// Stages of a hot restart, in Event.Stage of an EventMasterRestart.
const (
	MasterRestartExec    = "exec"
	MasterRestartAdopted = "adopted"
)

// Event is one record of GET /v1/events: something that happened in the cluster. Type says
// what, and which of the other fields it has (see the Event* constants); a field that does not
// apply is absent on the wire, and so is one whose value is zero (false, 0, "").
type Event struct {
	// Seq numbers the master's events from 1, in the order they happened, across hot restarts. A
	// client that sees it jump has missed events.
	Seq uint64 `json:"seq"`
	// Time is when the master recorded it.
	Time time.Time `json:"time"`
	// Type is one of the Event* constants.
	Type string `json:"type"`
	// Message is the sentence forkd logged for it, for humans, when the event comes from its log
	// (the worker and rollout events come from the machine's records, without one).
	Message string `json:"message,omitempty"`

	// Worker is the worker process the event is about.
	Worker *EventWorker `json:"worker,omitempty"`
	// Path is PathFork or PathExec: how the worker was started.
	Path string `json:"path,omitempty"`
	// BootSeconds is how long the worker took from its spawn to READY=1.
	BootSeconds float64 `json:"boot_seconds,omitempty"`
	// Reason: for EventWorkerExited, an Exit* constant; for EventNotifyDropped, why the datagram
	// was dropped.
	Reason string `json:"reason,omitempty"`
	// Status is how the worker's process ended, in words.
	Status string `json:"status,omitempty"`
	// Crashes counts a slot's crashes in a row; DelaySeconds is how long it waits to respawn.
	Crashes      int     `json:"crashes,omitempty"`
	DelaySeconds float64 `json:"delay_seconds,omitempty"`

	// Kind is the rollout's: RolloutRefork, RolloutReload or RolloutRestart.
	Kind string `json:"kind,omitempty"`
	// Generation is the generation a rollout makes (or made); for EventClusterReady, the
	// cluster's.
	Generation int `json:"generation,omitempty"`
	// Result is a Result* constant; DurationSeconds how long the rollout ran.
	Result          string  `json:"result,omitempty"`
	DurationSeconds float64 `json:"duration_seconds,omitempty"`
	// Error says why something failed.
	Error string `json:"error,omitempty"`
	// Stage is a MasterRestart* constant.
	Stage string `json:"stage,omitempty"`

	// Workers is a number of workers: the new desired number (EventScale), or how many are ready
	// (EventClusterReady). Previous is the desired number before a scale.
	Workers  int `json:"workers,omitempty"`
	Previous int `json:"previous,omitempty"`
	// PID is a process that is not a worker: the sender of dropped datagrams, or the master.
	PID int `json:"pid,omitempty"`
	// Dropped is the total of datagrams dropped since forkd started.
	Dropped uint64 `json:"dropped,omitempty"`
	// Immediate: the stop kills the workers at once instead of draining them.
	Immediate bool `json:"immediate,omitempty"`
}

// EventWorker names the worker process an event is about.
type EventWorker struct {
	// Index is the worker's slot, 0..workers-1.
	Index int `json:"index"`
	// PID is the process's; absent when there was none (EventSpawnFailed).
	PID int `json:"pid,omitempty"`
	// Generation is the generation the process was started for.
	Generation int `json:"generation"`
}

// EventsRequest is what GET /v1/events asks for, in its query string.
type EventsRequest struct {
	// Replay starts the stream with the events the master still remembers (the last
	// EventHistory) whose Seq is above Since, then goes on with the new ones. Without it, the
	// stream has only what happens from now on. On the wire: ?since=N.
	Replay bool
	Since  uint64
}
