package metrics_test

import (
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"

	"github.com/forkd/forkd/internal/promtest"
	"github.com/forkd/forkd/pkg/control"
	"github.com/forkd/forkd/pkg/metrics"
)

// A real Prometheus scrapes the handler and answers queries for a worker's memory, its requests
// (and their rate, across scrapes that saw them grow) and a refork's duration.
func TestPrometheusScrapesTheHandler(t *testing.T) {
	var mu sync.Mutex
	snap := clusterSnapshot()
	m := metrics.New(metrics.SourceFunc(func() metrics.Snapshot {
		mu.Lock()
		defer mu.Unlock()
		s := snap
		s.Workers = append([]metrics.Worker(nil), snap.Workers...)
		return s
	}))
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()

	prom := promtest.Start(t, promtest.Target{Job: "forkd", Address: strings.TrimPrefix(srv.URL, "http://")})
	prom.WaitUp(t, "forkd")

	prom.WaitFor(t, `forkd_worker_pss_bytes{index="1",generation="4"}`, promtest.Equals(40<<20))
	prom.WaitFor(t, `forkd_worker_requests_total{role="template"}`, promtest.Equals(1500))
	prom.WaitFor(t, `sum(forkd_workers)`, promtest.Equals(4))

	// The template serves 600 more requests; the next scrapes see the counter grow.
	mu.Lock()
	snap.Workers[0].Requests += 600
	mu.Unlock()
	prom.WaitFor(t, `forkd_worker_requests_total{role="template"}`, promtest.Equals(2100))
	prom.WaitFor(t, `increase(forkd_worker_requests_total{role="template"}[1m])`, func(v model.Vector) bool {
		return len(v) == 1 && v[0].Value > 0
	})

	// A refork ends after 12 s; then the rollout is over.
	m.RolloutEnded(control.RolloutRefork, metrics.ResultSucceeded, 12*time.Second)
	mu.Lock()
	snap.Rollout = ""
	mu.Unlock()
	v := prom.WaitFor(t, `forkd_rollout_duration_seconds_sum{kind="refork",result="succeeded"}
		/ forkd_rollout_duration_seconds_count{kind="refork",result="succeeded"}`, promtest.Equals(12))
	assert.Equal(t, model.LabelValue("forkd"), v[0].Metric["job"])
	prom.WaitFor(t, `sum(forkd_rollout_in_progress)`, promtest.Equals(0))
}
