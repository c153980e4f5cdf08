package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/internal/memsample"
	"github.com/forkd/forkd/internal/promtest"
	"github.com/forkd/forkd/pkg/control"
)

// waitMemory waits until n workers are ready, then for a memory sample taken since, which holds
// each of them.
func (f *forkd) waitMemory(n int) control.Status {
	f.t.Helper()
	f.waitReady(n)
	ready := time.Now()
	return f.waitFor(fmt.Sprintf("a memory sample of %d ready workers", n), func(st control.Status) bool {
		if st.Phase != control.PhaseRunning || st.Ready != n || len(st.WorkerList) != n || !st.MemorySampledAt.After(ready) {
			return false
		}
		for _, w := range st.WorkerList {
			if w.Memory == nil {
				return false
			}
		}
		return true
	})
}

// freeTCPAddress returns a port on 127.0.0.1 that was free a moment ago.
func freeTCPAddress(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// scrapeControlSocket GETs /metrics from forkd's control socket, as forkctl would reach it.
func (f *forkd) scrapeControlSocket() string {
	f.t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", f.socket)
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://forkd/metrics")
	require.NoError(f.t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(f.t, err)
	require.Equal(f.t, http.StatusOK, resp.StatusCode, string(body))
	return string(body)
}

// A real Prometheus scrapes forkd's metrics.listen and answers, through its HTTP API, with the
// workers' memory, the requests they served, a refork's duration and a crash; promtool accepts
// the exposition, which the control socket serves too.
func TestPrometheusScrapesForkd(t *testing.T) {
	requirePython(t)
	addr := freeTCPAddress(t)
	f := startPython(t, options{config: pythonApp(t, 2, nil, forkWorkerBlock) + fmt.Sprintf(`
listen "http" {
  address = "tcp://127.0.0.1:0"
}
metrics {
  listen = "tcp://%s"
}
memory {
  sample_interval = "1s"
}
`, addr)})
	st := f.waitMemory(2)
	assert.False(t, st.MemorySampledAt.IsZero(), "the status says when the memory was sampled")

	prom := promtest.Start(t, promtest.Target{Job: "forkd", Address: addr})
	prom.WaitUp(t, "forkd")
	prom.WaitFor(t, `forkd_workers{state="ready"}`, promtest.Equals(2))
	prom.WaitFor(t, `count(forkd_worker_pss_bytes > 0)`, promtest.Equals(2))
	prom.WaitFor(t, `count(forkd_worker_shared_bytes{role="worker"} > 0)`, promtest.Equals(1))
	prom.WaitFor(t, `forkd_listener_backlog{listener="http"}`, promtest.Equals(0))

	url := "http://" + f.addr()
	for range 30 {
		get(t, url)
	}
	served := f.waitFor("30 requests reported", func(st control.Status) bool {
		var n uint64
		for _, w := range st.WorkerList {
			n += w.Requests
		}
		return n >= 30
	})
	var requests uint64
	for _, w := range served.WorkerList {
		requests += w.Requests
	}
	prom.WaitFor(t, `sum(forkd_worker_requests_total)`, func(v model.Vector) bool {
		return len(v) == 1 && uint64(v[0].Value) >= requests
	})

	// A refork: Prometheus has its duration, from the machine's record of its end.
	out, code := f.forkctl("refork", "--wait")
	require.Equal(t, 0, code, out)
	prom.WaitFor(t, `forkd_rollout_duration_seconds_count{kind="refork",result="succeeded"}`, promtest.Equals(1))
	prom.WaitFor(t, `forkd_rollout_duration_seconds_sum{kind="refork",result="succeeded"} > 0`, promtest.Present)
	prom.WaitFor(t, `forkd_worker_spawn_to_ready_seconds_count{path="fork"} >= 2`, promtest.Present)
	prom.WaitFor(t, `forkd_worker_exits_total{reason="stopped"}`, promtest.Equals(1))

	// A worker killed behind forkd's back is a crash.
	reforked := f.waitReady(2)
	require.NoError(t, syscall.Kill(reforked.WorkerList[1].PID, syscall.SIGKILL))
	prom.WaitFor(t, `forkd_worker_exits_total{reason="crash"}`, promtest.Equals(1))

	f.waitReady(2)
	text := f.scrapeControlSocket()
	assert.Contains(t, text, `forkd_workers{state="ready"} 2`)
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(text)
	lint, err := check.CombinedOutput()
	require.NoError(t, err, "promtool check metrics: %s", lint)
}

// A metrics.listen that cannot be bound stops forkd at start, saying which and why.
func TestMetricsListenInUse(t *testing.T) {
	t.Parallel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	f := startForkd(t, options{config: worker() + fmt.Sprintf("\nlisten \"http\" {\n  address = \"tcp://127.0.0.1:0\"\n}\nmetrics {\n  listen = \"tcp://%s\"\n}\n", taken.Addr())})
	assert.Equal(t, 1, f.waitExit())
	assert.Contains(t, f.output.String(), fmt.Sprintf("metrics.listen tcp://%s: ", taken.Addr()))
	assert.Contains(t, f.output.String(), "address already in use")
}

// TestQuickModeServesMetrics: without a config file, --metrics-listen serves /metrics on a port of
// its own and --memory-sample-interval sets how often the workers' memory is read; curl scrapes
// it, promtool checks it.
func TestQuickModeServesMetrics(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	socket := filepath.Join(dir, "control.sock")
	addr := freeTCPAddress(t)
	f := startQuickMode(t, dir, socket, "--workers", "2", "--listen", "tcp://127.0.0.1:0", "--socket", socket,
		"--metrics-listen", "tcp://"+addr, "--memory-sample-interval", "1s", "--", filepath.Join(bin, "testworker"))
	f.waitReady(2)

	scrape := func() string {
		out, err := exec.Command("curl", "-sSf", "--max-time", "10", "http://"+addr+"/metrics").CombinedOutput()
		require.NoError(t, err, "curl: %s", out)
		return string(out)
	}
	// Successive samples' times, as the scrapes see them (no status request wakes the sampler
	// meanwhile): the interval between two of them is the flag's 1 s, not the default 10 s.
	var sampledAt []float64
	waitUntil(t, "three memory samples", func() bool {
		text := scrape()
		for _, line := range strings.Split(text, "\n") {
			if v, ok := strings.CutPrefix(line, "forkd_memory_sample_timestamp_seconds "); ok {
				at, err := strconv.ParseFloat(v, 64)
				require.NoError(t, err, line)
				if at > 0 && (len(sampledAt) == 0 || at != sampledAt[len(sampledAt)-1]) {
					sampledAt = append(sampledAt, at)
				}
			}
		}
		return len(sampledAt) >= 3
	})
	gap := time.Duration((sampledAt[2] - sampledAt[1]) * float64(time.Second))
	assert.Less(t, gap, memsample.DefaultInterval/2, "the interval between two samples (%v)", sampledAt)

	text := scrape()
	assert.Contains(t, text, `forkd_workers{state="ready"} 2`)
	assert.Regexp(t, `(?m)^forkd_worker_pss_bytes\{.*\} [1-9]`, text)
	check := exec.Command("promtool", "check", "metrics")
	check.Stdin = strings.NewReader(text)
	out, err := check.CombinedOutput()
	assert.NoError(t, err, "promtool check metrics: %s", out)
}
