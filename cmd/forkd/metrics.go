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

// newMemorySampler samples the memory of the driver's workers every interval.
func newMemorySampler(driver *supervisor.Driver, interval time.Duration) *memsample.Sampler {
	return &memsample.Sampler{
		Interval: interval,
		PIDs: func(ctx context.Context) ([]int, error) {
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
		},
	}
}

// metricsSource is the cluster as a scrape sees it: the control API's status, which is served
// from the master's state and its last memory sample, and the listeners' accept queues.
type metricsSource struct{ b *backend }

func (s metricsSource) Snapshot() metrics.Snapshot {
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

// startObservability starts the memory sampler and the metrics of b's cluster, and returns the
// control server's option that serves them at /metrics, and what stops them. After a hot
// restart (restarted), a metrics listener that cannot be bound is logged, not fatal: the workers
// keep serving.
func startObservability(cfg *config.Config, b *backend, logger *slog.Logger, restarted bool) (control.Option, func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	b.memory = newMemorySampler(b.driver, cfg.Memory.SampleInterval)
	sampled := make(chan struct{})
	go func() { b.memory.Run(ctx); close(sampled) }()

	m := metrics.New(metricsSource{b})
	srv, err := serveMetrics(cfg.Metrics, m.Handler(), logger)
	if err != nil && !restarted {
		cancel()
		<-sampled
		return nil, nil, err
	}
	if err != nil {
		logger.Warn(startupMessage(err)+"; /metrics is served on the control socket only", "event", "metrics-unavailable")
	}
	stop := func() {
		srv.Close()
		cancel()
		<-sampled
	}
	return control.WithHandler("/metrics", m.Handler()), stop, nil
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
	if cfg.Memory != running.Memory {
		warnings = append(warnings, fmt.Sprintf("memory.sample_interval changed: it stays %s until forkd is restarted (forkctl restart)",
			running.Memory.SampleInterval))
	}
	return warnings
}
