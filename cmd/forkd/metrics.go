package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/forkd/forkd/internal/memsample"
	"github.com/forkd/forkd/internal/supervisor"
	"github.com/forkd/forkd/pkg/activation"
	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/config"
	"github.com/forkd/forkd/pkg/control"
	"github.com/forkd/forkd/pkg/metrics"
)

// This file is what the master tells a monitoring system: the workers' memory, sampled on a
// schedule of its own (internal/memsample), and the Prometheus metrics (pkg/metrics), served on
// the control socket and, when metrics.listen says so, on a socket of their own.

// loopTimeout bounds a question to the master's loop from a sample or a scrape: longer only
// while the master is stalled, when the scrape fails rather than waits.
const loopTimeout = 5 * time.Second

// workerPIDs lists the processes of the driver's workers, for the memory sampler.
func workerPIDs(driver *supervisor.Driver) func(context.Context) ([]int, error) {
	return func(ctx context.Context) ([]int, error) {
		ctx, cancel := context.WithTimeout(ctx, loopTimeout)
		defer cancel()
		st, err := driver.Status(ctx)
		if err != nil {
			return nil, err
		}
		pids := make([]int, 0, len(st.Workers))
		for _, w := range st.Workers {
			if w.PID != 0 {
				pids = append(pids, w.PID)
			}
		}
		return pids, nil
	}
}

// metricsSource is the cluster as a scrape sees it: the control API's status, which is served
// from the master's state and its last memory sample, and the listeners' accept queues.
type metricsSource struct{ b *backend }

func (s *metricsSource) Snapshot() metrics.Snapshot {
	if s.b == nil {
		return metrics.Snapshot{Err: errors.New("forkd is starting")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), loopTimeout)
	defer cancel()
	st, err := s.b.Status(ctx)
	if err != nil {
		return metrics.Snapshot{Err: err}
	}
	snap := metrics.FromStatus(st, st.Version)
	for i := range snap.Listeners {
		l := &snap.Listeners[i]
		for _, bound := range s.b.listeners {
			if bound.Name != l.Name {
				continue
			}
			if backlog, err := metrics.ReadBacklog(bound.FD); err == nil {
				l.Backlog = &backlog
			}
			break
		}
	}
	return snap
}

// metricsServer serves /metrics on metrics.listen.
type metricsServer struct {
	http *http.Server
	// file is the unix socket's path, removed when the server closes; "" for tcp and abstract
	// sockets.
	file string
}

// serveMetrics binds cfg's metrics.listen and serves h there, at /metrics. It returns nil, and no
// error, when the config names no listener.
func serveMetrics(cfg config.Metrics, h http.Handler, logger *slog.Logger) (*metricsServer, error) {
	if !cfg.Enabled() {
		return nil, nil
	}
	bound, err := activation.Bind([]activation.Spec{{Name: "metrics", Network: cfg.Network, Address: cfg.Address}})
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", cfg.URL(), errors.Unwrap(err))
	}
	// FileListener dups the descriptor; closing the File closes the original.
	f := os.NewFile(uintptr(bound[0].FD), "metrics")
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", cfg.URL(), err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	s := &metricsServer{http: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}}
	if cfg.Network == "unix" && cfg.Address[0] != '@' {
		s.file = cfg.Address
	}
	go s.http.Serve(l)
	logger.Info("serving metrics on "+bound[0].Network+"://"+bound[0].Address+"/metrics", "event", "metrics-listening")
	return s, nil
}

// Close stops the server at once: a scrape in flight is of no use to anyone once forkd exits.
func (s *metricsServer) Close() {
	if s == nil {
		return
	}
	s.http.Close()
	if s.file != "" {
		os.Remove(s.file)
	}
}

// observers hands what the machine records to each of them, in order.
type observers []supervisor.Observer

func (os observers) Observe(at time.Time, what cluster.Happening) {
	for _, o := range os {
		o.Observe(at, what)
	}
}

// observability is the master's account to a monitoring system: the memory sampler, and the
// metrics, which count what the machine records (it is the driver's Observer) and read the rest
// from the backend at each scrape.
type observability struct {
	metrics *metrics.Metrics
	memory  *memsample.Sampler
	// source reads the backend, which exists only once the driver does.
	source metricsSource
	stop   func()
}

// newObservability makes the metrics and the sampler for cfg, before the driver they observe.
func newObservability(cfg *config.Config) *observability {
	o := &observability{memory: &memsample.Sampler{Interval: cfg.Memory.SampleInterval}}
	o.metrics = metrics.New(&o.source)
	return o
}

// Observe counts what the machine records, from the driver's loop: it only adds to counters.
func (o *observability) Observe(_ time.Time, what cluster.Happening) {
	switch h := what.(type) {
	case cluster.WorkerReady:
		path := metrics.PathExec
		if h.Forked {
			path = metrics.PathFork
		}
		o.metrics.WorkerReady(path, h.Boot)
		// The worker has loaded the app: a sample soon shows it as it serves.
		o.memory.Wake()
	case cluster.WorkerExited:
		o.metrics.WorkerExited(metricsExitReason(h.Reason))
	case cluster.RolloutEnded:
		o.metrics.RolloutEnded(rolloutKind(h.Kind), rolloutResult(h.Err), h.Duration)
	case cluster.NotifyDropped:
		o.metrics.NotifyDropped(h.Reason.String(), h.Count) // the metrics name the reasons as the machine does
	}
}

// start begins sampling b's workers and serving the metrics, and returns the control server's
// option that serves them at /metrics. After a hot restart (restarted), a metrics listener that
// cannot be bound is logged, not fatal: the workers keep serving.
func (o *observability) start(cfg *config.Config, b *backend, logger *slog.Logger, restarted bool) (control.Option, error) {
	o.source.b = b
	b.memory = o.memory
	o.memory.PIDs = workerPIDs(b.driver)
	ctx, cancel := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() { o.memory.Run(ctx); close(sampled) }()

	srv, err := serveMetrics(cfg.Metrics, o.metrics.Handler(), logger)
	if err != nil && !restarted {
		cancel()
		<-sampled
		return nil, err
	}
	if err != nil {
		logger.Warn(startupMessage(err)+"; /metrics is served on the control socket only", "event", "metrics-unavailable")
	}
	o.stop = func() {
		srv.Close()
		cancel()
		<-sampled
	}
	return control.WithHandler("/metrics", o.metrics.Handler()), nil
}

// Close stops what start began.
func (o *observability) Close() {
	if o.stop != nil {
		o.stop()
	}
}

// metricsExitReason is forkd_worker_exits_total's reason for the machine's: the events' name
// (events.go), but a worker that recycled itself (STOPPING=1, then exit 0) stopped as planned.
// The reasons the families have no label of their own for (a kill after timeouts.shutdown, or for
// WATCHDOG=trigger) count as other.
func metricsExitReason(r cluster.ExitReason) string {
	switch r {
	case cluster.ExitRecycled, cluster.ExitMaxRequests:
		return metrics.ExitStopped // planned: the worker was replaced as it should be
	case cluster.ExitMemoryLimit:
		return metrics.ExitMemoryLimit
	}
	return exitReason(r)
}

// rolloutResult is how a rollout that ended with err did: aborted when forkd began to stop,
// failed for any other error (a replacement that did not become ready, a config that did not
// load, a hook's veto, a new binary that refused the handover).
func rolloutResult(err error) string {
	switch {
	case err == nil:
		return metrics.ResultSucceeded
	case errors.Is(err, cluster.ErrStopping):
		return metrics.ResultAborted
	}
	return metrics.ResultFailed
}

// masterSettingsChanged lists what a reload found changed in the settings that only a new master
// applies.
func masterSettingsChanged(cfg, running *config.Config) []string {
	var warnings []string
	if cfg.Metrics != running.Metrics {
		now := running.Metrics.URL()
		if now == "" {
			now = "off"
		}
		warnings = append(warnings, fmt.Sprintf("metrics.listen changed: it stays %s until forkd is restarted (forkctl restart)", now))
	}
	if cfg.Memory.SampleInterval != running.Memory.SampleInterval {
		warnings = append(warnings, fmt.Sprintf("memory.sample_interval changed: it stays %s until forkd is restarted (forkctl restart)",
			running.Memory.SampleInterval))
	}
	if cfg.Memory.KSM != running.Memory.KSM {
		// The status's ksm line and the check of ksmd are the master's, made once at its start.
		warnings = append(warnings, fmt.Sprintf("memory.ksm changed: it stays %t until forkd is restarted (forkctl restart)",
			running.Memory.KSM))
	}
	return warnings
}
