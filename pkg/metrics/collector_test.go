package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The label pairs kept between scrapes follow the workers: a worker gone is gone from the cache
// and from the exposition, and one still there shows its new values under the kept labels.
func TestLabelCacheFollowsTheWorkers(t *testing.T) {
	start := time.Unix(1700000000, 0)
	worker := func(index int, requests uint64) Worker {
		return Worker{Index: index, Generation: 1, Role: RoleWorker, State: "ready", StartedAt: start, Requests: requests}
	}
	snap := Snapshot{Version: "test", Mode: "exec", Generation: 1, Desired: 2, Workers: []Worker{worker(0, 5), worker(1, 7)}}
	c := newClusterCollector(SourceFunc(func() Snapshot { return snap }))
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(c))
	requests := func() map[string]float64 {
		families, err := reg.Gather()
		require.NoError(t, err)
		got := map[string]float64{}
		for _, f := range families {
			if f.GetName() != "forkd_worker_requests_total" {
				continue
			}
			for _, m := range f.GetMetric() {
				var index string
				for _, l := range m.GetLabel() {
					if l.GetName() == "index" {
						index = l.GetValue()
					}
				}
				got[index] = m.GetCounter().GetValue()
			}
		}
		return got
	}

	assert.Equal(t, map[string]float64{"0": 5, "1": 7}, requests())
	assert.Len(t, c.labels.workers, 2)
	snap.Workers = []Worker{worker(0, 9)}
	assert.Equal(t, map[string]float64{"0": 9}, requests(), "worker 1 gone, worker 0's new count")
	assert.Len(t, c.labels.workers, 1, "worker 1's labels forgotten")
}
