package bench

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Issue 10's figures, with wrk, which never retries (a connection closed before its answer is a
// read error, any answer but 2xx or 3xx a non-2xx):
//
//   - BenchmarkDrain: wrk -c16 against each runner (forkd.gunicorn on gunicorn's threaded worker,
//     forkd-rack, the Go hello demo) during 10 reforks, 10 phased restarts and 5 hot restarts;
//     the socket errors and non-2xx of each. Target: 0 for every runner.
//   - BenchmarkGunicorn: requests/s and p99 of forkd.gunicorn (gthread) next to plain
//     `gunicorn -w 4 -k gthread` on the same app, at steady state, alternating in one run.
//     Target: within 5 %.

const (
	drainWorkers     = 4
	drainConnections = 16
	gunicornWorkers  = 4
	gunicornThreads  = 4
	// gunicornRounds alternates the two servers this many times, gunicornWindow each.
	gunicornRounds = 3
	gunicornWindow = 10 * time.Second
	gunicornWarmUp = 3 * time.Second
)

// wrkRun is what wrk printed.
type wrkRun struct {
	requests                      int
	connect, read, write, timeout int
	non2xx                        int
	rps                           float64
	p99                           time.Duration
	output                        string
}

func (r wrkRun) socketErrors() int { return r.connect + r.read + r.write + r.timeout }

var (
	wrkRequestsRE = regexp.MustCompile(`(\d+) requests in`)
	wrkSocketRE   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xxRE   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkRPSRE      = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkP99RE      = regexp.MustCompile(`\n\s+99%\s+([0-9.]+)(us|ms|s)\b`)
)

func parseWrkRun(out string) (wrkRun, error) {
	r := wrkRun{output: out}
	m := wrkRequestsRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk printed no summary:\n%s", out)
	}
	r.requests, _ = strconv.Atoi(m[1])
	if m := wrkSocketRE.FindStringSubmatch(out); m != nil {
		r.connect, _ = strconv.Atoi(m[1])
		r.read, _ = strconv.Atoi(m[2])
		r.write, _ = strconv.Atoi(m[3])
		r.timeout, _ = strconv.Atoi(m[4])
	}
	if m := wrkNon2xxRE.FindStringSubmatch(out); m != nil {
		r.non2xx, _ = strconv.Atoi(m[1])
	}
	if m := wrkRPSRE.FindStringSubmatch(out); m != nil {
		r.rps, _ = strconv.ParseFloat(m[1], 64)
	}
	if m := wrkP99RE.FindStringSubmatch(out); m != nil {
		v, _ := strconv.ParseFloat(m[1], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[m[2]]
		r.p99 = time.Duration(v * float64(unit))
	}
	return r, nil
}

// startWrkRun runs wrk against url with keep-alive connections (--timeout 10s: on a busy 2-core
// machine a slow answer is not a lost one) until the returned function stops it with SIGINT,
// after which wrk prints its summary.
func startWrkRun(b *testing.B, url string, connections int) func() wrkRun {
	b.Helper()
	path, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not installed: apt-get install -y wrk")
	}
	var out lockedOutput
	cmd := exec.Command(path, "-t2", "-c"+strconv.Itoa(connections), "-d10m", "--timeout", "10s", "--latency", url)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return func() wrkRun {
		b.Helper()
		cmd.Process.Signal(syscall.SIGINT)
		<-done
		r, err := parseWrkRun(out.String())
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
}

type lockedOutput struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedOutput) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedOutput) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A drainRunner is one kind of worker under BenchmarkDrain.
type drainRunner struct {
	name string
	fork bool // fork-worker mode: reforks apply
	app  string
	// start runs forkd with drainWorkers workers of it, settled.
	start func(b *testing.B) *master
}

var drainRunners = []drainRunner{
	{name: "forkd.gunicorn", fork: true, app: "test/benchapp on gunicorn's gthread worker, 4 threads",
		start: func(b *testing.B) *master {
			m := startMaster(b, pythonApp(b, benchappDir, drainWorkers, 4, nil, forkWorkerBlock))
			m.settled(drainWorkers)
			return m
		}},
	{name: "forkd-rack", fork: true, app: "test/benchrack on Puma::Server",
		start: func(b *testing.B) *master {
			ruby, _ := requireRackTools(b)
			return startForkdRack(b, ruby)
		}},
	{name: "go-hello", app: "examples/hello (sdk/go's HTTPDrainer), exec mode",
		start: func(b *testing.B) *master {
			m := startMaster(b, masterConfig{workers: drainWorkers, command: []string{helloBinary(b)}})
			m.settled(drainWorkers)
			return m
		}},
}

var (
	helloOnce sync.Once
	helloPath string
	helloErr  error
)

// helloBinary builds examples/hello once.
func helloBinary(b *testing.B) string {
	b.Helper()
	helloOnce.Do(func() {
		helloPath = filepath.Join(bin, "hello")
		out, err := exec.Command("go", "build", "-o", helloPath, "../../examples/hello").CombinedOutput()
		if err != nil {
			helloErr = fmt.Errorf("go build examples/hello: %v\n%s", err, out)
		}
	})
	if helloErr != nil {
		b.Fatal(helloErr)
	}
	return helloPath
}

// drainOps are the operations of BenchmarkDrain, each repeated under one wrk run.
var drainOps = []struct {
	cmd   string
	times int
}{{"refork", 10}, {"reload", 10}, {"restart", 5}}

type drainRow struct {
	runner, op string
	times      int
	wrk        wrkRun
	skipped    string
}

var (
	drainMu   sync.Mutex
	drainRows []drainRow
	drainApps = map[string]string{}
)

func BenchmarkDrain(b *testing.B) {
	for _, r := range drainRunners {
		b.Run("runner="+r.name, func(b *testing.B) { benchDrain(b, r) })
	}
}

func benchDrain(b *testing.B, r drainRunner) {
	m := r.start(b)
	url := "http://" + m.addr() + "/"
	var rows []drainRow
	for _, op := range drainOps {
		row := drainRow{runner: r.name, op: op.cmd, times: op.times}
		if op.cmd == "refork" && !r.fork {
			row.skipped = "exec mode"
			rows = append(rows, row)
			continue
		}
		stop := startWrkRun(b, url, drainConnections)
		time.Sleep(time.Second) // every connection open and busy before the first operation
		for i := range op.times {
			run, err := runForkctl(m.socket, op.cmd, "--wait")
			if err == nil && run.code != 0 {
				err = fmt.Errorf("exit %d: %s", run.code, strings.TrimSpace(run.out))
			}
			if err != nil {
				b.Fatalf("%s: forkctl %s --wait (%d of %d): %v\noutput:\n%s", r.name, op.cmd, i+1, op.times, err, m.out.String())
			}
			m.settled(drainWorkers)
		}
		time.Sleep(time.Second)
		row.wrk = stop()
		rows = append(rows, row)
	}
	metrics := map[string]float64{}
	failed := 0
	for _, row := range rows {
		if row.skipped == "" {
			metrics[row.op+"-failed"] = float64(row.wrk.socketErrors() + row.wrk.non2xx)
			failed += row.wrk.socketErrors() + row.wrk.non2xx
		}
	}
	metrics["failed"] = float64(failed)
	drainMu.Lock()
	drainRows = append(drainRows, rows...)
	drainApps[r.name] = r.app
	drainMu.Unlock()
	report(b, metrics)
}

// ---- forkd.gunicorn next to gunicorn --------------------------------------------------------

type gunicornSample struct {
	side string
	wrk  wrkRun
}

var (
	gunicornMu      sync.Mutex
	gunicornSamples []gunicornSample
	gunicornInfo    string
)

func BenchmarkGunicorn(b *testing.B) {
	py := python(b)
	m := startMaster(b, pythonApp(b, benchappDir, gunicornWorkers, gunicornThreads, nil, forkWorkerBlock))
	m.settled(gunicornWorkers)
	forkdURL := "http://" + m.addr() + "/"
	plainURL := startPlainGunicorn(b, py)
	// Each server warms up first, unmeasured (imports, first connections, caches).
	for _, url := range []string{plainURL, forkdURL} {
		stop := startWrkRun(b, url, drainConnections)
		time.Sleep(gunicornWarmUp)
		stop()
	}
	load := loadAvg()
	var samples []gunicornSample
	for round := range gunicornRounds {
		order := []struct{ side, url string }{{"gunicorn", plainURL}, {"forkd.gunicorn", forkdURL}}
		if round%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, s := range order {
			stop := startWrkRun(b, s.url, drainConnections)
			time.Sleep(gunicornWindow)
			samples = append(samples, gunicornSample{s.side, stop()})
		}
	}
	med := func(side string, f func(wrkRun) float64) float64 {
		var vs []float64
		for _, s := range samples {
			if s.side == side {
				vs = append(vs, f(s.wrk))
			}
		}
		sort.Float64s(vs)
		return vs[len(vs)/2]
	}
	rps := func(r wrkRun) float64 { return r.rps }
	p99 := func(r wrkRun) float64 { return ms(r.p99) }
	gunicornMu.Lock()
	gunicornSamples = samples
	gunicornInfo = fmt.Sprintf("%d workers x %d threads (gthread), test/benchapp GET /, wrk -t2 -c%d, %d rounds of %s each, alternating, after %s of warm-up each; %s",
		gunicornWorkers, gunicornThreads, drainConnections, gunicornRounds, gunicornWindow, gunicornWarmUp, busy(load))
	gunicornMu.Unlock()
	report(b, map[string]float64{
		"forkd-req/s": med("forkd.gunicorn", rps), "gunicorn-req/s": med("gunicorn", rps),
		"forkd-p99-ms": med("forkd.gunicorn", p99), "gunicorn-p99-ms": med("gunicorn", p99),
	})
}

// startPlainGunicorn runs `gunicorn -w 4 -k gthread --threads 4` on test/benchapp, bound by
// gunicorn itself, and returns its URL once it answers.
func startPlainGunicorn(b *testing.B, py string) string {
	b.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var out lockedOutput
	cmd := exec.Command(py, "-m", "gunicorn", "-w", strconv.Itoa(gunicornWorkers), "-k", "gthread",
		"--threads", strconv.Itoa(gunicornThreads), "-b", addr, "app:app")
	cmd.Dir = absPath(b, benchappDir)
	cmd.Env = append(os.Environ(), "PYTHONPATH="+absPath(b, sdkDir))
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(stopDeadline):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	url := "http://" + addr + "/"
	end := time.Now().Add(settleDeadline)
	for {
		resp, err := http.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return url
			}
		}
		if time.Now().After(end) {
			b.Fatalf("gunicorn does not answer on %s: %v\n%s", addr, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func printDrainSummary(w io.Writer) {
	drainMu.Lock()
	rows := drainRows
	drainMu.Unlock()
	gunicornMu.Lock()
	samples, info := gunicornSamples, gunicornInfo
	gunicornMu.Unlock()
	if len(rows) > 0 {
		fmt.Fprintf(w, "\n=== wrk -c%d (no retries) during rollouts, %d workers per runner ===\n", drainConnections, drainWorkers)
		fmt.Fprintf(w, "%-16s %-14s %9s %8s %7s %5s %6s %8s %7s\n", "runner", "operation", "requests", "connect", "read", "write", "timeout", "non-2xx", "failed")
		totals := map[string]int{}
		var order []string
		for _, r := range rows {
			if _, seen := totals[r.runner]; !seen {
				order = append(order, r.runner)
				totals[r.runner] = 0
			}
			op := fmt.Sprintf("%d %ss", r.times, r.op)
			if r.skipped != "" {
				fmt.Fprintf(w, "%-16s %-14s %9s  (%s)\n", r.runner, op, "-", r.skipped)
				continue
			}
			x := r.wrk
			failed := x.socketErrors() + x.non2xx
			totals[r.runner] += failed
			fmt.Fprintf(w, "%-16s %-14s %9d %8d %7d %5d %6d %8d %7d\n", r.runner, op, x.requests, x.connect, x.read, x.write, x.timeout, x.non2xx, failed)
		}
		fmt.Fprintln(w, "targets: 0 socket errors and 0 non-2xx for every runner:")
		for _, name := range order {
			fmt.Fprintf(w, "  %-16s %d failed: %s   (%s)\n", name, totals[name], verdict(totals[name] == 0), drainApps[name])
		}
	}
	if len(samples) > 0 {
		fmt.Fprintf(w, "\n=== forkd.gunicorn vs gunicorn, steady state (%s) ===\n", info)
		fmt.Fprintf(w, "%-16s %12s %10s %9s %8s\n", "server", "requests/s", "p99 ms", "requests", "failed")
		for _, s := range samples {
			fmt.Fprintf(w, "%-16s %12.0f %10.2f %9d %8d\n", s.side, s.wrk.rps, ms(s.wrk.p99), s.wrk.requests, s.wrk.socketErrors()+s.wrk.non2xx)
		}
		medians := map[string][2]float64{}
		for _, side := range []string{"gunicorn", "forkd.gunicorn"} {
			var rps, p99 []float64
			for _, s := range samples {
				if s.side == side {
					rps = append(rps, s.wrk.rps)
					p99 = append(p99, ms(s.wrk.p99))
				}
			}
			sort.Float64s(rps)
			sort.Float64s(p99)
			medians[side] = [2]float64{rps[len(rps)/2], p99[len(p99)/2]}
		}
		g, f := medians["gunicorn"], medians["forkd.gunicorn"]
		rpsRatio, p99Ratio := f[0]/g[0], f[1]/g[1]
		fmt.Fprintf(w, "medians: gunicorn %.0f req/s, p99 %.2f ms; forkd.gunicorn %.0f req/s, p99 %.2f ms\n", g[0], g[1], f[0], f[1])
		fmt.Fprintln(w, "targets: forkd.gunicorn within 5 % of gunicorn:")
		fmt.Fprintf(w, "  requests/s %.3f x gunicorn's: %s\n", rpsRatio, verdict(rpsRatio >= 0.95))
		fmt.Fprintf(w, "  p99        %.3f x gunicorn's: %s\n", p99Ratio, verdict(p99Ratio <= 1.05))
	}
}
