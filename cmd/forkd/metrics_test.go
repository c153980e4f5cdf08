package main

import (
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/config"
)

// What the machine records reaches the metrics' counters under their labels.
func TestObserveCountsWhatTheMachineRecords(t *testing.T) {
	o := newObservability(&config.Config{Memory: config.Memory{SampleInterval: time.Minute}})
	now := time.Now()
	for _, h := range []cluster.Happening{
		cluster.WorkerSpawned{Slot: 1, Generation: 1, PID: 10},
		cluster.WorkerReady{Slot: 1, Generation: 1, PID: 10, Forked: true, Boot: 40 * time.Millisecond},
		cluster.WorkerReady{Slot: 0, Generation: 1, PID: 9, Boot: 2 * time.Second},
		cluster.WorkerExited{Slot: 1, PID: 10, Reason: cluster.ExitCrash},
		cluster.WorkerExited{Slot: 1, PID: 11, Reason: cluster.ExitHeartbeatTimeout},
		cluster.WorkerExited{Slot: 1, PID: 12, Reason: cluster.ExitBootTimeout},
		cluster.WorkerExited{Slot: 1, PID: 13, Reason: cluster.ExitRecycled},
		cluster.WorkerExited{Slot: 1, PID: 14, Reason: cluster.ExitShutdownTimeout},
		cluster.RolloutEnded{Kind: cluster.KindRefork, Generation: 2, Duration: 12 * time.Second},
		cluster.RolloutEnded{Kind: cluster.KindReload, Generation: 2, Err: fmt.Errorf("%w: worker 1 did not become ready", cluster.ErrRolloutFailed)},
		cluster.RolloutEnded{Kind: cluster.KindRestart, Generation: 3, Err: cluster.ErrStopping},
	} {
		o.Observe(now, h)
	}
	// Each reason the driver tells apart counts under a label of its own: reason i, i+1 times.
	for i, reason := range cluster.DropReasons() {
		o.Observe(now, cluster.NotifyDropped{Reason: reason, Count: uint64(i + 1)})
	}
	o.Observe(now, cluster.NotifyDropped{Reason: cluster.DropRateLimited, Count: 500})
	w := httptest.NewRecorder()
	o.metrics.Handler().ServeHTTP(w, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(w.Result().Body)
	text := string(body)
	for _, want := range []string{
		`forkd_worker_spawn_to_ready_seconds_count{path="fork"} 1`,
		`forkd_worker_spawn_to_ready_seconds_count{path="exec"} 1`,
		`forkd_worker_spawn_to_ready_seconds_sum{path="exec"} 2`,
		`forkd_worker_exits_total{reason="crash"} 1`,
		`forkd_worker_exits_total{reason="heartbeat_timeout"} 1`,
		`forkd_worker_exits_total{reason="boot_timeout"} 1`,
		`forkd_worker_exits_total{reason="stopped"} 1`,
		`forkd_worker_exits_total{reason="other"} 1`,
		`forkd_rollout_duration_seconds_sum{kind="refork",result="succeeded"} 12`,
		`forkd_rollout_duration_seconds_count{kind="reload",result="failed"} 1`,
		`forkd_rollout_duration_seconds_count{kind="restart",result="aborted"} 1`,
		`forkd_notify_dropped_total{reason="refused_uid"} 1`,
		`forkd_notify_dropped_total{reason="rate_limited"} 502`,
		`forkd_notify_dropped_total{reason="oversize"} 3`,
		`forkd_notify_dropped_total{reason="unknown_sender"} 4`,
		`forkd_notify_dropped_total{reason="sender_exited"} 5`,
		`forkd_notify_dropped_total{reason="unparsable"} 6`,
	} {
		assert.Contains(t, text, want)
	}
	// Before the backend exists, a scrape fails the cluster's families instead of showing an
	// empty cluster.
	assert.NotContains(t, text, "forkd_workers{")
	assert.Equal(t, "failed", rolloutResult(errors.New("cluster: before_reload hook failed")))
}
