package cluster

import "time"

// WorkerState is where a worker process is in its life.
type WorkerState int

const (
	// Spawning: a SpawnWorker action is out; the process does not exist yet (or its PID is not
	// known yet, for a worker the template forks).
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

// gone reports a worker on its way out: it no longer counts as capacity.
func (s WorkerState) gone() bool { return s == Stopping || s == Killing }

// worker is one process, from its SpawnWorker action to its Exited event.
type worker struct {
	id         WorkerID
	slot       int
	generation int
	pid        int // 0 while Spawning
	state      WorkerState

	// template is the template that forked this worker; 0 for an exec'd worker.
	template WorkerID
	// channel: the worker has a control channel; hello: it said hello on it; canFork: it declared
	// it can be the template.
	channel, hello, canFork bool

	spawnedAt time.Time
	readyAt   time.Time
	// deadline is when the machine acts on this worker unless something happens first: the fork
	// timeout while the template forks it, the boot timeout while Booting, the heartbeat timeout
	// while Ready, SIGKILL while Stopping. Zero: none.
	deadline time.Time
	// heartbeat is the worker's WATCHDOG_USEC: zero disables heartbeat checks.
	heartbeat time.Duration

	// expected is set when forkd itself stopped the worker for a reason that is not its fault
	// (shutdown, scale down, replaced by a rollout); such an exit never counts as a crash.
	expected bool
	// stopReason says why forkd stopped or killed the worker, for logs and LastExit.
	stopReason string
	// stopAsked says how the worker was asked to stop: "SIGTERM", or "STOPPING=1" when it said so itself.
	stopAsked string
	// pendingStop is a stop decided while Spawning, applied as soon as the PID is known.
	pendingStop bool
	// killReason says why forkd killed the worker on its own account (a timeout, its own
	// WATCHDOG=trigger), for the record of its exit; empty otherwise.
	killReason ExitReason

	// lowered: a refork lowered its CPU priority (priority.go), not given back yet.
	lowered bool

	statusLine string
	// requests is the worker's last X_FORKD_REQUESTS that made sense, reported at requestsAt;
	// badRequests is set once one did not (logged once per worker).
	requests    uint64
	requestsAt  time.Time
	badRequests bool
	// badHeapSize is set once the worker sent an X_FORKD_HEAP_SIZE the machine ignored (logged
	// once per worker).
	badHeapSize bool
	// busy is the worker's last X_FORKD_BUSY (its threads serving a request), nil until it sent one.
	busy *int
	// reforkBase is requests at the last refork (0 for a worker spawned since), for ReforkAfter.
	reforkBase uint64
	// memory is the worker's memory at the last sample that read it; nil before.
	memory *MemoryFigures
	// recycled is why forkd recycles the worker (recycle.go), once it decided to; "" before.
	recycled ExitReason
	// mold: a mold (mold.go), forked by the serving worker template names; source is where the
	// mold came from, kept while it is the template.
	mold   bool
	source *MoldSource
}

// servedSinceRefork is how many requests w served since the last refork, or since it started.
func (w *worker) servedSinceRefork() uint64 {
	if w.requests < w.reforkBase {
		return 0
	}
	return w.requests - w.reforkBase
}

// forked reports whether the template (or, for a mold, a serving worker) forked this worker.
func (w *worker) forked() bool { return w.template != 0 }

// slot is a worker's place in the cluster: index i is the worker that sees FORKD_WORKER=i. A slot
// outlives its processes: it keeps the crash count that drives backoff.
type slot struct {
	index  int
	worker *worker // the slot's current process; nil while waiting to (re)spawn
	// next is the slot's replacement during a rollout; it becomes worker once ready.
	next *worker

	// failures counts consecutive crashes; a worker that ran for ResetAfter breaks the series.
	failures int
	restarts int
	// nextSpawn is when a slot waiting in backoff spawns again; zero when not waiting.
	nextSpawn time.Time
	// awaitTemplate, in fork-worker mode, is how long the slot waits for a template to fork its
	// worker from before it execs one instead; zero when not waiting.
	awaitTemplate time.Time
	lastExit      string
	// lastExitAt is when the slot's worker last exited; crashed says the exit was a crash.
	lastExitAt time.Time
	crashed    bool
	// retiring slots are beyond the desired worker count: their worker drains and none replaces it.
	retiring bool
	// recycleFailures counts the recycling replacements in a row that did not become ready, and
	// recycleAfter is when the slot's worker may be recycled again after one.
	recycleFailures int
	recycleAfter    time.Time
}

// inBackoff reports whether the slot waits to respawn after consecutive crashes.
func (s *slot) inBackoff() bool { return s.worker == nil && !s.nextSpawn.IsZero() }

// empty reports whether the slot has no process and none coming.
func (s *slot) empty() bool {
	return s.worker == nil && s.next == nil && s.nextSpawn.IsZero() && s.awaitTemplate.IsZero()
}
