package metrics

import (
	"errors"
	"strings"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// Snapshot is the cluster as the master last saw it: the state of every worker and the memory of
// its last sample. A scrape reads only a Snapshot, so what it costs the master is the Source's
// copy of what the master already holds, never a read of /proc.
type Snapshot struct {
	// Err, when set, says the cluster could not be read (the master's loop did not answer in
	// time): the scrape then reports the cluster's families as failed, rather than as an empty
	// cluster that would set off alerts. The master's own metrics are still served.
	Err error
	// Version is forkd's version, for forkd_info.
	Version string
	// Mode is control.ModeExec or control.ModeFork.
	Mode string
	// Generation is the cluster's generation; Desired the number of workers asked for.
	Generation, Desired int
	// Rollout is the rollout in progress (control.RolloutRefork, RolloutReload, RolloutRestart),
	// "" when none is.
	Rollout string
	// Cgroups is true when the workers have cgroups of their own (internal/cgroup).
	Cgroups bool
	// MemorySampledAt is when the memory figures were read; zero if they never were.
	MemorySampledAt time.Time
	// Workers lists every worker process, draining and replacement ones included.
	Workers []Worker
	// Listeners lists the sockets the workers accept on.
	Listeners []Listener
}

// Roles of a worker process, in Worker.Role and the role label.
const (
	// RoleTemplate is the worker the others are forked from (fork-worker mode: worker 0).
	RoleTemplate = "template"
	// RoleMold is an idle template forked from a warm worker, which serves nothing.
	RoleMold = "mold"
	// RoleWorker is any other worker.
	RoleWorker = "worker"
)

// Worker is one worker process.
type Worker struct {
	// Index is the worker's slot; Generation the generation it was spawned for.
	Index, Generation int
	// Role is RoleTemplate, RoleMold or RoleWorker.
	Role string
	// State is one of the control.Worker* states; a slot without a process (backing off) is a
	// Worker in control.WorkerBackoff with no StartedAt.
	State string
	// StartedAt is when the process was spawned; zero when there is no process.
	StartedAt time.Time
	// Restarts counts the slot's respawns after a crash.
	Restarts int
	// Requests is the worker's cumulative request count, as it reports it (X_FORKD_REQUESTS=).
	Requests uint64
	// BusyThreads is how many of the worker's threads are serving a request, where the runner
	// says (X_FORKD_BUSY=); nil when it does not.
	BusyThreads *int
	// Memory is the process's memory at the last sample, from /proc/PID/smaps_rollup; nil when
	// there is none.
	Memory *Memory
	// Cgroup is the memory of the worker's cgroup at the last sample; nil without cgroups, or
	// without their memory controller.
	Cgroup *CgroupMemory
}

// Memory is a process's memory in bytes, from /proc/PID/smaps_rollup.
type Memory struct {
	// RSS is every resident page; PSS each resident page divided by the number of processes
	// sharing it; Shared the pages shared with other processes (Shared_Clean + Shared_Dirty),
	// Private the others (RSS - Shared).
	RSS, PSS, Shared, Private uint64
	// KSM is the process's share in the kernel's same-page merging (/proc/PID/ksm_stat); nil
	// where the kernel has none.
	KSM *KSM
}

// KSM is a process's share in the kernel's same-page merging: pages merged, pages tracked, and
// the bytes saved less the tracking's cost.
type KSM struct {
	MergingPages, RmapItems uint64
	Profit                  int64
}

// CgroupMemory is a worker cgroup's memory in bytes (memory.current, memory.stat).
type CgroupMemory struct {
	Current, Anon, File, Shmem, Kernel uint64
}

// Listener is one socket the workers accept on.
type Listener struct {
	// Name is the socket's name in LISTEN_FDNAMES; Address where it listens.
	Name, Address string
	// Backlog is the socket's accept queue; nil when it cannot be read (ReadBacklog).
	Backlog *Backlog
}

// Backlog is a listening socket's accept queue: connections the kernel has accepted and no
// worker has yet, and how many it will hold before it drops or refuses more.
type Backlog struct {
	Queued, Limit uint64
}

// ErrBacklogUnavailable is ReadBacklog's error for a socket whose accept queue Linux does not
// report (neither TCP nor a unix stream socket), or a kernel without sock_diag for unix sockets.
var ErrBacklogUnavailable = errors.New("metrics: listen backlog not available for this socket")

// Source gives a scrape its Snapshot. Snapshot is called once per scrape, from the HTTP
// server's goroutine.
type Source interface {
	Snapshot() Snapshot
}

// SourceFunc is a function that is a Source.
type SourceFunc func() Snapshot

// Snapshot calls f.
func (f SourceFunc) Snapshot() Snapshot { return f() }

// FromStatus makes a Snapshot of what the control API's status reports: the status is served
// from the master's samples (internal/memsample), as a scrape must be, and its cgroup memory is two
// small files per worker. Listener backlogs are not in a status: the caller adds them.
func FromStatus(st control.Status, version string) Snapshot {
	s := Snapshot{
		Version:         version,
		Mode:            st.Mode,
		Generation:      st.Generation,
		Desired:         st.Workers,
		MemorySampledAt: st.MemorySampledAt,
		Cgroups:         strings.HasPrefix(st.Cgroups, "on:"),
		Workers:         make([]Worker, 0, len(st.WorkerList)),
		Listeners:       make([]Listener, 0, len(st.Listeners)),
	}
	if st.Phase == control.PhaseRolling {
		s.Rollout = st.Rollout
	}
	for _, w := range st.WorkerList {
		role := RoleWorker
		if w.Template {
			role = RoleTemplate
		}
		sw := Worker{
			Index: w.Index, Generation: w.Generation, Role: role, State: w.State,
			StartedAt: w.StartedAt, Restarts: w.Restarts, Requests: w.Requests, BusyThreads: w.BusyThreads,
		}
		if m := w.Memory; m != nil {
			sw.Memory = &Memory{RSS: m.RSS, PSS: m.PSS, Shared: m.Shared, Private: m.RSS - min(m.Shared, m.RSS)}
			if k := m.KSM; k != nil {
				sw.Memory.KSM = &KSM{MergingPages: k.MergingPages, RmapItems: k.RmapItems, Profit: k.Profit}
			}
		}
		if m := w.Cgroup; m != nil {
			sw.Cgroup = &CgroupMemory{Current: m.Current, Anon: m.Anon, File: m.File, Shmem: m.Shmem, Kernel: m.Kernel}
		}
		s.Workers = append(s.Workers, sw)
	}
	for _, l := range st.Listeners {
		s.Listeners = append(s.Listeners, Listener{Name: l.Name, Address: l.Address})
	}
	return s
}
