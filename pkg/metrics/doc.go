// Package metrics is forkd's Prometheus exposition (github.com/prometheus/client_golang): the
// families docs/observability.md lists, named as Prometheus asks (the forkd_ prefix, base units,
// _total, _seconds, _bytes), with the master's own process_ and go_ metrics beside them.
//
// It takes its inputs two ways, so that a scrape costs the master almost nothing and reads no
// /proc of the workers:
//
//   - the cluster's state, as a Snapshot that a Source returns at each scrape: the workers with
//     their state, requests and the memory of the last sample (FromStatus makes one of the
//     control API's status), the listeners with their accept queues (ReadBacklog);
//   - what happened, through the Metrics methods WorkerReady, WorkerExited, RolloutEnded and
//     NotifyDropped, which count and time it (forkd_worker_exits_total,
//     forkd_rollout_duration_seconds, ...).
//
// The master's loop would feed it as:
//
//	m := metrics.New(metrics.SourceFunc(func() metrics.Snapshot { return lastSnapshot.Load() }))
//	http.Handle("/metrics", m.Handler())
//	...
//	m.RolloutEnded(control.RolloutRefork, metrics.ResultSucceeded, time.Since(started))
//
// Label values the package does not know (an exit reason, a drop reason) are counted under
// "other", so that no label grows without bound. Counters start again from zero after a hot
// restart, which Prometheus's rate() and increase() take as a counter reset.
package metrics
