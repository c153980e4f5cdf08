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

	"github.com/forkd/forkd/internal/proctest"
)

// Issue 10's figures, with wrk, which never retries (a connection closed before its answer is a
// read error, any answer but 2xx or 3xx a non-2xx):
//
//   - BenchmarkDrain: wrk -c16 against each runner (forkd.gunicorn on gunicorn's threaded worker,
//     forkd-rack, the Go hello demo) during 10 reforks, 10 phased restarts and 5 hot restarts;
//     the socket errors and non-2xx of each. Target: 0 for every runner.
//   - BenchmarkGunicorn: requests/s and p99 of forkd.gunicorn (gthread) next to plain
//     `gunicorn -w 4 -k gthread` on the same app, at steady state, alternating in one run.
//     Target: within 5 %. The machine is shared and its load drifts: each round's two windows
//     are next to each other, and the verdict is on the median of the rounds' ratios.

const (
	drainWorkers     = 4
	drainConnections = 16
	gunicornWorkers  = 4
	gunicornThreads  = 4
	// gunicornRounds measures the two servers this many times, gunicornWindow each, one right
	// after the other, the first of each round in turn.
	gunicornRounds = 6
	gunicornWindow = 8 * time.Second
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
	var out proctest.Output
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
			return startForkdRack(b, ruby, benchRackApp)
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
	// cpu is the user and system time the server's processes (master or arbiter, workers) used
	// in the window: what a request costs, whatever else the shared machine runs.
	cpu time.Duration
}

// cpuPerKRequest is the server's CPU time per 1000 requests, in ms.
func (s gunicornSample) cpuPerKRequest() float64 {
	return ms(s.cpu) / float64(max(1, s.wrk.requests)) * 1000
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
	forkdPIDs := func() []int {
		pids := []int{m.pid}
		for _, w := range m.settled(gunicornWorkers).WorkerList {
			pids = append(pids, w.PID)
		}
		return pids
	}
	plainURL, arbiter := startPlainGunicorn(b, py)
	plainPIDs := func() []int { return append([]int{arbiter}, childrenOf(arbiter)...) }
	// Each server warms up first, unmeasured (imports, first connections, caches).
	for _, url := range []string{plainURL, forkdURL} {
		stop := startWrkRun(b, url, drainConnections)
		time.Sleep(gunicornWarmUp)
		stop()
	}
	load := loadAvg()
	var samples []gunicornSample
	for round := range gunicornRounds {
		order := []struct {
			side, url string
			pids      func() []int
		}{{"gunicorn", plainURL, plainPIDs}, {"forkd.gunicorn", forkdURL, forkdPIDs}}
		if round%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, s := range order {
			pids := s.pids()
			cpu0 := processesCPU(pids)
			stop := startWrkRun(b, s.url, drainConnections)
			time.Sleep(gunicornWindow)
			run := stop()
			samples = append(samples, gunicornSample{s.side, run, processesCPU(pids) - cpu0})
		}
	}
	gunicornMu.Lock()
	gunicornSamples = samples
	gunicornInfo = fmt.Sprintf("%d workers x %d threads (gthread), test/benchapp GET /, wrk -t2 -c%d, %d rounds of %s each, alternating, after %s of warm-up each; %s",
		gunicornWorkers, gunicornThreads, drainConnections, gunicornRounds, gunicornWindow, gunicornWarmUp, busy(load))
	gunicornMu.Unlock()
	c := compareGunicorn(samples)
	report(b, map[string]float64{
		"forkd-req/s": c.forkd.rps, "gunicorn-req/s": c.plain.rps,
		"forkd-p99-ms": c.forkd.p99, "gunicorn-p99-ms": c.plain.p99,
		"req/s-ratio": c.rpsRatio, "p99-ratio": c.p99Ratio,
	})
}

type gunicornFigures struct{ rps, p99, cpu float64 }

// gunicornComparison is BenchmarkGunicorn's result: each side's medians, and the medians of the
// rounds' ratios (forkd.gunicorn's figure over gunicorn's in the same round).
type gunicornComparison struct {
	forkd, plain                 gunicornFigures
	rpsRatio, p99Ratio, cpuRatio float64
}

func compareGunicorn(samples []gunicornSample) gunicornComparison {
	median := func(vs []float64) float64 {
		vs = append([]float64(nil), vs...)
		sort.Float64s(vs)
		return vs[len(vs)/2]
	}
	var c gunicornComparison
	sides := map[string][3][]float64{}
	var rpsRatios, p99Ratios, cpuRatios []float64
	for i, s := range samples {
		v := sides[s.side]
		v[0], v[1], v[2] = append(v[0], s.wrk.rps), append(v[1], ms(s.wrk.p99)), append(v[2], s.cpuPerKRequest())
		sides[s.side] = v
		if i%2 == 1 {
			f, g := samples[i], samples[i-1]
			if f.side != "forkd.gunicorn" {
				f, g = g, f
			}
			rpsRatios = append(rpsRatios, f.wrk.rps/g.wrk.rps)
			p99Ratios = append(p99Ratios, float64(f.wrk.p99)/float64(g.wrk.p99))
			cpuRatios = append(cpuRatios, f.cpuPerKRequest()/g.cpuPerKRequest())
		}
	}
	for side, into := range map[string]*gunicornFigures{"forkd.gunicorn": &c.forkd, "gunicorn": &c.plain} {
		*into = gunicornFigures{median(sides[side][0]), median(sides[side][1]), median(sides[side][2])}
	}
	c.rpsRatio, c.p99Ratio, c.cpuRatio = median(rpsRatios), median(p99Ratios), median(cpuRatios)
	return c
}

func processesCPU(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		total += processCPU(pid)
	}
	return total
}

// childrenOf lists pid's children (/proc/PID/task/PID/children: those of its main thread, which
// is the one gunicorn's arbiter forks from).
func childrenOf(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
}

// startPlainGunicorn runs `gunicorn -w 4 -k gthread --threads 4` on test/benchapp, bound by
// gunicorn itself, and returns its URL once it answers, and its arbiter's PID.
func startPlainGunicorn(b *testing.B, py string) (string, int) {
	b.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var out proctest.Output
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
			if resp.StatusCode == 200 && len(childrenOf(cmd.Process.Pid)) == gunicornWorkers {
				return url, cmd.Process.Pid
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
		fmt.Fprintf(w, "%-5s %-16s %12s %10s %9s %8s %16s\n", "round", "server", "requests/s", "p99 ms", "requests", "failed", "cpu ms/1k req")
		for i, s := range samples {
			fmt.Fprintf(w, "%-5d %-16s %12.0f %10.2f %9d %8d %16.1f\n", i/2+1, s.side, s.wrk.rps, ms(s.wrk.p99), s.wrk.requests, s.wrk.socketErrors()+s.wrk.non2xx, s.cpuPerKRequest())
		}
		c := compareGunicorn(samples)
		fmt.Fprintf(w, "medians: gunicorn %.0f req/s, p99 %.2f ms, %.1f cpu ms/1k req; forkd.gunicorn %.0f req/s, p99 %.2f ms, %.1f cpu ms/1k req\n",
			c.plain.rps, c.plain.p99, c.plain.cpu, c.forkd.rps, c.forkd.p99, c.forkd.cpu)
		fmt.Fprintf(w, "forkd.gunicorn's CPU per request: %.3f x gunicorn's (the median of the rounds' ratios)\n", c.cpuRatio)
		fmt.Fprintln(w, "targets: forkd.gunicorn within 5 % of gunicorn (the median of the rounds' ratios):")
		fmt.Fprintf(w, "  requests/s %.3f x gunicorn's: %s\n", c.rpsRatio, verdict(c.rpsRatio >= 0.95))
		fmt.Fprintf(w, "  p99        %.3f x gunicorn's: %s\n", c.p99Ratio, verdict(c.p99Ratio <= 1.05))
	}
}
