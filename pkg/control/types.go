package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Phases of the master, in Status.Phase.
const (
	PhaseStarting = "starting"
	PhaseRunning  = "running"
	PhaseRolling  = "rolling"
	PhaseStopping = "stopping"
)

// Rollouts, in Status.Rollout while the Phase is PhaseRolling.
const (
	RolloutRefork  = "refork"
	RolloutReload  = "reload"
	RolloutRestart = "restart"
)

// Worker modes, in Status.Mode.
const (
	ModeExec = "exec"
	ModeFork = "fork"
)

// States of a worker slot, in Worker.State. A Backend may report others; clients show them as they
// are.
const (
	WorkerSpawning = "spawning"
	WorkerBooting  = "booting"
	WorkerReady    = "ready"
	WorkerStopping = "stopping"
	// WorkerBackoff is a slot whose worker keeps crashing: it waits until Worker.NextRestart.
	WorkerBackoff = "backoff"
)

// Status is the answer to GET /v1/status: the master and every worker slot.
type Status struct {
	Name      string    `json:"name"`
	Version   string    `json:"version"`
	MasterPID int       `json:"master_pid"`
	StartedAt time.Time `json:"started_at"`
	Uptime    Duration  `json:"uptime"`
	// Phase is one of PhaseStarting, PhaseRunning, PhaseRolling, PhaseStopping.
	Phase string `json:"phase"`
	// Rollout names the operation in progress while Phase is PhaseRolling (one of the Rollout*
	// constants: a refork, a reload, or a hot restart, before its exec or in the phased restart
	// after it); it is empty (and omitted) otherwise.
	Rollout string `json:"rollout,omitempty"`
	// Queued lists the operations asked for that wait for the one in progress, in order (omitted
	// when none does).
	Queued []string `json:"queued,omitempty"`
	// LastRollout says how the last operation ended; nil (omitted) before the first has.
	LastRollout *RolloutResult `json:"last_rollout,omitempty"`
	// Generation is the cluster's generation: 1, then one more per rollout. During a rollout it is
	// the generation the rollout creates.
	Generation int `json:"generation"`
	// Workers is the desired number of workers; Ready how many of them are ready now.
	Workers int `json:"workers"`
	Ready   int `json:"ready"`
	// Mode is ModeExec or ModeFork.
	Mode string `json:"mode"`
	// SocketActivated is true when the listeners came from systemd (LISTEN_FDS) rather than being
	// bound by forkd.
	SocketActivated bool       `json:"socket_activated"`
	Listeners       []Listener `json:"listeners"`
	// DroppedNotifications counts sd_notify datagrams dropped: from processes that are not
	// workers (or from other uids than forkd's and root), or that did not parse.
	DroppedNotifications uint64 `json:"dropped_notifications"`
	// LateNotifications counts datagrams from workers that had exited by the time they were read:
	// sent just before the exit, too late to matter, and not dropped as a stranger's.
	LateNotifications uint64 `json:"late_notifications"`
	// Strays counts the processes forkd started and no longer tracks as workers (orphans, what is
	// left of a worker's process group) that it is stopping.
	Strays int `json:"strays"`
	// StatusLine is what forkd last sent systemd as STATUS=.
	StatusLine string `json:"status_line"`
	// Cgroups says whether the workers have cgroups of their own: "on: DIR (memory, pids)", with
	// forkd's cgroup and the controllers the workers' have (and which are missing, and why), or
	// "off (REASON)", with what keeps forkd from creating them and what to change.
	Cgroups string `json:"cgroups,omitempty"`
	// KSM says whether the workers are opted in to the kernel's same-page merging (memory.ksm):
	// "on", or "on, merging nothing: REASON" while the kernel cannot merge (ksmd stopped, no
	// PR_SET_MEMORY_MERGE), as it stands at the request. Empty (and omitted) with memory.ksm off.
	KSM string `json:"ksm,omitempty"`
	// MemorySampledAt is when the workers' memory (Worker.Memory) was read: the master samples
	// it on its own schedule (memory.sample_interval), not for each request. Zero (and omitted)
	// before the first sample.
	MemorySampledAt time.Time `json:"memory_sampled_at,omitzero"`
	// ReforkOnDecay is the memory refork trigger's state; nil (and omitted) when it is off.
	ReforkOnDecay *DecayTrigger `json:"refork_on_decay,omitempty"`
	// WarmUp is the rollout's warm-up under way (fork_worker.warm_up): a reload's new template
	// serves alone before the others are forked from it. Nil (and omitted) when none runs.
	WarmUp *WarmUp `json:"warm_up,omitempty"`
	// HeapSize is the heap size the last exec'd template reported (fork_worker.carry_heap_size);
	// nil (and omitted) before any did.
	HeapSize   *HeapSize `json:"heap_size,omitempty"`
	WorkerList []Worker  `json:"worker_list"`
}

// HeapSize is a heap size a template reported once its app had loaded: the variable that sizes
// the heap at start and its value (RUBY_GC_HEAP_INIT_SLOTS, 1300000), the generation of that
// template, and whether the next worker 0 forkd execs boots with it (Carried: false when
// fork_worker.carry_heap_size is off or the app's environment sets a RUBY_GC_HEAP_INIT* variable).
type HeapSize struct {
	Variable   string `json:"variable"`
	Value      uint64 `json:"value"`
	Generation int    `json:"generation"`
	Carried    bool   `json:"carried"`
}

// WarmUp is a warm-up under way. The rollout forks the others from the new template once the
// worker counted (Index, PID: the new template) has served Requests since the warm-up began, at
// Until at the latest (max_wait), or at IdleUntil if no worker reports a request before then
// (3 s after the last report: a cluster without traffic has nothing to warm up with).
type WarmUp struct {
	Index int `json:"index"`
	PID   int `json:"pid"`
	// Served is what the worker served since the warm-up began, as it reports it
	// (X_FORKD_REQUESTS=, at most once a second); Requests what the warm-up waits for (0: none,
	// it waits until Until).
	Served    uint64    `json:"served"`
	Requests  uint64    `json:"requests"`
	Until     time.Time `json:"until"`
	IdleUntil time.Time `json:"idle_until"`
	// Mold: the worker warming up is a serving worker (refork_from = "warmest") that forks a mold
	// when the warm-up ends, and the others are forked from the mold.
	Mold bool `json:"mold,omitempty"`
}

// RolloutResult says how an operation (refork, reload, hot restart) ended.
type RolloutResult struct {
	// Seq numbers the operations in the order they were asked for, from 1, across hot restarts.
	Seq int `json:"seq"`
	// Kind is one of the Rollout* constants.
	Kind string `json:"kind"`
	// Generation is the cluster's generation after it: Target when it succeeded, the generation it
	// rolled back to when it failed.
	Generation int `json:"generation"`
	// Target is the generation it rolled out; 0 (omitted) when it did not begin.
	Target int `json:"target,omitempty"`
	// Error is why it failed, or did not begin; empty (and omitted) when it succeeded.
	Error string `json:"error,omitempty"`
}

// Listener is one socket the workers accept on.
type Listener struct {
	// Name is the socket's name in LISTEN_FDNAMES.
	Name string `json:"name"`
	// Address is where it listens, e.g. "tcp://0.0.0.0:8080" or "unix:///run/app.sock".
	Address string `json:"address"`
}

// Worker is one worker slot, or one process of a slot. A slot normally has one entry, but during a
// rollout several entries may share an Index: the slot's current worker and its Replacement, or
// an old worker still draining (Detached) after the slot went to a new one.
type Worker struct {
	Index int `json:"index"`
	// PID is 0 while no process runs in the slot.
	PID        int `json:"pid"`
	Generation int `json:"generation"`
	// State is one of the Worker* constants.
	State string `json:"state"`
	// Template is true for the worker the others are forked from (fork-worker mode: worker 0).
	Template bool `json:"template,omitempty"`
	// Forked is true for a worker the template forked; false for one that was exec'd (every worker
	// in exec mode, and the template itself, unless a mold made it).
	Forked bool `json:"forked,omitempty"`
	// NonServing is true for a process that serves no request: the template with
	// fork_worker.refork_from = "warmest", and its replacement.
	NonServing bool `json:"non_serving,omitempty"`
	// MoldOf, for a template made by a refork from the warmest worker, is the serving worker it
	// was forked from (a mold): nil (and omitted) for an exec'd template.
	MoldOf *MoldSource `json:"mold_of,omitempty"`
	// Replacement is true for a rollout's new worker for this slot while it is not yet ready; the
	// slot's current worker has an entry of its own.
	Replacement bool `json:"replacement,omitempty"`
	// Detached is true for an old worker draining after its slot was given to a new one.
	Detached bool `json:"detached,omitempty"`
	// StartedAt is zero (and omitted) while no process runs in the slot.
	StartedAt time.Time `json:"started_at,omitzero"`
	Uptime    Duration  `json:"uptime"`
	// Restarts counts the slot's respawns after a crash.
	Restarts int `json:"restarts"`
	// StatusLine is the worker's last STATUS=.
	StatusLine string `json:"status_line"`
	// Requests is the worker's cumulative request count, as it reports it (X_FORKD_REQUESTS=).
	Requests uint64 `json:"requests"`
	// BusyThreads is how many of the worker's threads serve a request, as its runner last said
	// (X_FORKD_BUSY=: forkd-rack, forkd.gunicorn); nil (and omitted) when it never did.
	BusyThreads *int `json:"busy_threads,omitempty"`
	// Memory is the process's memory use at the last sample (Status.MemorySampledAt); nil (and
	// omitted) when there is no process, or none that the last sample read (one spawned since).
	Memory *Memory `json:"memory,omitempty"`
	// Cgroup is the memory of the worker's cgroup: its whole process tree's, exact; nil (and
	// omitted) without cgroups or their memory controller (Status.Cgroups says which).
	Cgroup *CgroupMemory `json:"cgroup,omitempty"`
	// LastExit says how the slot's previous process ended, e.g. "exit status 1" or
	// "killed by SIGKILL (heartbeat timeout)"; empty if none has.
	LastExit string `json:"last_exit,omitempty"`
	// NextRestart is when a slot in WorkerBackoff spawns again; zero (and omitted) otherwise.
	NextRestart time.Time `json:"next_restart,omitzero"`
}

// MoldSource is the serving worker a template was forked from, as it was when asked.
type MoldSource struct {
	Index int `json:"index"`
	PID   int `json:"pid"`
	// Requests is how many requests it had served (X_FORKD_REQUESTS=).
	Requests uint64 `json:"requests"`
}

// Memory is a worker process's memory use in bytes, from /proc/PID/smaps_rollup.
type Memory struct {
	// RSS is the resident set size: every page the process has in memory, shared or not.
	RSS uint64 `json:"rss"`
	// PSS is the proportional set size: each resident page divided by the number of processes that
	// share it. The PSS of all workers adds up to what the cluster really uses.
	PSS uint64 `json:"pss"`
	// Shared is the part of RSS shared with other processes, such as the template and the workers
	// forked from it (Shared_Clean + Shared_Dirty).
	Shared uint64 `json:"shared"`
	// PrivateDirty is what the process wrote and shares with no other (Private_Dirty): in
	// fork-worker mode, what copy-on-write copied since the fork, which a refork wins back.
	PrivateDirty uint64 `json:"private_dirty"`
	// KSM is the process's share in the kernel's same-page merging (/proc/PID/ksm_stat); nil (and
	// omitted) when the kernel has no such file.
	KSM *KSM `json:"ksm,omitempty"`
}

// KSM is a process's share in the kernel's same-page merging, from /proc/PID/ksm_stat.
type KSM struct {
	// MergingPages is how many of its pages ksmd merged with identical ones (ksm_merging_pages).
	MergingPages uint64 `json:"merging_pages"`
	// RmapItems is how many of its pages ksmd tracks (ksm_rmap_items), at a cost in kernel memory.
	RmapItems uint64 `json:"rmap_items"`
	// Profit is the bytes merging saved less what tracking cost (ksm_process_profit); it may be
	// negative.
	Profit int64 `json:"profit"`
	// MergeAny is true when the whole process is opted in (PR_SET_MEMORY_MERGE: ksm_merge_any).
	MergeAny bool `json:"merge_any"`
}

// DecayTrigger is the state of fork_worker.refork_on_decay, the refork trigger that watches the
// forked workers' private memory (Private_Dirty, summed over Workers of them).
type DecayTrigger struct {
	// Measured is false until the first sample after the workers were last replaced has set the
	// baseline; the figures below are zero (and omitted) until then.
	Measured bool `json:"measured"`
	// Baseline is the sum right after the workers were last replaced, Current the sum at the
	// last sample, and Ratio Current over Baseline; Threshold is the sum that starts a refork.
	Baseline  uint64  `json:"baseline,omitempty"`
	Current   uint64  `json:"current,omitempty"`
	Ratio     float64 `json:"ratio,omitempty"`
	Threshold uint64  `json:"threshold,omitempty"`
	Workers   int     `json:"workers,omitempty"`
	// Fruitless counts the reforks in a row that won back less than half the growth that started
	// them; Stopped is set once they reached max_fruitless (until the next reload or hot restart).
	Fruitless int  `json:"fruitless"`
	Stopped   bool `json:"stopped,omitempty"`
}

// CgroupMemory is a worker cgroup's memory in bytes, from memory.current and memory.stat. A page
// is charged to the cgroup that first touched it, and stays there: a worker forked from the
// template is charged for what it allocated or copied on write since, the template for what
// they share.
type CgroupMemory struct {
	// Current is everything charged to the cgroup (memory.current).
	Current uint64 `json:"current"`
	// Anon is anonymous memory (heap, stacks, pages copied on write); File is page cache, Shmem
	// included; Kernel the kernel's own for the cgroup (page tables, stacks, slab).
	Anon   uint64 `json:"anon"`
	File   uint64 `json:"file"`
	Shmem  uint64 `json:"shmem"`
	Kernel uint64 `json:"kernel"`
}

// StopRequest is the body of POST /v1/stop.
type StopRequest struct {
	// Immediate skips the drain: workers get SIGKILL instead of SIGTERM and a grace period.
	Immediate bool `json:"immediate"`
	// Wait holds the reply until the workers are gone, just before forkd exits.
	Wait bool `json:"wait"`
}

// ScaleRequest is the body of POST /v1/scale. Exactly one field is set: Workers asks for an
// absolute number, Delta for a change relative to the current one.
type ScaleRequest struct {
	Workers int `json:"workers,omitempty"`
	Delta   int `json:"delta,omitempty"`
}

func (r ScaleRequest) validate() error {
	switch {
	case r.Workers != 0 && r.Delta != 0:
		return errors.New("scale: set either workers or delta, not both")
	case r.Workers == 0 && r.Delta == 0:
		return errors.New("scale: set workers (a positive count) or delta (a non-zero change)")
	case r.Workers < 0:
		return fmt.Errorf("scale: workers must be positive, got %d", r.Workers)
	}
	return nil
}

// ScaleResponse is the reply to POST /v1/scale.
type ScaleResponse struct {
	// Workers is the desired number of workers now; Previous what it was before.
	Workers  int `json:"workers"`
	Previous int `json:"previous"`
}

// ReforkRequest is the body of POST /v1/refork: re-fork workers 1..n-1 from the template (worker
// 0), so that they start from its warmed-up memory again. It needs fork-worker mode.
type ReforkRequest struct {
	// Wait holds the reply until the refork is done (or has failed), not just begun.
	Wait bool `json:"wait"`
}

// ReforkResponse is the reply to POST /v1/refork.
type ReforkResponse struct {
	// Generation is the generation the refork creates (without Wait, while it is queued: the
	// cluster's generation now).
	Generation int `json:"generation"`
	// Queued, without Wait, names the operation in progress that the refork waits for; empty (and
	// omitted) when it has begun.
	Queued string `json:"queued,omitempty"`
}

// ReloadRequest is the body of POST /v1/reload: a phased restart, which replaces every worker, slot
// by slot, with a newly exec'd one, each old worker stopping once its replacement is ready.
type ReloadRequest struct {
	// Wait holds the reply until the reload is done (or has failed), not just begun.
	Wait bool `json:"wait"`
}

// ReloadResponse is the reply to POST /v1/reload.
type ReloadResponse struct {
	// Generation is the generation the reload creates (without Wait, while it is queued: the
	// cluster's generation now).
	Generation int `json:"generation"`
	// Queued, without Wait, names the operation in progress that the reload waits for; empty (and
	// omitted) when it has begun.
	Queued string `json:"queued,omitempty"`
}

// RestartRequest is the body of POST /v1/restart: a hot restart, in which the master re-execs
// itself in place (same PID, same listeners), for instance to run a new forkd binary. The exec
// closes the connection the request came on; see Client.Restart.
type RestartRequest struct {
	// Wait asks for the restart to be done (the new master image running, and, unless
	// KeepWorkers, every worker replaced by one of the new release), not just begun.
	Wait bool `json:"wait"`
	// KeepWorkers upgrades the master only: the new image keeps the running workers as they are.
	// Without it, the new image replaces them by a phased restart, as Puma's hot restart
	// replaces the app.
	KeepWorkers bool `json:"keep_workers,omitempty"`
}

// RestartResponse is the reply to POST /v1/restart.
type RestartResponse struct {
	// Generation is the generation the restart creates; 0 when Client.Restart could not learn it
	// (the exec cut the connection before the reply to a request without Wait).
	Generation int `json:"generation"`
}

// Duration is a time.Duration that JSON encodes as a Go duration string ("1m30s"), so the API
// reads well in `forkctl status -o json | jq` and scripts can still parse it (time.ParseDuration,
// or systemd.time(7), which accepts the same units). Convert with time.Duration(d).
type Duration time.Duration

// String formats d as time.Duration does.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON encodes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON decodes a duration string such as "1m30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("control: a duration must be a string such as \"1m30s\": %w", err)
	}
	parsed, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	*d = Duration(parsed)
	return nil
}
