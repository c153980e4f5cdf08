// Package config owns forkd's configuration: the HCL file (forkd.hcl(5)), the quick-mode flags that
// stand in for it, the defaults, and validation reported as HCL diagnostics (file:line:col and a
// source snippet). docs/configuration.md lists every option with its default.
//
// A Config returned by Load, LoadFile or Parse is complete: every default is filled in and every field
// has been validated, so the rest of forkd never re-checks it. Problems in a file come back as a
// *DiagnosticsError; Check prints them for "forkd check" and "forkctl check".
package config

import (
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/forkd/forkd/pkg/activation"
)

// ExitConfig is the exit status for a configuration error (EX_CONFIG from sysexits.h). forkd's
// systemd units list it in RestartPreventExitStatus= so a bad config is not restarted in a loop.
const ExitConfig = 78

// Readiness says when a worker counts as ready to serve.
type Readiness string

const (
	// ReadyOnNotify waits for the worker to send READY=1 on NOTIFY_SOCKET (sd_notify(3)).
	ReadyOnNotify Readiness = "notify"
	// ReadyOnStart counts a worker as ready as soon as it has been exec'd, for apps that do not
	// speak sd_notify.
	ReadyOnStart Readiness = "started"
)

// Values of Control.WorkerAccess.
const (
	WorkerAccessNone   = "none"
	WorkerAccessStatus = "status"
	WorkerAccessFull   = "full"
)

// Values of Config.FDStore.
const (
	FDStoreAuto = "auto"
	FDStoreYes  = "yes"
	FDStoreNo   = "no"
)

// Values of Cgroups.Mode.
const (
	CgroupsAuto = "auto"
	CgroupsOn   = "on"
	CgroupsOff  = "off"
)

// Defaults, documented in docs/configuration.md.
const (
	DefaultBootTimeout     = 60 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
	DefaultBackoffMin      = 1 * time.Second
	DefaultBackoffMax      = 30 * time.Second
	DefaultResetAfter      = 30 * time.Second
	DefaultBacklog         = activation.DefaultBacklog
	DefaultForkTimeout     = 10 * time.Second
	DefaultHookTimeout     = 30 * time.Second
	DefaultMaxSurge        = 1
	DefaultMaxUnavailable  = 0
	DefaultSocketMode      = activation.DefaultSocketMode
	// DefaultMemorySampleInterval is memory.sample_interval's default: 64 workers of 250 MB cost
	// the master about 1 % of a core at it (internal/memsample), a small cluster nothing measurable.
	DefaultMemorySampleInterval = 10 * time.Second
	// MinMemorySampleInterval bounds memory.sample_interval from below: each sample walks every
	// worker's page tables.
	MinMemorySampleInterval = time.Second
	// MaxWorkers bounds workers (and forkctl scale) so a typo cannot fork-bomb the machine.
	MaxWorkers = 1024
)

// Config is a complete, validated forkd configuration.
type Config struct {
	// Name identifies this forkd instance in logs and in the default control socket path. It defaults
	// to the config file's base name without extension ("demo" for /etc/forkd/demo.hcl), or "forkd"
	// in quick mode.
	Name string

	// File is the path the config was loaded from, or "" in quick mode.
	File string

	// Command is the application's argv, as written; Command[0] is looked up in PATH (the PATH in Env
	// when Env sets one), or taken relative to Directory when it contains a slash. No shell is
	// involved unless the user writes one. Required.
	Command []string

	// Directory is the worker's working directory. If empty, workers start in forkd's own working
	// directory. A relative path in the file is made absolute against the file's directory, but
	// symlinks are kept: it is resolved each time a worker is spawned, so a deploy that switches a
	// current -> releases/N symlink is picked up by new workers.
	Directory string

	// Env is added to the environment workers inherit from forkd; an entry here wins.
	Env map[string]string

	// Workers is the number of worker processes, 1..MaxWorkers. Defaults to the number of CPUs.
	Workers int

	// Readiness says when a worker counts as ready. Defaults to ReadyOnNotify with a config file
	// or in fork-worker mode, to ReadyOnStart in quick mode.
	Readiness Readiness

	// Listeners are bound by forkd when it is not socket-activated. When systemd passes sockets
	// (LISTEN_FDS), these are ignored and the passed sockets are used instead.
	Listeners []Listener

	Timeouts Timeouts
	Restart  Restart
	// ForkWorker turns on fork-worker mode; nil (no fork_worker block, no --fork-worker) means
	// exec mode.
	ForkWorker *ForkWorker
	Rollout    Rollout
	Recycle    Recycle
	Hooks      Hooks
	Systemd    Systemd
	Notify     Notify
	Control    Control
	Cgroups    Cgroups
	Metrics    Metrics
	Memory     Memory
	Log        Log
}

// DefaultReforkAfter is refork_after when a fork_worker block does not set it: one automatic refork
// once a worker has served 1000 requests, and no more (refork_after = [1000, false]), as Puma's
// fork_worker does: the first refork after a warm-up shares what the warm-up built (code loaded
// lazily, caches, JIT output), later ones gain less and less, and each pauses worker 0 and
// replaces every other worker.
var DefaultReforkAfter = []uint64{1000}

// DefaultReforkAfterRepeats says whether the default refork_after repeats: it does not.
const DefaultReforkAfterRepeats = false

// ForkWorker configures fork-worker mode: worker 0 is the template, the other workers are forked
// from it, and reforks re-fork them from a warmed-up worker 0.
type ForkWorker struct {
	// ReforkAfter lists, for each automatic refork in turn, how many requests the busiest worker
	// serves since the previous one (since the workers were last replaced, for the first). Past
	// the end of the list, the last entry repeats if ReforkAfterRepeats, else automatic reforks
	// stop (the list ends with false in the file). Empty disables automatic reforks. Defaults to
	// DefaultReforkAfter and DefaultReforkAfterRepeats.
	ReforkAfter        []uint64
	ReforkAfterRepeats bool
	// Timeout bounds a fork (the template's reply to a spawn request) and a pause. A worker whose
	// fork times out or fails is exec'd instead. Defaults to DefaultForkTimeout.
	Timeout time.Duration
	// ReforkOnDecay, when set (a refork_on_decay block), also reforks when the forked workers'
	// private memory has grown; nil (the default) does not.
	ReforkOnDecay *ReforkOnDecay
	// WarmUp makes a reload's (or a hot restart's) new template serve alone before the other
	// workers are forked from it; with refork_from = "warmest", one new serving worker serves
	// first, then forks the template the others are forked from. Defaults to
	// DefaultWarmUpRequests and DefaultWarmUpMaxWait; MaxWait zero turns it off.
	WarmUp *WarmUp
	// ReforkFrom says what a refork forks the new workers from. Defaults to DefaultReforkFrom.
	ReforkFrom ReforkFrom
	// ReforkNice is how many nice steps lower the serving workers a refork replaces run while it
	// runs, so that its readying, forks and new workers get the CPU first; 0 leaves them alone.
	// Defaults to DefaultReforkNice.
	ReforkNice int
	// CarryHeapSize carries the heap size an exec'd template reports (Ruby's
	// RUBY_GC_HEAP_INIT_SLOTS, from forkd-rack) to the next template forkd execs: a reload's, a
	// hot restart's. A RUBY_GC_HEAP_INIT* variable in the app's environment wins. Defaults to
	// DefaultCarryHeapSize.
	CarryHeapSize bool
}

// DefaultCarryHeapSize is carry_heap_size when the block does not set it: on, since the next
// template boots faster and its workers copy less of it (docs/fork-safety.md, "Ruby's heap
// pages"), and an operator's own setting wins.
const DefaultCarryHeapSize = true

// DefaultReforkNice is refork_nice when the block does not set it: the lowest priority, with
// which a refork under load comes closest to an idle one (docs/configuration.md has the figures).
const DefaultReforkNice = 19

// ReforkFrom is fork_worker.refork_from.
type ReforkFrom string

const (
	// ReforkFromTemplate: worker 0 serves and is the template, paused while it forks (Puma's
	// fork_worker): a refork copies worker 0's heap as it is.
	ReforkFromTemplate ReforkFrom = "template"
	// ReforkFromWarmest: worker 0 is a template that serves nothing, beside `workers` serving
	// workers; a refork asks the serving worker that served the most to fork a new template (a
	// mold), without pausing it.
	ReforkFromWarmest ReforkFrom = "warmest"
	// DefaultReforkFrom is refork_from when the block does not set it (docs/configuration.md
	// says why).
	DefaultReforkFrom = ReforkFromTemplate
)

// DefaultWarmUpRequests and DefaultWarmUpMaxWait are warm_up's when the config does not set
// them (docs/configuration.md says why): as many requests as the default refork_after's first
// refork waits for, so that the warm-up stands for it, and at most 5 s.
const (
	DefaultWarmUpRequests = 1000
	DefaultWarmUpMaxWait  = 5 * time.Second
)

// WarmUp holds the forks of a new release back until its template has served Requests requests
// (0: none, it waits MaxWait), or MaxWait has passed, whichever comes first; the cluster's
// machine also ends it when no worker reports traffic (cluster.WarmUpIdle). MaxWait zero: none.
type WarmUp struct {
	Requests int
	MaxWait  time.Duration
}

// Defaults of a refork_on_decay block, documented in docs/configuration.md.
const (
	DefaultDecayPrivateGrowth = 64 << 20
	DefaultDecayMinInterval   = 60 * time.Second
	DefaultDecayMaxFruitless  = 2
	// DecayConfirmSamples is how many memory samples in a row must be past the threshold.
	DecayConfirmSamples = 2
)

// ReforkOnDecay starts an automatic refork when the forked workers' private memory
// (Private_Dirty, summed) has grown past what it was right after the workers were last replaced:
// by PrivateGrowth bytes, or to Ratio times it (whichever comes first when both are set).
type ReforkOnDecay struct {
	// PrivateGrowth is in bytes; 0 is unset. Defaults to DefaultDecayPrivateGrowth when Ratio is
	// unset too.
	PrivateGrowth uint64
	// Ratio is above 1; 0 is unset.
	Ratio float64
	// MinInterval is the least time from the end of a rollout to a refork the trigger starts.
	// Defaults to DefaultDecayMinInterval.
	MinInterval time.Duration
	// MaxFruitless is how many reforks in a row that win back less than half the growth that
	// started them stop the trigger (each one doubles the growth the next waits for). Defaults
	// to DefaultDecayMaxFruitless.
	MaxFruitless int
}

// Hooks are commands the master runs at moments of the cluster's life: argv lists, no shell (write
// ["sh", "-c", "..."] for one), started in forkd's working directory with forkd's environment plus
// FORKD_HOOK (the hook's name), FORKD_NAME and the variables each hook lists. A nil list runs
// nothing.
type Hooks struct {
	// BeforeReload runs before a phased restart, with FORKD_GENERATION (the one about to be made);
	// if it fails (non-zero exit, timeout), the reload fails and nothing changes.
	BeforeReload []string
	// AfterReload runs when a phased restart has ended, with FORKD_GENERATION, FORKD_RESULT ("ok"
	// or "failed") and FORKD_ERROR.
	AfterReload []string
	// BeforeRestart runs before a hot restart execs the new binary; if it fails, the restart is
	// refused.
	BeforeRestart []string
	// OnWorkerCrash runs when a worker crashes, with FORKD_WORKER, FORKD_PID, FORKD_GENERATION and
	// FORKD_EXIT (how it ended). At most a few run at once; crashes beyond are only logged.
	OnWorkerCrash []string
	// Timeout bounds each run; the hook is killed after it. Defaults to DefaultHookTimeout.
	Timeout time.Duration
}

// Systemd tunes forkd's use of systemd's service features.
type Systemd struct {
	// FDStore says whether forkd hands the sockets it binds to systemd's file descriptor store:
	// FDStoreAuto (the default) when systemd says the store is enabled ($FDSTORE, systemd 254+),
	// FDStoreYes always under systemd (for earlier versions, with FileDescriptorStoreMax= set),
	// FDStoreNo never.
	FDStore string
	// WatchdogMinReady, when above 0, makes the master ping systemd's watchdog (WatchdogSec=) only
	// while at least this many workers are ready, so that systemd restarts a cluster that stays
	// down; 0 (the default) pings while the master's loop runs, whatever the workers do.
	WatchdogMinReady int
}

// Recycle replaces a worker gracefully (its replacement first, within rollout.max_surge) once it
// has served MaxRequests (plus a jitter of its own in 0..MaxRequestsJitter) or its private memory
// (Private_Dirty, never RSS) has passed MaxPrivate, but not before MinLifetime. Zero values turn
// each off; the zero Recycle (the default) recycles nothing.
type Recycle struct {
	MaxRequests       int
	MaxRequestsJitter int
	MaxPrivate        uint64
	MinLifetime       time.Duration
}

// Rollout shapes reforks and phased restarts as rolling updates.
type Rollout struct {
	// MaxSurge is how many new workers may run above the worker count while their old ones still
	// serve. Defaults to DefaultMaxSurge.
	MaxSurge int
	// MaxUnavailable is how many old workers may stop before their replacements are ready.
	// Defaults to DefaultMaxUnavailable. MaxSurge and MaxUnavailable cannot both be 0.
	MaxUnavailable int
}

// Listener is one socket forkd binds when systemd did not pass any: a listen block, or a --listen
// flag. Its Name is the block's label (listenN for the Nth --listen); a relative unix path in
// Address is made absolute against the config file's directory, or forkd's working directory for
// --listen; Backlog is DefaultBacklog unless given, and Mode DefaultSocketMode for a unix socket
// file (zero for tcp and abstract sockets, which have no file).
type Listener = activation.Spec

// Timeouts bound each stage of a worker's life.
type Timeouts struct {
	// Boot is how long a worker may take from spawn to ready before it is killed and replaced.
	// Defaults to DefaultBootTimeout.
	Boot time.Duration
	// Worker is the heartbeat timeout: a ready worker that sends no WATCHDOG=1 for this long is
	// killed with SIGKILL and replaced. Workers get WATCHDOG_USEC when it is set. Zero (the default)
	// disables heartbeats.
	Worker time.Duration
	// Shutdown is how long a worker may take to exit after SIGTERM before it gets SIGKILL.
	// Defaults to DefaultShutdownTimeout.
	Shutdown time.Duration
}

// Restart is the crash-respawn policy. A slot whose worker crashes is respawned at once the first
// time; further consecutive crashes wait BackoffMin, doubling up to BackoffMax.
type Restart struct {
	BackoffMin time.Duration
	BackoffMax time.Duration
	// ResetAfter: a worker that ran this long is healthy, and its exit does not count as a
	// consecutive crash.
	ResetAfter time.Duration
}

// Notify configures the workers' notify sockets: each worker's NOTIFY_SOCKET is a datagram socket
// the master binds for it, so that a datagram is known by the socket it arrives on.
type Notify struct {
	// Abstract gives workers addresses in the abstract namespace ("@forkd/...") instead of socket
	// files. They need no directory and leave nothing behind, but have no permissions: any local
	// user can send to them (forkd drops what comes from other uids than its own and root), and
	// some sd_notify clients cannot reach them (Debian's ruby-sd-notify 0.1.1, and so Puma 5.6's
	// systemd plugin). Defaults to false.
	Abstract bool
	// Directory is where the master makes its directory of socket files (notify-PID, mode 0700,
	// so only forkd's user and root can send). Defaults to DefaultNotifyDirectory. A relative path
	// is made absolute against the config file's directory.
	Directory string
}

// maxNotifyDirectory bounds Notify.Directory so that every socket in it fits a unix socket address:
// DIR/notify-PID/ID, with a PID of up to 7 digits and a worker ID of up to 10.
const maxNotifyDirectory = 107 - len("/notify-4194304/4294967295")

// DefaultNotifyDirectory returns where the notify sockets go when the config does not say: the
// service's runtime directory under systemd ($RUNTIME_DIRECTORY, set by RuntimeDirectory=; its
// first entry), else the control socket's directory (/run/forkd/NAME for root).
func DefaultNotifyDirectory(controlSocket string) string {
	if dirs := os.Getenv("RUNTIME_DIRECTORY"); dirs != "" {
		if first, _, _ := strings.Cut(dirs, ":"); filepath.IsAbs(first) {
			return first
		}
	}
	return filepath.Dir(controlSocket)
}

// Control configures forkd's control API (used by forkctl).
type Control struct {
	// Socket is the absolute path of the control API's unix socket (mode 0600). Defaults to
	// DefaultControlSocket(Name). A relative path is made absolute against the config file's
	// directory, or forkd's working directory for --socket.
	Socket string
	// WorkerAccess is what forkd's workers, and every process descended from them, may do with the
	// API: WorkerAccessNone (the default) refuses them, WorkerAccessStatus lets them read the
	// status, WorkerAccessFull lets them do anything the operator can. They run as forkd's user,
	// which the socket's mode and the uid check let in.
	WorkerAccess string
}

// Cgroups configures the workers' cgroups (docs/observability.md): where forkd may create them
// (a systemd unit with Delegate=yes, a container with a writable cgroup v2 subtree), each worker
// runs in one of its own, which knows its whole process tree and its exact memory, can be limited
// and killed whole, and tells an OOM kill from other deaths.
type Cgroups struct {
	// Mode is CgroupsAuto (the default: cgroups where forkd may create them, else none, and the
	// status says why), CgroupsOn (forkd refuses to start without them) or CgroupsOff.
	Mode string
	// MemoryMax and MemoryHigh are each worker's memory.max and memory.high in bytes: past
	// MemoryMax the kernel OOM-kills the worker's whole tree, past MemoryHigh it throttles and
	// reclaims. Zero (the default) is no limit. They need the memory controller.
	MemoryMax, MemoryHigh uint64
}

// MinMemoryLimit bounds cgroups.memory_max and memory_high from below: no worker runs in less.
const MinMemoryLimit = 1 << 20

// Metrics configures forkd's Prometheus metrics (docs/observability.md). The control socket
// serves them at /metrics in any case; Listen adds a socket of their own, for a Prometheus server
// to scrape.
type Metrics struct {
	// Network and Address are where forkd serves /metrics over HTTP, from a listen URL
	// ("tcp://127.0.0.1:9090", "unix:///run/forkd/metrics.sock") as net.Listen takes them; a
	// relative unix path is made absolute against the config file's directory. Both empty (the
	// default): no listener of their own.
	Network, Address string
}

// Enabled reports whether the metrics have a listener of their own.
func (m Metrics) Enabled() bool { return m.Network != "" }

// URL returns the listener's address as the config writes it, or "" when there is none.
func (m Metrics) URL() string {
	if !m.Enabled() {
		return ""
	}
	return m.Network + "://" + m.Address
}

// Memory configures how the master reads its workers' memory.
type Memory struct {
	// SampleInterval is how often the master reads every worker's /proc/PID/smaps_rollup; the
	// status and the metrics report the last sample. Defaults to DefaultMemorySampleInterval; at
	// least MinMemorySampleInterval.
	SampleInterval time.Duration
	// KSM opts every worker in to the kernel's same-page merging (prctl PR_SET_MEMORY_MERGE, Linux
	// 6.4+): forkd's shim sets it before it execs the app, and a forked worker inherits it from
	// its template. It merges only while ksmd runs (/sys/kernel/mm/ksm/run). Off by default.
	KSM bool
}

// Log configures forkd's own log records.
type Log struct {
	// Level is "debug", "info" (the default), "warn" or "error".
	Level string
	// Format is "auto" (the default: journald when stderr is the journal stream, text otherwise),
	// "text", "json" or "journal".
	Format string
}
