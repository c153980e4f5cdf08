package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Rollouts (issue 4): how long a phased restart takes, and what clients see, request by request,
// during phased and hot restarts.

// reloadReps is how many phased restarts BenchmarkPhasedRestart times for each case.
const reloadReps = 5

// BenchmarkPhasedRestart times `forkctl reload --wait` end to end, and the reload as forkd logs it
// ("reload: replacing ..." to "reload done"), with 4 and 16 workers: in exec mode with testworker
// (Go: every replacement exec'd) and in fork-worker mode with the Python testapp (worker 0 exec'd
// first, the others forked from it). Default rollout: max_surge 1, max_unavailable 0, so one
// replacement at a time. Each reload starts once the previous one's old workers are gone.
func BenchmarkPhasedRestart(b *testing.B) {
	for _, n := range []int{4, 16} {
		b.Run(fmt.Sprintf("mode=exec/workers=%d", n), func(b *testing.B) {
			benchReload(b, masterConfig{workers: n, command: testworker("-heartbeat=false")}, n)
		})
	}
	for _, n := range []int{4, 16} {
		b.Run(fmt.Sprintf("mode=fork/workers=%d", n), func(b *testing.B) {
			benchReload(b, pythonApp(b, testappDir, n, 4, nil, forkWorkerBlock), n)
		})
	}
}

func benchReload(b *testing.B, cfg masterConfig, workers int) {
	load := loadAvg()
	m := startMaster(b, cfg)
	st := m.settled(workers)
	var e2e, logged, execBoots, forkBoots []time.Duration
	for i := range reloadReps {
		r := m.timeRollout("reload", i+1)
		for _, ev := range r.ready {
			if ev.forked {
				forkBoots = append(forkBoots, ev.boot)
			} else {
				execBoots = append(execBoots, ev.boot)
			}
		}
		e2e = append(e2e, r.took)
		logged = append(logged, r.logged)
		m.settled(workers)
	}
	m.stop()

	lo, hi := minMax(e2e)
	llo, lhi := minMax(logged)
	metrics := map[string]float64{
		"forkctl-p50-ms": ms(median(e2e)), "forkctl-min-ms": ms(lo), "forkctl-max-ms": ms(hi),
		"log-p50-ms": ms(median(logged)), "log-min-ms": ms(llo), "log-max-ms": ms(lhi),
		"exec-boot-p50-ms": ms(median(execBoots)), "fork-boot-p50-ms": ms(median(forkBoots)), "reps": float64(len(e2e)),
	}
	detail := fmt.Sprintf("%s, %s: forkctl reload --wait %s ms; start to done in the log %s ms\n"+
		"replacements: %d exec'd, boot p50 %s; %d forked, boot p50 %s; %s",
		st.Mode, filepath.Base(cfg.command[0]), msList(e2e), msList(logged),
		len(execBoots), fmtMS(median(execBoots)), len(forkBoots), fmtMS(median(forkBoots)), busy(load))
	reportDetail(b, metrics, detail)
	b.Logf("\nphased restart of %d workers, %d reloads:\n  %s", workers, len(e2e), strings.ReplaceAll(detail, "\n", "\n  "))
}

// The bounded load of BenchmarkLatency: loadKeepAlive clients on one kept-alive connection each
// and loadFresh clients that open a new connection per request, each sending at most loadRate
// requests a second (a request, then a wait until its next slot: closed loop, so a slow answer
// delays that client's next request rather than piling up).
const (
	loadKeepAlive = 8
	loadFresh     = 2
	loadRate      = 50 // per client and second: 500 requests/s in all
)

// latencyWindow is one measured stretch of load; latencyReps of each kind make a row.
const (
	latencyWindow = 4 * time.Second
	latencyReps   = 5
	// latencyWarmup is unmeasured load before the first window: connections open, the app's
	// code paths warm.
	latencyWarmup = time.Second
)

// The rows of BenchmarkLatency: what happens during a window.
var latencyRows = []string{"steady", "phased", "hot"}

// BenchmarkLatency measures every request's latency and every failure under a bounded load (see
// loadKeepAlive) against 127.0.0.1, with 4 workers of testworker (exec mode) and of the Python
// testapp (fork-worker mode): at steady state, during phased restarts in a loop (`forkctl reload
// --wait`, again as soon as it returns) and during hot restarts in a loop (`forkctl restart
// --wait`). The windows of the three rows take turns (steady, phased, hot, steady, ...) against
// one forkd, so that the machine's other work weighs on each row alike. A row reports the median
// over its latencyReps windows of their p50 and p99, the largest max, and all failures.
func BenchmarkLatency(b *testing.B) {
	b.Run("app=testworker", func(b *testing.B) {
		benchLatency(b, masterConfig{workers: 4, command: testworker("-heartbeat=false")})
	})
	b.Run("app=python", func(b *testing.B) { benchLatency(b, pythonApp(b, testappDir, 4, 4, nil, forkWorkerBlock)) })
}

// windowStats is what one window of load saw.
type windowStats struct {
	p50, p99, max time.Duration
	// keepP99 and freshP99 are the p99 of the keep-alive and of the new-connection clients.
	keepP99, freshP99 time.Duration
	// slow counts the requests above the p99; slowReconnects and slowFirsts those of them that
	// were a keep-alive client's reconnect, and their worker's first answer.
	slow, slowReconnects, slowFirsts int
	ok, failed                       int
	errs                             []string
	// rollouts counts the rollouts that completed in the window (the last one after it), and
	// rolloutTimes their forkctl wall times; rolloutErrs lists those that failed.
	rollouts     int
	rolloutTimes []time.Duration
	rolloutErrs  []string
	// masterCPU is the master's CPU time from the window's start to the end of its last rollout,
	// elapsed that time; forkctlCPU the forkctl processes' CPU time.
	masterCPU, elapsed, forkctlCPU time.Duration
	// failedLog is forkd's log while the first failed rollout ran.
	failedLog []string
}

func benchLatency(b *testing.B, cfg masterConfig) {
	m := startMaster(b, cfg)
	m.settled(cfg.workers)
	url := "http://" + m.addr() + "/"
	actions := map[string][]string{"phased": {"reload", "--wait"}, "hot": {"restart", "--wait"}}
	// Hot restart arrived last: a forkd without it answers 501 ("hot restart is not implemented
	// yet", exit 1), and its row says so instead of failing.
	unavailable := map[string]string{}
	if out, code, _ := m.forkctl("restart", "--wait"); code != 0 {
		if !strings.Contains(out, "not implemented") {
			b.Fatalf("forkctl restart --wait: exit %d: %s\noutput:\n%s", code, out, m.out.String())
		}
		unavailable["hot"] = strings.TrimSpace(out)
		b.Logf("hot restart not available yet: forkctl restart --wait: exit %d: %s", code, strings.TrimSpace(out))
	}
	m.settled(cfg.workers)
	load := loadAvg()
	runLoad(url, latencyWarmup)

	windows := map[string][]windowStats{}
	var broken error
reps:
	for range latencyReps {
		for _, row := range latencyRows {
			if unavailable[row] != "" {
				continue
			}
			// Each window starts from a settled cluster. One that does not settle is a failure of
			// forkd's, reported with what was measured until then.
			if _, broken = m.tryWaitFor(fmt.Sprintf("%d ready workers and no other", cfg.workers), settledCond(cfg.workers), settleDeadline); broken != nil {
				break reps
			}
			windows[row] = append(windows[row], latencyWindowRun(m, url, actions[row]))
		}
	}
	if broken != nil {
		b.Errorf("the cluster did not settle between two windows: %v\nforkd's errors and warnings:\n%s", broken, problems(m.out))
	}
	m.stop()
	end := busy(load)

	// Anything forkd complained about, for the rows that saw a failure.
	complaints := problems(m.out)
	var failed []string
	for _, row := range latencyRows {
		name := b.Name() + "/during=" + row
		if why := unavailable[row]; why != "" {
			record(b, name, row+"-", map[string]float64{"available": 0}, "not available yet: "+why)
			continue
		}
		if len(windows[row]) == 0 {
			continue
		}
		metrics, detail, errs := latencyRow(windows[row], actions[row])
		if (metrics["failed"] > 0 || len(errs) > 0) && complaints != "" {
			detail += "\nforkd's warnings and errors in this run (the last 20):\n" + complaints
		}
		record(b, name, row+"-", metrics, detail+"\n"+end)
		b.Logf("\nduring=%s: %s", row, strings.SplitN(detail, "\n", 2)[0])
		failed = append(failed, errs...)
	}
	if len(failed) > 0 {
		b.Errorf("%d rollouts failed: %s", len(failed), failed[0])
	}
}

// latencyWindowRun runs the load for one window while action (a forkctl command, or none) runs
// in a loop, then waits for the cluster to settle.
func latencyWindowRun(m *master, url string, action []string) windowStats {
	m.tb.Helper()
	var ws windowStats
	cpu0, t0 := processCPU(m.pid), time.Now()
	stop := make(chan struct{})
	var rollouts sync.WaitGroup
	if action != nil {
		rollouts.Add(1)
		go func() {
			defer rollouts.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				began := time.Now()
				r, err := runForkctl(m.socket, action...)
				ws.forkctlCPU += r.cpu
				switch {
				case err != nil:
					ws.rolloutErrs = append(ws.rolloutErrs, err.Error())
				case r.code != 0:
					ws.rolloutErrs = append(ws.rolloutErrs, fmt.Sprintf("exit %d: %s", r.code, strings.TrimSpace(r.out)))
					if ws.failedLog == nil {
						// What forkd logged while this command ran: the reason, for the report.
						ws.failedLog = m.out.between(began, time.Now(), 40)
					}
				default:
					ws.rollouts++
					ws.rolloutTimes = append(ws.rolloutTimes, r.took)
				}
			}
		}()
	}
	res := runLoad(url, latencyWindow)
	close(stop)
	rollouts.Wait() // the rollout in flight completes: counted, outside the window
	ws.masterCPU, ws.elapsed = processCPU(m.pid)-cpu0, time.Since(t0)
	lat := res.latencies(nil)
	ws.p50, ws.p99, ws.max = quantile(lat, 0.5), quantile(lat, 0.99), quantile(lat, 1)
	ws.keepP99 = quantile(res.latencies(func(s reqSample) bool { return s.keepAlive }), 0.99)
	ws.freshP99 = quantile(res.latencies(func(s reqSample) bool { return !s.keepAlive }), 0.99)
	ws.slow, ws.slowReconnects, ws.slowFirsts = res.slowest()
	ws.ok, ws.failed, ws.errs = len(lat), res.failed, res.errs
	return ws
}

// latencyRow sums a row's windows up: its metrics, a text for the summary, and the rollouts that
// failed.
func latencyRow(windows []windowStats, action []string) (map[string]float64, string, []string) {
	var p50s, p99s, keepP99s, freshP99s, rolloutTimes []time.Duration
	var maxd, masterCPU, elapsed, forkctlCPU time.Duration
	var ok, failed, rollouts, slow, slowReconnects, slowFirsts int
	var errs, rolloutErrs, failedLog []string
	for _, ws := range windows {
		if failedLog == nil {
			failedLog = ws.failedLog
		}
		p50s, p99s = append(p50s, ws.p50), append(p99s, ws.p99)
		keepP99s, freshP99s = append(keepP99s, ws.keepP99), append(freshP99s, ws.freshP99)
		maxd = max(maxd, ws.max)
		ok, failed, rollouts = ok+ws.ok, failed+ws.failed, rollouts+ws.rollouts
		errs, rolloutErrs = append(errs, ws.errs...), append(rolloutErrs, ws.rolloutErrs...)
		rolloutTimes = append(rolloutTimes, ws.rolloutTimes...)
		masterCPU, elapsed, forkctlCPU = masterCPU+ws.masterCPU, elapsed+ws.elapsed, forkctlCPU+ws.forkctlCPU
		slow, slowReconnects, slowFirsts = slow+ws.slow, slowReconnects+ws.slowReconnects, slowFirsts+ws.slowFirsts
	}
	lo, hi := minMax(p99s)
	metrics := map[string]float64{
		"available": 1, "p50-ms": ms(median(p50s)), "p99-ms": ms(median(p99s)), "max-ms": ms(maxd),
		"p99-lo-ms": ms(lo), "p99-hi-ms": ms(hi), "keepalive-p99-ms": ms(median(keepP99s)), "newconn-p99-ms": ms(median(freshP99s)),
		"requests": float64(ok + failed), "failed": float64(failed),
		"rollouts": float64(rollouts), "rollout-errors": float64(len(rolloutErrs)),
		"rollout-p50-ms": ms(median(rolloutTimes)), "master-cpu-ms/s": ms(masterCPU) / elapsed.Seconds(),
	}
	var detail strings.Builder
	fmt.Fprintf(&detail, "%d windows of %s: p50 %s ms, p99 %s ms, %d requests (%.0f/s), %d failed",
		len(windows), latencyWindow, msList(p50s), msList(p99s), ok+failed, float64(ok+failed)/(latencyWindow.Seconds()*float64(len(windows))), failed)
	fmt.Fprintf(&detail, "\np99 of the keep-alive clients %s ms, of the new-connection clients %s ms",
		msList(keepP99s), msList(freshP99s))
	fmt.Fprintf(&detail, "\nthe %d requests above their window's p99: %d keep-alive reconnects, %d first answers of their worker",
		slow, slowReconnects, slowFirsts)
	fmt.Fprintf(&detail, "\nmaster CPU %.1f ms/s", ms(masterCPU)/elapsed.Seconds())
	if action != nil && rollouts > 0 {
		fmt.Fprintf(&detail, "; %d x forkctl %s, each p50 %s (max %s); CPU per rollout: master %.1f ms, forkctl %.1f ms",
			rollouts, strings.Join(action, " "), fmtMS(median(rolloutTimes)), fmtMS(quantile(rolloutTimes, 1)),
			ms(masterCPU)/float64(rollouts), ms(forkctlCPU)/float64(rollouts))
	}
	for i, e := range firstN(errs, 3) {
		fmt.Fprintf(&detail, "\nrequest error %d: %s", i+1, e)
	}
	for i, e := range firstN(rolloutErrs, 3) {
		fmt.Fprintf(&detail, "\nrollout error %d: %s", i+1, e)
	}
	if failedLog != nil {
		fmt.Fprintf(&detail, "\nforkd's log while the first failed rollout ran (ms after it began):\n  %s", strings.Join(failedLog, "\n  "))
	}
	return metrics, detail.String(), rolloutErrs
}

// record keeps a result for the summary under name, for a benchmark that measures several rows
// with one forkd; the metrics go to b.ReportMetric with prefix before their units.
func record(b *testing.B, name, prefix string, metrics map[string]float64, detail string) {
	b.Helper()
	b.ReportMetric(0, "ns/op")
	for unit, v := range metrics {
		b.ReportMetric(v, prefix+unit)
	}
	resultsMu.Lock()
	results = append(results, result{name, metrics, detail})
	resultsMu.Unlock()
}

func firstN(ss []string, n int) []string { return ss[:min(n, len(ss))] }

// settleDeadline bounds the wait for a cluster to settle between two latency windows: the old
// workers drain within the config's 5s shutdown timeout, or get SIGKILL.
const settleDeadline = 20 * time.Second

// problems returns forkd's log lines of level WARN and ERROR, the last 20.
func problems(l *logLines) string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			out = append(out, "  "+line)
		}
	}
	return strings.Join(out[len(out)-min(20, len(out)):], "\n")
}

// reqSample is one request that succeeded.
type reqSample struct {
	took time.Duration
	// keepAlive: sent by a keep-alive client; newConn: on a connection opened for it (always, for
	// the other clients; for a keep-alive client, a reconnect after its worker closed the last
	// one); first: the first answer of its worker (by pid) that this load saw.
	keepAlive, newConn, first bool
}

// loadResult is what one run of the load saw.
type loadResult struct {
	samples []reqSample // sorted by took
	failed  int
	errs    []string // the first few
}

func (r loadResult) latencies(keep func(reqSample) bool) []time.Duration {
	var ds []time.Duration
	for _, s := range r.samples {
		if keep == nil || keep(s) {
			ds = append(ds, s.took)
		}
	}
	return ds
}

// slowest describes the requests slower than the p99: how many were a keep-alive client's
// reconnect, and how many were their worker's first answer.
func (r loadResult) slowest() (n, reconnects, firsts int) {
	p99 := quantile(r.latencies(nil), 0.99)
	for _, s := range r.samples {
		if s.took <= p99 {
			continue
		}
		n++
		if s.keepAlive && s.newConn {
			reconnects++
		}
		if s.first {
			firsts++
		}
	}
	return n, reconnects, firsts
}

var answerPID = regexp.MustCompile(`\bpid=(\d+)`)

// runLoad sends the bounded load to url for d. Requests begun before d is up complete and count.
func runLoad(url string, d time.Duration) loadResult {
	end := time.Now().Add(d)
	var mu sync.Mutex
	var wg sync.WaitGroup
	var res loadResult
	var seen sync.Map // pid of a worker -> true, once it answered
	client := func(keepAlive bool) {
		defer wg.Done()
		tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 1}
		defer tr.CloseIdleConnections()
		c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
		interval := time.Second / loadRate
		// A random phase, so that the clients do not send in step.
		next := time.Now().Add(rand.N(interval))
		var mine []reqSample
		var myFailed int
		var myErrs []string
		for {
			time.Sleep(time.Until(next))
			if time.Now().After(end) {
				break
			}
			s := reqSample{keepAlive: keepAlive}
			start := time.Now()
			body, err := get(c, url, &s.newConn)
			s.took = time.Since(start)
			if err != nil {
				myFailed++
				if len(myErrs) < 3 {
					myErrs = append(myErrs, err.Error())
				}
			} else {
				if m := answerPID.FindStringSubmatch(body); m != nil {
					_, loaded := seen.LoadOrStore(m[1], true)
					s.first = !loaded
				}
				mine = append(mine, s)
			}
			if next = next.Add(interval); next.Before(time.Now()) {
				next = time.Now() // behind: no burst to catch up
			}
		}
		mu.Lock()
		defer mu.Unlock()
		res.samples = append(res.samples, mine...)
		res.failed += myFailed
		res.errs = append(res.errs, myErrs...)
	}
	for i := range loadKeepAlive + loadFresh {
		wg.Add(1)
		go client(i < loadKeepAlive)
	}
	wg.Wait()
	sort.Slice(res.samples, func(i, j int) bool { return res.samples[i].took < res.samples[j].took })
	return res
}

// get sends one GET and returns the body; newConn tells whether it went on a new connection.
func get(c *http.Client, url string, newConn *bool) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { *newConn = !info.Reused },
	}))
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %s", resp.Status)
	}
	return string(body), nil
}

// forkctlRun is one run of forkctl.
type forkctlRun struct {
	out  string
	code int
	// took is its wall time, start to exit; cpu its user and system time.
	took, cpu time.Duration
}

// runForkctl runs forkctl against the control socket, safe to call from any goroutine: an error
// is returned only when forkctl could not run (or ran over 2 minutes), not for its exit code.
func runForkctl(socket string, args ...string) (forkctlRun, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "forkctl"), append([]string{"--socket", socket}, args...)...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	start := time.Now()
	err := cmd.Run()
	r := forkctlRun{out: buf.String(), took: time.Since(start)}
	if cmd.ProcessState != nil {
		r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.code = ee.ExitCode()
	case err != nil:
		r.code = -1
		return r, fmt.Errorf("forkctl %s: %w", strings.Join(args, " "), err)
	}
	return r, nil
}

// processCPU is the user and system time of process pid itself (not of its reaped children),
// across execs: a hot restart's new image counts with the old.
func processCPU(pid int) time.Duration {
	f, err := statFields(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	return time.Duration(f[14]+f[15]) * clockTick
}

// Target from issue 4.
const targetHotP99Ratio = 2.0 // p99 during hot restarts within 2x of steady state

func printRolloutSummary(w io.Writer) {
	reload := lookup("BenchmarkPhasedRestart/")
	latency := lookup("BenchmarkLatency/")
	if len(reload)+len(latency) == 0 {
		return
	}
	fmt.Fprintf(w, "\n=== rollouts (issue 4) ===\n")
	if len(reload) > 0 {
		fmt.Fprintf(w, "%-40s %8s %13s %8s %13s %10s %10s\n", "phased restart (forkctl reload --wait)", "p50 ms", "range", "log p50", "log range", "exec boot", "fork boot")
		for _, r := range reload {
			m := r.metrics
			fmt.Fprintf(w, "%-40s %8.1f %13s %8.1f %13s %10.2f %10.2f\n", strings.TrimPrefix(r.name, "Benchmark"), m["forkctl-p50-ms"],
				fmt.Sprintf("%.0f..%.0f", m["forkctl-min-ms"], m["forkctl-max-ms"]), m["log-p50-ms"],
				fmt.Sprintf("%.0f..%.0f", m["log-min-ms"], m["log-max-ms"]), m["exec-boot-p50-ms"], m["fork-boot-p50-ms"])
		}
		fmt.Fprintln(w, "  (mode=exec: testworker, Go; mode=fork: the Python testapp; boot columns: p50 of the replacements' spawn to READY, 0 = none)")
	}
	steady := map[string]*result{}
	if len(latency) > 0 {
		fmt.Fprintf(w, "%-34s %7s %7s %7s %12s %8s %6s %8s %10s %8s\n", fmt.Sprintf("latency, %d+%d clients x %d/s", loadKeepAlive, loadFresh, loadRate),
			"p50 ms", "p99 ms", "max ms", "p99 range", "requests", "failed", "rollouts", "rollout ms", "p99 vs")
		for i, r := range latency {
			name := strings.TrimPrefix(r.name, "BenchmarkLatency/")
			app, during, _ := strings.Cut(name, "/")
			m := r.metrics
			if m["available"] == 0 {
				fmt.Fprintf(w, "%-34s %s\n", name, "not available yet")
				continue
			}
			if during == "during=steady" {
				steady[app] = &latency[i]
			}
			vs := "steady"
			if s := steady[app]; s != nil && during != "during=steady" && s.metrics["p99-ms"] > 0 {
				vs = fmt.Sprintf("%.2fx", m["p99-ms"]/s.metrics["p99-ms"])
			}
			rollout := "-"
			if m["rollouts"] > 0 {
				rollout = fmt.Sprintf("%.0f", m["rollout-p50-ms"])
			}
			fmt.Fprintf(w, "%-34s %7.2f %7.2f %7.1f %12s %8.0f %6.0f %8.0f %10s %8s\n", name, m["p50-ms"], m["p99-ms"], m["max-ms"],
				fmt.Sprintf("%.1f..%.1f", m["p99-lo-ms"], m["p99-hi-ms"]), m["requests"], m["failed"], m["rollouts"], rollout, vs)
		}
	}
	for _, r := range append(append([]result(nil), reload...), latency...) {
		if r.detail != "" {
			fmt.Fprintf(w, "%s:\n", strings.TrimPrefix(r.name, "Benchmark"))
			for _, line := range strings.Split(r.detail, "\n") {
				fmt.Fprintf(w, "  %s\n", line)
			}
		}
	}
	if len(latency) == 0 {
		return
	}
	fmt.Fprintln(w, "targets:")
	var apps []string
	hot := map[string]*result{}
	for i, r := range latency {
		app, during, _ := strings.Cut(strings.TrimPrefix(r.name, "BenchmarkLatency/"), "/")
		if len(apps) == 0 || apps[len(apps)-1] != app {
			apps = append(apps, app)
		}
		if during == "during=hot" {
			hot[app] = &latency[i]
		}
	}
	for _, app := range apps {
		s, r := steady[app], hot[app]
		switch {
		case r != nil && r.metrics["available"] == 0:
			fmt.Fprintf(w, "  %s: p99 during hot restarts within %.0fx of steady state: not available yet (forkctl restart: not implemented)\n", app, targetHotP99Ratio)
		case r == nil || s == nil:
			fmt.Fprintf(w, "  %s: p99 during hot restarts within %.0fx of steady state: not measured (the run failed before; see above)\n", app, targetHotP99Ratio)
		default:
			ratio := r.metrics["p99-ms"] / s.metrics["p99-ms"]
			fmt.Fprintf(w, "  %s: p99 during hot restarts within %.0fx of steady state: %.2f ms / %.2f ms = %.2fx, %0.f failed: %s\n",
				app, targetHotP99Ratio, r.metrics["p99-ms"], s.metrics["p99-ms"], ratio, r.metrics["failed"], verdict(ratio <= targetHotP99Ratio))
		}
	}
}
