package metrics_test

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
	"github.com/forkd/forkd/pkg/metrics"
)

var rewrite = flag.Bool("rewrite", false, "rewrite testdata/*.prom from the output")

var (
	t0   = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	busy = 3
)

// clusterSnapshot is a fork-worker cluster in the middle of a refork: the template, a worker of
// the new generation, one of the old one draining, a slot backing off after crashes, and a
// mold; one TCP listener whose backlog is read, one unix listener whose is not.
func clusterSnapshot() metrics.Snapshot {
	return metrics.Snapshot{
		Version: "1.2.3", Mode: control.ModeFork, Generation: 4, Desired: 3,
		Rollout: control.RolloutRefork, Cgroups: true, MemorySampledAt: t0.Add(59 * time.Second),
		Workers: []metrics.Worker{
			{Index: 0, Generation: 3, Role: metrics.RoleTemplate, State: control.WorkerReady, StartedAt: t0,
				Requests: 1500, Memory: &metrics.Memory{RSS: 300 << 20, PSS: 120 << 20, Shared: 250 << 20, Private: 50 << 20},
				Cgroup: &metrics.CgroupMemory{Current: 310 << 20, Anon: 200 << 20, File: 100 << 20, Shmem: 1 << 20, Kernel: 9 << 20}},
			{Index: 1, Generation: 4, Role: metrics.RoleWorker, State: control.WorkerReady, StartedAt: t0.Add(30 * time.Second),
				Requests: 12, BusyThreads: &busy, Memory: &metrics.Memory{RSS: 280 << 20, PSS: 40 << 20, Shared: 270 << 20, Private: 10 << 20,
					KSM: &metrics.KSM{MergingPages: 2560, RmapItems: 4096, Profit: 10<<20 - 4096*64}}},
			{Index: 1, Generation: 3, Role: metrics.RoleWorker, State: control.WorkerStopping, StartedAt: t0.Add(5 * time.Second),
				Requests: 900, Restarts: 1},
			{Index: 2, Generation: 3, Role: metrics.RoleWorker, State: control.WorkerBackoff, Restarts: 5},
			{Index: 0, Generation: 3, Role: metrics.RoleMold, State: control.WorkerReady, StartedAt: t0.Add(20 * time.Second)},
		},
		Listeners: []metrics.Listener{
			{Name: "http", Address: "tcp://0.0.0.0:8080", Backlog: &metrics.Backlog{Queued: 7, Limit: 1024}},
			{Name: "admin", Address: "unix:///run/app/admin.sock"},
		},
	}
}

// recordSome feeds the counters and histograms a little history.
func recordSome(m *metrics.Metrics) {
	m.WorkerReady(metrics.PathExec, 2500*time.Millisecond)
	m.WorkerReady(metrics.PathFork, 40*time.Millisecond)
	m.WorkerReady(metrics.PathFork, 60*time.Millisecond)
	m.WorkerExited(metrics.ExitCrash)
	m.WorkerExited(metrics.ExitCrash)
	m.WorkerExited(metrics.ExitHeartbeatTimeout)
	m.WorkerExited(metrics.ExitStopped)
	m.WorkerExited("cosmic rays") // counted as other
	m.RolloutEnded(control.RolloutRefork, metrics.ResultSucceeded, 12*time.Second)
	m.RolloutEnded(control.RolloutReload, metrics.ResultFailed, 95*time.Second)
	m.RolloutEnded("sideways", metrics.ResultSucceeded, time.Second) // not recorded
	m.NotifyDropped(metrics.DropUnknownSender, 1)
}

// forkdFamilies is the text exposition of m's forkd_ families alone (the process and Go ones
// change from run to run).
func forkdFamilies(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	families, err := m.Gatherer().Gather()
	require.NoError(t, err)
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "forkd_") {
			require.NoError(t, enc.Encode(f))
		}
	}
	return b.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	file := filepath.Join("testdata", name)
	if *rewrite {
		require.NoError(t, os.WriteFile(file, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(file)
	require.NoError(t, err, "run go test ./pkg/metrics -rewrite to create it")
	assert.Equal(t, string(want), got, "the exposition changed: if on purpose, go test ./pkg/metrics -run %s -rewrite", t.Name())
}

func TestExposition(t *testing.T) {
	m := metrics.New(metrics.SourceFunc(clusterSnapshot))
	recordSome(m)
	golden(t, "cluster.prom", forkdFamilies(t, m))
}

// An idle master that has seen nothing yet still shows every counter, at zero.
func TestExpositionAtStart(t *testing.T) {
	m := metrics.New(metrics.SourceFunc(func() metrics.Snapshot {
		return metrics.Snapshot{Version: "dev", Mode: control.ModeExec, Generation: 1}
	}))
	golden(t, "start.prom", forkdFamilies(t, m))
}

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// promtool, Prometheus's own checker, finds nothing to say about the whole exposition: names,
// units, suffixes, help texts, the process and Go families included.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian: apt-get install prometheus)")
	}
	m := metrics.New(metrics.SourceFunc(clusterSnapshot))
	recordSome(m)
	text := scrape(t, m)
	require.Contains(t, text, "process_cpu_seconds_total")
	require.Contains(t, text, "go_goroutines")
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	assert.NoError(t, err, "promtool check metrics:\n%s", out)
	assert.Empty(t, strings.TrimSpace(string(out)))
}

// Two processes with the same labels (which forkd should never report) do not make the scrape
// fail: the first one speaks for both.
func TestDuplicateWorkersDoNotBreakTheScrape(t *testing.T) {
	m := metrics.New(metrics.SourceFunc(func() metrics.Snapshot {
		w := metrics.Worker{Index: 1, Generation: 2, Role: metrics.RoleWorker, State: control.WorkerReady, StartedAt: t0, Requests: 5}
		twin := w
		twin.Requests = 9
		return metrics.Snapshot{Mode: control.ModeExec, Workers: []metrics.Worker{w, twin}}
	}))
	text := scrape(t, m)
	assert.Contains(t, text, `forkd_worker_requests_total{generation="2",index="1",role="worker"} 5`)
	assert.Contains(t, text, `forkd_workers{state="ready"} 2`)
}

// A cluster that cannot be read fails its families, rather than reading as an empty cluster,
// and the master's own metrics are still served.
func TestSnapshotError(t *testing.T) {
	m := metrics.New(metrics.SourceFunc(func() metrics.Snapshot {
		return metrics.Snapshot{Err: errors.New("the master's loop did not answer")}
	}))
	text := scrape(t, m)
	assert.NotContains(t, text, "forkd_workers{")
	assert.NotContains(t, text, "forkd_info{")
	assert.Contains(t, text, "process_resident_memory_bytes")
	assert.Contains(t, text, `forkd_worker_exits_total{reason="crash"} 0`)
}

func TestFromStatus(t *testing.T) {
	st := control.Status{
		Mode: control.ModeFork, Generation: 2, Workers: 2, Phase: control.PhaseRolling, Rollout: control.RolloutReload,
		MemorySampledAt: t0.Add(time.Minute),
		Listeners:       []control.Listener{{Name: "http", Address: "tcp://127.0.0.1:8080"}},
		Cgroups:         "on: /sys/fs/cgroup/system.slice/forkd.service (memory, pids)",
		WorkerList: []control.Worker{
			{Index: 0, PID: 10, Generation: 2, State: control.WorkerReady, Template: true, StartedAt: t0, Requests: 3,
				Restarts: 1, Memory: &control.Memory{RSS: 100, PSS: 60, Shared: 70},
				Cgroup: &control.CgroupMemory{Current: 90, Anon: 50, File: 30, Shmem: 4, Kernel: 6}},
			{Index: 1, Generation: 2, State: control.WorkerBackoff},
		},
	}
	s := metrics.FromStatus(st, "1.0")
	assert.Equal(t, metrics.Snapshot{
		Version: "1.0", Mode: control.ModeFork, Generation: 2, Desired: 2, Rollout: control.RolloutReload,
		MemorySampledAt: t0.Add(time.Minute), Cgroups: true,
		Workers: []metrics.Worker{
			{Index: 0, Generation: 2, Role: metrics.RoleTemplate, State: control.WorkerReady, StartedAt: t0, Requests: 3,
				Restarts: 1, Memory: &metrics.Memory{RSS: 100, PSS: 60, Shared: 70, Private: 30},
				Cgroup: &metrics.CgroupMemory{Current: 90, Anon: 50, File: 30, Shmem: 4, Kernel: 6}},
			{Index: 1, Generation: 2, Role: metrics.RoleWorker, State: control.WorkerBackoff},
		},
		Listeners: []metrics.Listener{{Name: "http", Address: "tcp://127.0.0.1:8080"}},
	}, s)

	st.Phase = control.PhaseRunning // a stale Rollout outside a rollout is ignored
	assert.Empty(t, metrics.FromStatus(st, "1.0").Rollout)
}
