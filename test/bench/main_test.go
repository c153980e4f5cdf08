// Package bench measures forkd's master with real processes: its memory and its idle cost with 4
// and 64 workers, and how long a worker takes from spawn to READY=1 in exec mode; in fork-worker
// mode (fork_test.go), a forked worker's spawn to READY=1, reforks and the memory they share; and
// rollouts (rollout_test.go): phased restarts and request latency during phased and hot restarts;
// and a Rack app (rack_test.go) under forkd-rack next to the same app under `puma --fork-worker`:
// memory, refork and phased restart durations, and latency during each; wrk against every runner
// during rollouts, and forkd.gunicorn next to plain gunicorn (drain_test.go); the Python
// template's gc.freeze() before it forks, off and on (gcfreeze_test.go); and memory that stays
// shared (rackmem_test.go): an app that builds memory at boot and lazily, under forkd-rack (its
// template readied and not) and `puma --fork-worker=1000`, after boot, a warm-up, a refork and
// minutes of load, beside a bare fork of the same app (rackmem_floor_test.go), the floor of its totals.
//
//	make bench    # go test -run='^$' -bench=. -benchtime=1x -count=1 ./test/bench/...
//
// Each benchmark does its measurement once, whatever b.N is: a figure such as "wakeups per second
// while idle" is a property of one run, not an average over iterations. The results appear as
// benchmark metrics (ns/op is suppressed, it would only be the run's wall time), each benchmark
// logs a table, and a summary with the targets follows the benchmark output.
//
// FORKD_BENCH_IDLE sets the idle window (a Go duration, or seconds; default 10s).
// FORKD_BENCH_MEM_LOAD, FORKD_BENCH_MEM_REQUESTS and FORKD_BENCH_MEM_FORKD set
// BenchmarkRackMemory's load stages and its forkd-rack variants (rackmem_test.go);
// FORKD_BENCH_PUMA_ENV adds variables to Puma's environment. FORKD_BENCH_SETSID=1 starts each
// server (forkd's master, Puma) in a session of its own, as systemd starts a service
// (serverSession, master_test.go).
package bench

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// bin holds forkd, forkctl and testworker, built once by TestMain.
var bin string

// idleWindow is how long BenchmarkMasterIdle watches an idle master (FORKD_BENCH_IDLE).
var idleWindow = 10 * time.Second

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		// `make unit` runs go test ./... without -bench: nothing here would run, so skip the
		// builds rather than slow every unit test run down.
		os.Exit(m.Run())
	}
	if s := os.Getenv("FORKD_BENCH_IDLE"); s != "" {
		d, err := parseWindow(s)
		if err != nil {
			fmt.Fprintf(os.Stderr, "FORKD_BENCH_IDLE: %v\n", err)
			os.Exit(2)
		}
		idleWindow = d
	}
	dir, err := os.MkdirTemp("", "forkd-bench-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	code := func() int {
		defer os.RemoveAll(dir)
		// Without -race, unlike test/harness_test.go: the race detector multiplies memory and CPU,
		// and memory and CPU are what is measured here. forkd and forkctl are built as the
		// packages ship them (Makefile's package target): static, without cgo and libc, whose
		// mappings alone are 1.5 MB of the master's RSS.
		for name, pkg := range map[string]string{"forkd": "../../cmd/forkd", "forkctl": "../../cmd/forkctl", "testworker": "../testworker"} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
			if name != "testworker" {
				cmd = exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(dir, name), pkg)
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			}
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n", name, err)
				return 1
			}
		}
		code := m.Run()
		printSummary(os.Stdout)
		printForkSummary(os.Stdout)
		printRolloutSummary(os.Stdout)
		printRackSummary(os.Stdout)
		printDrainSummary(os.Stdout)
		printGCFreezeSummary(os.Stdout)
		printRackMemorySummary(os.Stdout)
		printRackReforkNiceSummary(os.Stdout)
		return code
	}()
	os.Exit(code)
}

// parseWindow reads a duration ("30s", "1m") or a number of seconds ("30").
func parseWindow(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		secs, err2 := strconv.ParseFloat(s, 64)
		if err2 != nil {
			return 0, fmt.Errorf("%q is neither a duration (like 30s) nor a number of seconds", s)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: the window must be positive", s)
	}
	return d, nil
}

// result is one benchmark's figures, kept for the summary.
type result struct {
	name    string
	metrics map[string]float64
	// detail is printed under the summary's tables, where no line limit applies.
	detail string
}

var (
	resultsMu sync.Mutex
	results   []result
)

// report records metrics both as benchmark metrics and for the summary.
func report(b *testing.B, metrics map[string]float64) {
	b.Helper()
	reportDetail(b, metrics, "")
}

// reportDetail is report with a text for the summary.
func reportDetail(b *testing.B, metrics map[string]float64, detail string) {
	b.Helper()
	// The measurement is one run regardless of b.N, so the framework's ns/op would be the run's
	// wall time: misleading next to the real figures.
	b.ReportMetric(0, "ns/op")
	for unit, v := range metrics {
		b.ReportMetric(v, unit)
	}
	resultsMu.Lock()
	results = append(results, result{b.Name(), metrics, detail})
	resultsMu.Unlock()
}

func lookup(prefix string) []result {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	var rs []result
	for _, r := range results {
		if strings.HasPrefix(r.name, prefix) {
			rs = append(rs, r)
		}
	}
	return rs
}

// Targets from the issue.
const (
	targetRSSMB        = 20.0 // master RSS with 64 workers
	targetIdleWakeupsS = 1.0  // no polling loop faster than once a second
)

func printSummary(w io.Writer) {
	idle := lookup("BenchmarkMasterIdle/")
	spawn := lookup("BenchmarkSpawnToReady/")
	shim := lookup("BenchmarkShimExec/")
	if len(idle)+len(spawn)+len(shim) == 0 {
		return
	}
	fmt.Fprintf(w, "\n=== forkd bench summary (idle window %s) ===\n", idleWindow)
	if len(idle) > 0 {
		fmt.Fprintf(w, "%-36s %8s %8s %9s %10s\n", "master idle", "rss MB", "hwm MB", "cpu ms/s", "wakeups/s")
		for _, r := range idle {
			m := r.metrics
			fmt.Fprintf(w, "%-36s %8.1f %8.1f %9.2f %10.2f\n", strings.TrimPrefix(r.name, "BenchmarkMasterIdle/"),
				m["rss-MB"], m["hwm-MB"], m["cpu-ms/s"], m["wakeups/s"])
		}
	}
	if len(spawn)+len(shim) > 0 {
		fmt.Fprintf(w, "%-36s %8s %8s %8s %5s\n", "spawn to READY / exec floor", "p50 ms", "p90 ms", "max ms", "n")
		for _, r := range append(spawn, shim...) {
			m := r.metrics
			fmt.Fprintf(w, "%-36s %8.2f %8.2f %8.2f %5.0f\n", r.name[len("Benchmark"):], m["p50-ms"], m["p90-ms"], m["max-ms"], m["samples"])
		}
	}
	if len(idle) == 0 {
		return
	}
	for _, r := range idle {
		if r.detail != "" {
			fmt.Fprintf(w, "%s: the master's threads during the idle window\n", strings.TrimPrefix(r.name, "Benchmark"))
			for _, line := range strings.Split(strings.TrimRight(r.detail, "\n"), "\n") {
				fmt.Fprintf(w, "  %s\n", line)
			}
		}
	}
	// The targets: RSS with 64 workers, and wakeups of the truly idle master (no heartbeats, so
	// no timer and no datagrams).
	fmt.Fprintln(w, "targets:")
	var rssChecked bool
	for _, r := range idle {
		if strings.Contains(r.name, "workers=64") && strings.Contains(r.name, "heartbeats=off") {
			rssChecked = true
			fmt.Fprintf(w, "  master RSS with 64 workers < %.0f MB: %.1f MB (high-water %.1f MB): %s\n",
				targetRSSMB, r.metrics["rss-MB"], r.metrics["hwm-MB"], verdict(r.metrics["rss-MB"] < targetRSSMB))
		}
	}
	if !rssChecked {
		fmt.Fprintln(w, "  master RSS with 64 workers: not measured in this run")
	}
	for _, r := range idle {
		if strings.Contains(r.name, "heartbeats=off") {
			fmt.Fprintf(w, "  idle wakeups <= %.0f/s, %s: %.2f/s: %s\n", targetIdleWakeupsS,
				strings.TrimPrefix(r.name, "BenchmarkMasterIdle/"), r.metrics["wakeups/s"],
				verdict(r.metrics["wakeups/s"] <= targetIdleWakeupsS))
		}
	}
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

// percentiles returns the nearest-rank p50, p90 and the maximum of ds.
func percentiles(ds []time.Duration) (p50, p90, maxd time.Duration) {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return rank(0.50), rank(0.90), s[len(s)-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
