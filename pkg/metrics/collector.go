package metrics

import (
	"strconv"
	"sync"

	"github.com/forkd/forkd/pkg/control"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// workerStates are the states forkd_workers always reports, at zero when no worker is in one.
var workerStates = []string{control.WorkerSpawning, control.WorkerBooting, control.WorkerReady, control.WorkerStopping, control.WorkerBackoff}

// workerLabels name one worker process: its slot, its generation, its role.
var workerLabels = []string{"index", "generation", "role"}

// clusterCollector turns a Snapshot into the cluster's families at each scrape (a collector of
// constant metrics, as exporters of another system's state are written), so that a worker that
// is gone is gone from the next one. Only the label pairs of the workers' series are kept from
// one scrape to the next (labels), for the workers still there.
type clusterCollector struct {
	source Source
	labels labelCache

	info, generation, desired, workers, rolloutInProgress, cgroups, sampledAt *prometheus.Desc

	requests, startTime, restarts, busy               *prometheus.Desc
	rss, pss, shared, private                         *prometheus.Desc
	cgroupCurrent, cgroupStat                         *prometheus.Desc
	ksmMerging, ksmRmapItems, ksmProfit               *prometheus.Desc
	listenerInfo, listenerBacklog, listenerBacklogMax *prometheus.Desc
}

func newClusterCollector(source Source) *clusterCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	w := func(name, help string) *prometheus.Desc { return d(name, help, workerLabels...) }
	return &clusterCollector{
		source:             source,
		info:               d("forkd_info", "forkd's version and worker mode (exec or fork); always 1.", "version", "mode"),
		generation:         d("forkd_generation", "The cluster's generation: 1, then one more per rollout."),
		desired:            d("forkd_workers_desired", "The number of workers asked for."),
		workers:            d("forkd_workers", "Worker processes by state (backoff: slots waiting to respawn after crashes); a mold, which serves nothing, is not counted.", "state"),
		rolloutInProgress:  d("forkd_rollout_in_progress", "1 while a rollout of this kind runs.", "kind"),
		cgroups:            d("forkd_cgroups_enabled", "1 when every worker has a cgroup of its own."),
		sampledAt:          d("forkd_memory_sample_timestamp_seconds", "When the workers' memory figures were last read (Unix time)."),
		requests:           w("forkd_worker_requests_total", "Requests the worker has served, as it reports them (X_FORKD_REQUESTS)."),
		startTime:          w("forkd_worker_start_time_seconds", "When the worker process was spawned (Unix time)."),
		restarts:           d("forkd_worker_restarts_total", "Respawns of the slot after a crash.", "index"),
		busy:               w("forkd_worker_busy_threads", "The worker's threads serving a request, where its runner reports them (X_FORKD_BUSY)."),
		rss:                w("forkd_worker_rss_bytes", "The worker's resident memory (smaps_rollup Rss)."),
		pss:                w("forkd_worker_pss_bytes", "The worker's proportional share of memory (smaps_rollup Pss): the workers' sum is what the cluster uses."),
		shared:             w("forkd_worker_shared_bytes", "The worker's resident memory shared with other processes (Shared_Clean + Shared_Dirty)."),
		private:            w("forkd_worker_private_bytes", "The worker's resident memory no other process shares (Rss - Shared)."),
		cgroupCurrent:      w("forkd_worker_cgroup_memory_bytes", "Memory charged to the worker's cgroup (memory.current)."),
		ksmMerging:         w("forkd_worker_ksm_merging_pages", "The worker's pages the kernel's ksmd merged with identical ones (ksm_merging_pages); where the kernel has /proc/PID/ksm_stat."),
		ksmRmapItems:       w("forkd_worker_ksm_rmap_items", "The worker's pages ksmd tracks (ksm_rmap_items), each at a cost in kernel memory."),
		ksmProfit:          w("forkd_worker_ksm_profit_bytes", "What KSM saved on the worker, less what tracking its pages cost (ksm_process_profit); may be negative."),
		cgroupStat:         d("forkd_worker_cgroup_memory_stat_bytes", "Parts of the worker cgroup's memory (memory.stat): anon, file, shmem, kernel.", append(workerLabels, "type")...),
		listenerInfo:       d("forkd_listener_info", "A socket the workers accept on; always 1.", "listener", "address"),
		listenerBacklog:    d("forkd_listener_backlog", "Connections in the listener's accept queue that no worker has accepted yet.", "listener"),
		listenerBacklogMax: d("forkd_listener_backlog_limit", "How many connections the listener's accept queue holds before the kernel drops or refuses more.", "listener"),
	}
}

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.info, c.generation, c.desired, c.workers, c.rolloutInProgress, c.cgroups, c.sampledAt,
		c.requests, c.startTime, c.restarts, c.busy, c.rss, c.pss, c.shared, c.private, c.ksmMerging, c.ksmRmapItems, c.ksmProfit,
		c.cgroupCurrent, c.cgroupStat, c.listenerInfo, c.listenerBacklog, c.listenerBacklogMax,
	} {
		ch <- d
	}
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.source.Snapshot()
	if s.Err != nil {
		ch <- prometheus.NewInvalidMetric(c.workers, s.Err)
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}

	gauge(c.info, 1, s.Version, s.Mode)
	gauge(c.generation, float64(s.Generation))
	gauge(c.desired, float64(s.Desired))
	gauge(c.cgroups, boolValue(s.Cgroups))
	for _, k := range rolloutKinds {
		gauge(c.rolloutInProgress, boolValue(s.Rollout == k), k)
	}
	if !s.MemorySampledAt.IsZero() {
		gauge(c.sampledAt, float64(s.MemorySampledAt.UnixNano())/1e9)
	}

	byState := make(map[string]int, len(workerStates))
	for _, st := range workerStates {
		byState[st] = 0
	}
	restarts := make(map[int]int)
	seen := make(map[[3]string]bool, len(s.Workers))
	for _, w := range s.Workers {
		if w.Role != RoleMold {
			byState[w.State]++
		}
		restarts[w.Index] = max(restarts[w.Index], w.Restarts)
		if w.StartedAt.IsZero() {
			continue // a slot without a process
		}
		labels := [3]string{strconv.Itoa(w.Index), strconv.Itoa(w.Generation), w.Role}
		if seen[labels] {
			continue // two processes that look alike: the first one speaks for both
		}
		seen[labels] = true
		pairs := c.labels.worker(c.requests, labels)
		workerGauge := func(d *prometheus.Desc, v float64) { ch <- series{desc: d, labels: pairs, value: v} }
		ch <- series{desc: c.requests, labels: pairs, value: float64(w.Requests), counter: true}
		workerGauge(c.startTime, float64(w.StartedAt.UnixNano())/1e9)
		if w.BusyThreads != nil {
			workerGauge(c.busy, float64(*w.BusyThreads))
		}
		if m := w.Memory; m != nil {
			workerGauge(c.rss, float64(m.RSS))
			workerGauge(c.pss, float64(m.PSS))
			workerGauge(c.shared, float64(m.Shared))
			workerGauge(c.private, float64(m.Private))
			if k := m.KSM; k != nil {
				workerGauge(c.ksmMerging, float64(k.MergingPages))
				workerGauge(c.ksmRmapItems, float64(k.RmapItems))
				workerGauge(c.ksmProfit, float64(k.Profit))
			}
		}
		if m := w.Cgroup; m != nil {
			workerGauge(c.cgroupCurrent, float64(m.Current))
			for _, part := range []struct {
				name  string
				bytes uint64
			}{{"anon", m.Anon}, {"file", m.File}, {"shmem", m.Shmem}, {"kernel", m.Kernel}} {
				gauge(c.cgroupStat, float64(part.bytes), append(labels[:], part.name)...)
			}
		}
	}
	c.labels.keep(seen)
	for st, n := range byState {
		gauge(c.workers, float64(n), st)
	}
	for index, n := range restarts {
		counter(c.restarts, float64(n), strconv.Itoa(index))
	}
	for _, l := range s.Listeners {
		gauge(c.listenerInfo, 1, l.Name, l.Address)
		if b := l.Backlog; b != nil {
			gauge(c.listenerBacklog, float64(b.Queued), l.Name)
			gauge(c.listenerBacklogMax, float64(b.Limit), l.Name)
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// series is one sample of a worker's family: a constant metric whose label pairs come from the
// labelCache, where MustNewConstMetric makes them anew for every series of every scrape (a fifth
// of the master's CPU for a scrape of 64 workers, measured with pprof).
type series struct {
	desc    *prometheus.Desc
	labels  []*dto.LabelPair // shared with other series and scrapes: never changed
	value   float64
	counter bool
}

func (s series) Desc() *prometheus.Desc { return s.desc }

func (s series) Write(out *dto.Metric) error {
	v := s.value
	out.Label = s.labels
	if s.counter {
		out.Counter = &dto.Counter{Value: &v}
	} else {
		out.Gauge = &dto.Gauge{Value: &v}
	}
	return nil
}

// labelCache keeps the label pairs of each worker's series (every family of a worker has the
// same labels: workerLabels) from one scrape to the next. Scrapes may run at once.
type labelCache struct {
	mu      sync.Mutex
	workers map[[3]string][]*dto.LabelPair
}

// worker returns the label pairs of the worker labelled values, made for desc (any of the
// families with workerLabels) the first time.
func (c *labelCache) worker(desc *prometheus.Desc, values [3]string) []*dto.LabelPair {
	c.mu.Lock()
	defer c.mu.Unlock()
	pairs, ok := c.workers[values]
	if !ok {
		pairs = prometheus.MakeLabelPairs(desc, values[:])
		if c.workers == nil {
			c.workers = make(map[[3]string][]*dto.LabelPair)
		}
		c.workers[values] = pairs
	}
	return pairs
}

// keep forgets the workers a scrape did not see: they are gone.
func (c *labelCache) keep(seen map[[3]string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for values := range c.workers {
		if !seen[values] {
			delete(c.workers, values)
		}
	}
}
