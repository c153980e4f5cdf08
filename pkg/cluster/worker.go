package cluster

import "time"

// WorkerState is where a worker process is in its life.
type WorkerState int

const (
	// Spawning: a SpawnWorker action is out; the process does not exist yet.
	Spawning WorkerState = iota
	// Booting: the process runs but has not said READY=1.
	Booting
	// Ready: the worker serves.
	Ready
	// Stopping: the worker got SIGTERM (or said STOPPING=1) and drains; SIGKILL follows at its deadline.
	Stopping
	// Killing: the worker got SIGKILL; only its exit is awaited.
	Killing
)

var workerStateNames = [...]string{"spawning", "booting", "ready", "stopping", "killing"}

func (s WorkerState) String() string { return workerStateNames[s] }

// worker is one process, from its SpawnWorker action to its Exited event.
type worker struct {
	id         WorkerID
	slot       int
	generation int
	pid        int // 0 while Spawning
	state      WorkerState

	spawnedAt time.Time
	readyAt   time.Time
	// deadline is when the machine acts on this worker unless something happens first: the boot
	// timeout while Booting, the heartbeat timeout while Ready, SIGKILL while Stopping. Zero: none.
	deadline time.Time
	// heartbeat is the worker's WATCHDOG_USEC: zero disables heartbeat checks.
	heartbeat time.Duration

	// expected is set when forkd itself stopped the worker for a reason that is not its fault
	// (shutdown, scale down); such an exit never counts as a crash.
	expected bool
	// stopReason says why forkd stopped or killed the worker, for logs and LastExit.
	stopReason string
	// stopAsked says how the worker was asked to stop: "SIGTERM", or "STOPPING=1" when it said so itself.
	stopAsked string
	// pendingStop is a stop decided while Spawning, applied as soon as the PID is known.
	pendingStop bool

	statusLine string
	requests   uint64
}

// slot is a worker's place in the cluster: index i is the worker that sees FORKD_WORKER=i. A slot
// outlives its processes: it keeps the crash count that drives backoff.
type slot struct {
	index  int
	worker *worker // the slot's current process; nil while waiting to (re)spawn

	// failures counts consecutive crashes; a worker that ran for ResetAfter breaks the series.
	failures int
	restarts int
	// nextSpawn is when a slot waiting in backoff spawns again; zero when not waiting.
	nextSpawn time.Time
	lastExit  string
	// retiring slots are beyond the desired worker count: their worker drains and none replaces it.
	retiring bool
}

// inBackoff reports whether the slot waits to respawn after consecutive crashes.
func (s *slot) inBackoff() bool { return s.worker == nil && !s.nextSpawn.IsZero() }
