package metrics

import (
	"net/http"
	"time"

	"github.com/forkd/forkd/pkg/control"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Why a worker exited, in WorkerExited and the reason label of forkd_worker_exits_total. Those
// the control API's events report too are its own values (control.Exit*).
const (
	// ExitStopped is an exit forkd asked for: a stop, a scale down, a rollout's old worker.
	ExitStopped = control.ExitStopped
	// ExitCrash is an exit on the worker's own account: an exit status, or a signal forkd did
	// not send.
	ExitCrash = control.ExitCrash
	// ExitBootTimeout, ExitHeartbeatTimeout and ExitMemoryLimit are kills by forkd: no READY=1
	// in time, no heartbeat (WATCHDOG=1) in time, above the memory limit forkd enforces.
	ExitBootTimeout      = control.ExitBootTimeout
	ExitHeartbeatTimeout = control.ExitHeartbeatTimeout
	ExitMemoryLimit      = "memory_limit"
	// ExitOOM is a kill by the kernel's OOM killer in the worker's cgroup (memory.events).
	ExitOOM = "oom"
	// ExitOther is any reason this package does not know, so that a label never grows unbounded.
	ExitOther = "other"
)

// How a worker was started, in WorkerReady and the path label: the control API's values.
const (
	PathFork = control.PathFork
	PathExec = control.PathExec
)

// How a rollout ended, in RolloutEnded and the result label: the control API's values.
const (
	ResultSucceeded = control.ResultSucceeded
	// ResultFailed is a rollout a replacement failed (the old workers kept serving).
	ResultFailed = control.ResultFailed
	// ResultAborted is a rollout ended by something else: a stop, a reload superseding a refork.
	ResultAborted = control.ResultAborted
)

// Why a notify datagram was dropped, in NotifyDropped and the reason label: the names of
// cluster.DropReason's values.
const (
	// DropRefusedUID is a datagram from a uid that is neither root's nor forkd's.
	DropRefusedUID = "refused_uid"
	// DropRateLimited is one from a process that is not a worker, over the rate at which forkd
	// traces such senders.
	DropRateLimited = "rate_limited"
	// DropOversize is one larger than the largest notification forkd reads.
	DropOversize = "oversize"
	// DropUnknownSender is one from a process that is neither a worker nor one of its descendants.
	DropUnknownSender = "unknown_sender"
	// DropSenderExited is one whose sender exited before forkd could tell whose it is.
	DropSenderExited = "sender_exited"
	// DropUnparsable is one that is not sd_notify's KEY=VALUE lines, or has a bad value.
	DropUnparsable = "unparsable"
)

var (
	exitReasons   = []string{ExitStopped, ExitCrash, ExitBootTimeout, ExitHeartbeatTimeout, ExitMemoryLimit, ExitOOM, ExitOther}
	spawnPaths    = []string{PathFork, PathExec}
	rolloutKinds  = []string{control.RolloutRefork, control.RolloutReload, control.RolloutRestart}
	results       = []string{ResultSucceeded, ResultFailed, ResultAborted}
	dropReasons   = []string{DropRefusedUID, DropRateLimited, DropOversize, DropUnknownSender, DropSenderExited, DropUnparsable}
	rolloutBucket = []float64{1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800}
	readyBucket   = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
)

// Metrics is forkd's Prometheus exposition: the cluster families read from a Source at each
// scrape, the counters and histograms of what happened (fed by the WorkerReady, WorkerExited,
// RolloutEnded and NotifyDropped methods, which any goroutine may call), and the master's own
// process and Go runtime metrics.
type Metrics struct {
	registry     *prometheus.Registry
	exits        *prometheus.CounterVec
	spawnToReady *prometheus.HistogramVec
	rollouts     *prometheus.HistogramVec
	dropped      *prometheus.CounterVec
}

// New returns forkd's metrics, reading the cluster from source at each scrape.
func New(source Source) *Metrics {
	m := &Metrics{
		registry: prometheus.NewRegistry(),
		exits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forkd_worker_exits_total",
			Help: "Worker processes that exited, by reason: stopped (forkd asked), crash, boot_timeout, heartbeat_timeout, memory_limit, oom.",
		}, []string{"reason"}),
		spawnToReady: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "forkd_worker_spawn_to_ready_seconds",
			Help:    "Time from a worker's spawn to its READY=1, by path: fork (from the template) or exec.",
			Buckets: readyBucket,
		}, []string{"path"}),
		rollouts: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "forkd_rollout_duration_seconds",
			Help:    "Duration of the rollouts that ended (refork, reload, restart), by result; _count counts them.",
			Buckets: rolloutBucket,
		}, []string{"kind", "result"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "forkd_notify_dropped_total",
			Help: "sd_notify datagrams dropped, by reason.",
		}, []string{"reason"}),
	}
	// Every series exists from the start, at zero, so that rate() and alerts see the first one.
	for _, r := range exitReasons {
		m.exits.WithLabelValues(r)
	}
	for _, p := range spawnPaths {
		m.spawnToReady.WithLabelValues(p)
	}
	for _, k := range rolloutKinds {
		for _, r := range results {
			m.rollouts.WithLabelValues(k, r)
		}
	}
	for _, r := range dropReasons {
		m.dropped.WithLabelValues(r)
	}
	m.registry.MustRegister(
		m.exits, m.spawnToReady, m.rollouts, m.dropped,
		newClusterCollector(source),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
	)
	return m
}

// Handler serves the metrics in Prometheus's text format (or OpenMetrics, when a scraper asks).
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		// A failing collector still lets the others answer.
		ErrorHandling: promhttp.ContinueOnError,
		// Uncompressed: a gzip writer is compress/flate's 800 KB of hash tables, allocated anew by
		// most scrapes (promhttp's pool is emptied by the GCs between two), more than the master's
		// whole live heap, for an exposition of 58 KB with 64 workers.
		DisableCompression: true,
	})
}

// Gatherer is the registry behind Handler, for tests and for serving it elsewhere.
func (m *Metrics) Gatherer() prometheus.Gatherer { return m.registry }

// WorkerReady records a worker's READY=1, spawnToReady after its spawn; path is PathFork or
// PathExec.
func (m *Metrics) WorkerReady(path string, spawnToReady time.Duration) {
	m.spawnToReady.WithLabelValues(known(path, spawnPaths, PathExec)).Observe(spawnToReady.Seconds())
}

// WorkerExited records a worker's exit for reason, one of the Exit* constants.
func (m *Metrics) WorkerExited(reason string) {
	m.exits.WithLabelValues(known(reason, exitReasons, ExitOther)).Inc()
}

// RolloutEnded records the end of a rollout of kind (control.RolloutRefork, RolloutReload,
// RolloutRestart) with result (a Result* constant) after it ran for d. An unknown kind is not
// recorded: the kind label has no catch-all.
func (m *Metrics) RolloutEnded(kind, result string, d time.Duration) {
	if known(kind, rolloutKinds, "") == "" {
		return
	}
	m.rollouts.WithLabelValues(kind, known(result, results, ResultAborted)).Observe(d.Seconds())
}

// NotifyDropped records n dropped notify datagrams, for reason (a Drop* constant). An unknown
// reason is not recorded: the reason label has no catch-all.
func (m *Metrics) NotifyDropped(reason string, n uint64) {
	if known(reason, dropReasons, "") == "" {
		return
	}
	m.dropped.WithLabelValues(reason).Add(float64(n))
}

// known returns v if it is one of values, else fallback.
func known(v string, values []string, fallback string) string {
	for _, k := range values {
		if v == k {
			return v
		}
	}
	return fallback
}
