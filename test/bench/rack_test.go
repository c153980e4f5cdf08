package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// Rack apps (issue 6): test/benchrack/config.ru under forkd in fork-worker mode (forkd-rack, on
// Puma::Server) next to the same app under Puma's own cluster in fork_worker mode (`puma
// --fork-worker`), with the same worker and thread counts, both on 127.0.0.1, both alive for the
// whole benchmark and measured in turns (which one goes first alternates), so that the machine's
// other work weighs on both alike. BenchmarkRack prints its table in the summary
// (printRackSummary): each row's forkd and Puma values, their spread, the ratio, and whether
// forkd beats Puma; under it, the evidence: each process's memory by kind, the timelines of the
// rollouts, a bare fork next to the SDK's double fork.
//
// What each row measures, and how, on each side:
//
//   - PSS: /proc/PID/smaps_rollup of every worker, summed, and of the master, read the same way
//     for both. After boot (rackMemSamples samples), and after each timed refork (the first
//     comes after a second of load, so that worker 0 has served); the median total is reported.
//   - refork: forkd `forkctl refork --wait`, wall time of the forkctl process; Puma, from the
//     SIGURG sent to its master to the arrival of the master's "- Worker N (PID: P) booted in
//     ..., phase: K" line for the last of workers 1..n-1 in the new phase. That line is the
//     earliest moment Puma itself knows (it prints it when it reads the worker's boot message;
//     its stdout is unbuffered), and it arrives on a pipe, so it is timed to the microsecond;
//     polling `pumactl stats` could only be later. The report also gives each side's own log
//     view (forkd: its start and done records; Puma: its restart line to the last booted line).
//   - phased restart: forkd `forkctl reload --wait`; Puma, SIGUSR1 to the last of the n workers
//     "booted" in the new phase.
//   - latency: the paced load of BenchmarkLatency (runLoad), latencyWindow long, at steady
//     state, with reforks, and with phased restarts, rackLatencyReps windows of each on each
//     server; the rollouts are paced (rackWindow), and failures are summed over the windows.
//
// The servers' settings are the same where both have one: workers, threads (0..5), the shutdown
// timeout (forkd's timeouts.shutdown = "5s" of startMaster, Puma's worker_shutdown_timeout),
// production mode, no automatic refork (Puma: --fork-worker=0, forkd: refork_after = []). Puma
// keeps its other defaults, worker_check_interval (5 s) included: the rows say what it costs.
//
// Two things of Puma 5.6's that a benchmark of it meets, found here (the report shows them when
// they happen):
//   - Its SIGURG trap raises worker 0's phase at once, but the cluster's phase only on the next
//     turn of the master's loop; a check_workers in between takes worker 0 for an old worker and
//     stops it, and the refork becomes a restart of every worker that orphans workers 1..n-1
//     (~15 s, see the phased restart row). Sent right after the previous refork's last "booted"
//     line, as a first version of this benchmark did, about one SIGURG in a hundred hit it (and
//     one run stalled for good: three workers that worker 0 never forked, a cause not pinned
//     down); waiting for /stats to show the cluster settled first makes it rarer, not impossible.
//   - A worker asked to stop under steady keep-alive load may not stop: Puma::Server's accept
//     loop waits in ThreadPool#wait_until_not_full before it reads the stop command, and the
//     pool's threads keep serving their keep-alive connections (each new request arrives within
//     the 0.2 s fast-track wait). It lasts until those clients go quiet or the shutdown timeout
//     sends SIGKILL. forkd-rack runs the same Puma::Server, but wakes that wait when it stops
//     (sdk/ruby/lib/forkd/rack.rb, AcceptWaitEndsAtStop).

const (
	rackWorkers = 4
	rackThreads = 5
	rackAllocMB = 100
	rackDir     = "../benchrack"
	rubySDKDir  = "../../sdk/ruby"
	// rackReforkReps reforks and rackReloadReps phased restarts of each server are timed; Puma's
	// phased restarts take ~15 s each (see the report), hence fewer of them.
	rackReforkReps  = 9
	rackReloadReps  = 3
	rackLatencyReps = 3
	// rackRolloutEvery paces the rollouts of a latency window (rackWindow).
	rackRolloutEvery = 500 * time.Millisecond
	// rackMemSamples samples of the memory after boot; after reforks, one after each.
	rackMemSamples = 3
	// pumaToken authenticates the benchmark to Puma's control app.
	pumaToken = "forkd-bench"
	// rackShutdownTimeout is forkd's timeouts.shutdown in startMaster's config, given to Puma as
	// worker_shutdown_timeout.
	rackShutdownTimeout = 5 * time.Second
)

// rackRows are the latency rows: what runs during a window.
var rackRows = []string{"steady", "refork", "phased"}

// rackSide is one of the two servers under measurement.
type rackSide struct {
	name      string
	url       string
	masterPID int
	// workers returns the PIDs of the workers, in index order, once the cluster is settled (n
	// workers ready, no other process, no rollout).
	workers func() ([]int, error)
	// refork and reload run one rollout to its end and return how long it took as the row
	// measures it; logged is the same rollout in the server's log (forkd: start to done record;
	// Puma: the restart line to the last booted line), timeline where its time went. With settle,
	// they first wait for the cluster to settle (n workers ready, no other process: the previous
	// rollout's old workers gone), as the timed rollouts do; the latency windows' rollouts start
	// as soon as the previous one is done as its command reports it (forkd: forkctl returned,
	// with old workers possibly still draining, off the critical path by design). Puma's always
	// wait for /stats to show every worker booted in the current phase (pumaCluster.rollout),
	// which they are as soon as the last "booted" line is out: Puma replaces a worker only once
	// the old one is gone.
	refork, reload func(settle bool) (rackRollout, error)
}

type rackRollout struct {
	took, logged time.Duration
	timeline     string
	// started and done are when forkd's start and done records of the rollout arrived (zero when
	// either is missing).
	started, done time.Time
	// settle is how long the rollout waited for the cluster to settle before it started.
	settle time.Duration
}

// rackResult is what BenchmarkRack measured of one side.
type rackResult struct {
	version            string
	memBoot, memRefork rackMem
	reforks, reloads   []rackRollout
	windows            map[string][]windowStats
	masterCPU          map[string]float64 // per row: the master's CPU ms/s over its windows
	// rollouts are, per row, the rollouts of the windows; busy the machine's CPU use during each
	// window, in cores (/proc/stat: every process, the load generator's included).
	rollouts map[string][]rackRollout
	busy     map[string][]float64
	// problems are what the server complained about during the benchmark: forkd's WARN and
	// ERROR records, Puma's "!" lines and its SIGKILLs of workers that did not stop in time.
	problems []string
}

// rackMem is one side's memory: the sample of median total (after boot, of rackMemSamples
// samples; after reforks, of one sample after each), with every sample's total.
type rackMem struct {
	workers, master uint64 // PSS, bytes
	perWorker       []rollup
	masterRollup    rollup
	totals          []uint64 // every sample's total, for the spread
}

func (m rackMem) total() uint64 { return m.workers + m.master }

var rackResults = map[string]*rackResult{}

// BenchmarkRack: see the top of this file.
func BenchmarkRack(b *testing.B) {
	ruby, puma := requireRackTools(b)
	load := loadAvg()
	started := time.Now()

	// The floor first, while nothing else of ours runs.
	rubyForkFloor(b, ruby)
	fm := startForkdRack(b, ruby, benchRackApp)
	fside := forkdRackSide(b, fm)
	pc := startPuma(b, puma, benchRackApp)
	pside := pc.side()
	sides := []*rackSide{fside, pside}
	res := map[string]*rackResult{
		"forkd": {version: forkdVersion(fm), windows: map[string][]windowStats{}, masterCPU: map[string]float64{}, rollouts: map[string][]rackRollout{}, busy: map[string][]float64{}},
		"puma":  {version: pc.version, windows: map[string][]windowStats{}, masterCPU: map[string]float64{}, rollouts: map[string][]rackRollout{}, busy: map[string][]float64{}},
	}
	// turn alternates which side goes first.
	turn := func(i int) []*rackSide {
		if i%2 == 0 {
			return sides
		}
		return []*rackSide{sides[1], sides[0]}
	}
	fatal := func(s *rackSide, what string, err error) {
		b.Helper()
		out := fm.out.String()
		if s.name == "puma" {
			out = pc.out.String()
		}
		b.Fatalf("%s: %s: %v\noutput:\n%s", s.name, what, err, out)
	}

	// 1. Memory after boot: rackMemSamples samples half a second apart.
	for _, s := range sides {
		mem, err := sampleRackMem(s, rackMemSamples, 500*time.Millisecond)
		if err != nil {
			fatal(s, "memory after boot", err)
		}
		res[s.name].memBoot = medianMem(mem)
	}
	// Warm both up: connections, code paths, and a worker 0 that has served before the reforks.
	for _, s := range sides {
		runLoad(s.url+"/", latencyWarmup)
	}

	// 2. Reforks, and the memory after each.
	memRefork := map[string][]rackMem{}
	for i := range rackReforkReps {
		for _, s := range turn(i) {
			r, err := s.refork(true)
			if err != nil {
				fatal(s, fmt.Sprintf("refork %d", i+1), err)
			}
			res[s.name].reforks = append(res[s.name].reforks, r)
			mem, err := sampleRackMem(s, 1, 0)
			if err != nil {
				fatal(s, "memory after the refork", err)
			}
			memRefork[s.name] = append(memRefork[s.name], mem...)
		}
	}
	for _, s := range sides {
		res[s.name].memRefork = medianMem(memRefork[s.name])
	}
	// 3. Phased restarts.
	for i := range rackReloadReps {
		for _, s := range turn(i) {
			r, err := s.reload(true)
			if err != nil {
				fatal(s, fmt.Sprintf("phased restart %d", i+1), err)
			}
			res[s.name].reloads = append(res[s.name].reloads, r)
		}
	}
	// 4. Latency: for each rep, each row on both sides in turn.
	cpu := map[string]map[string][2]time.Duration{} // side -> row -> master CPU, elapsed
	for i := range rackLatencyReps {
		for _, row := range rackRows {
			for _, s := range turn(i) {
				if _, err := s.workers(); err != nil {
					fatal(s, "settling before a "+row+" window", err)
				}
				var action func() (rackRollout, error)
				switch row {
				case "refork":
					action = func() (rackRollout, error) { return s.refork(false) }
				case "phased":
					action = func() (rackRollout, error) { return s.reload(false) }
				}
				ws, rollouts, cores := rackWindow(s.masterPID, s.url+"/", action)
				res[s.name].windows[row] = append(res[s.name].windows[row], ws)
				res[s.name].busy[row] = append(res[s.name].busy[row], cores)
				res[s.name].rollouts[row] = append(res[s.name].rollouts[row], rollouts...)
				if cpu[s.name] == nil {
					cpu[s.name] = map[string][2]time.Duration{}
				}
				c := cpu[s.name][row]
				cpu[s.name][row] = [2]time.Duration{c[0] + ws.masterCPU, c[1] + ws.elapsed}
			}
		}
	}
	for _, s := range sides {
		if _, err := s.workers(); err != nil {
			fatal(s, "settling after the last window", err)
		}
		for row, c := range cpu[s.name] {
			res[s.name].masterCPU[row] = ms(c[0]) / c[1].Seconds()
		}
	}
	for _, s := range sides {
		for _, row := range rackRows {
			for _, ws := range res[s.name].windows[row] {
				if len(ws.rolloutErrs) > 0 {
					b.Errorf("%s: a rollout of a %s window failed: %s", s.name, row, ws.rolloutErrs[0])
				}
			}
		}
	}
	res["forkd"].problems = nonEmpty(strings.Split(problems(fm.out), "\n"))
	res["puma"].problems = pumaProblems(pc.out.String())
	fm.stop()
	pc.stop()

	for name, r := range res {
		rackResults[name] = r
		prefix := name + "-"
		var failed [3]float64
		var p99 [3]float64
		for i, row := range rackRows {
			failed[i], p99[i] = rackFailed(r.windows[row]), ms(rackP99(r.windows[row]))
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(mb(r.memBoot.total()), prefix+"pss-boot-MB")
		b.ReportMetric(mb(r.memRefork.total()), prefix+"pss-refork-MB")
		b.ReportMetric(ms(median(tooks(r.reforks))), prefix+"refork-ms")
		b.ReportMetric(ms(median(tooks(r.reloads))), prefix+"phased-ms")
		for i, row := range rackRows {
			b.ReportMetric(p99[i], prefix+row+"-p99-ms")
			b.ReportMetric(failed[i], prefix+row+"-failed")
		}
	}
	rackInfo = fmt.Sprintf("%d workers x %d threads, test/benchrack/config.ru with %d MiB at boot, on 127.0.0.1; %s vs %s; "+
		"%s in %s", rackWorkers, rackThreads, rackAllocMB, res["forkd"].version, res["puma"].version, busy(load), time.Since(started).Round(time.Second))
	b.Logf("\n%s", rackInfo)
}

// rackInfo is the benchmark's one-line context for the summary.
var rackInfo string

func tooks(rs []rackRollout) []time.Duration {
	var ds []time.Duration
	for _, r := range rs {
		ds = append(ds, r.took)
	}
	return ds
}

func loggeds(rs []rackRollout) []time.Duration {
	var ds []time.Duration
	for _, r := range rs {
		ds = append(ds, r.logged)
	}
	return ds
}

// requireRackTools returns the paths of ruby and puma, or skips the benchmark.
func requireRackTools(b *testing.B) (ruby, puma string) {
	b.Helper()
	ruby, err := exec.LookPath("ruby")
	if err != nil {
		b.Skip("ruby is not installed: apt-get install -y ruby puma ruby-rack")
	}
	puma, err = exec.LookPath("puma")
	if err != nil {
		b.Skip("puma is not installed: apt-get install -y puma")
	}
	out, err := exec.Command(ruby, "-e", `require "puma"; require "rack"; abort "Ruby 3.1+ needed" if RUBY_VERSION < "3.1"`).CombinedOutput()
	if err != nil {
		b.Skipf("ruby cannot load puma and rack (%v: %s): apt-get install -y ruby puma ruby-rack", err, strings.TrimSpace(string(out)))
	}
	return ruby, puma
}

// rackApp is what both servers run: a rackup file of rackDir with its environment, and the
// fork-worker settings each server has for the same behaviour.
type rackApp struct {
	rackup string
	env    map[string]string
	// forkdRackArgs are more of forkd-rack's flags.
	forkdRackArgs []string
	// forkBlock is forkd's fork_worker block; pumaForkWorker the value of Puma's --fork-worker
	// (its worker 0's requests before its one automatic refork; 0: none).
	forkBlock      string
	pumaForkWorker int
}

// benchRackApp is BenchmarkRack's: config.ru, no automatic refork.
var benchRackApp = rackApp{
	rackup:    "config.ru",
	env:       map[string]string{"BENCHRACK_ALLOC_MB": strconv.Itoa(rackAllocMB)},
	forkBlock: forkWorkerBlock,
}

// ---- forkd ------------------------------------------------------------------------------------

func startForkdRack(b *testing.B, ruby string, app rackApp) *master {
	b.Helper()
	sdk := absPath(b, rubySDKDir)
	env := map[string]string{"RACK_ENV": "production"}
	for k, v := range app.env {
		env[k] = v
	}
	m := startMaster(b, masterConfig{
		workers: rackWorkers,
		command: append(append([]string{ruby, "-I", filepath.Join(sdk, "lib"), filepath.Join(sdk, "bin", "forkd-rack"), "--threads", fmt.Sprintf("0:%d", rackThreads)},
			app.forkdRackArgs...), app.rackup),
		directory: absPath(b, rackDir),
		env:       env,
		extra:     app.forkBlock,
	})
	if st := m.settled(rackWorkers); st.Mode != control.ModeFork {
		b.Fatalf("forkd-rack: mode %q, want fork\noutput:\n%s", st.Mode, m.out.String())
	}
	return m
}

func forkdVersion(m *master) string {
	if v := m.status().Version; v != "" {
		return v
	}
	return "forkd"
}

func forkdRackSide(b *testing.B, m *master) *rackSide {
	b.Helper()
	s := &rackSide{name: "forkd", url: "http://" + m.addr(), masterPID: m.pid}
	// The workers a rollout replaced, still draining when forkctl returned. Settling waits for
	// their exit records rather than polling the status API every 20 ms: each status answer
	// reads every worker's smaps_rollup, which for ~120 MB Ruby processes costs the master
	// milliseconds of CPU, and the master's CPU is measured.
	var current, draining []int
	var drainingSince time.Time
	s.workers = func() ([]int, error) {
		if err := awaitExits(m, draining, drainingSince, settleDeadline); err != nil {
			return nil, err
		}
		draining = nil
		st, err := m.tryWaitFor("settled", settledCond(rackWorkers), settleDeadline)
		if err != nil {
			return nil, err
		}
		current = nil
		for _, w := range st.WorkerList {
			current = append(current, w.PID)
		}
		return current, nil
	}
	rollout := func(cmd string) func(bool) (rackRollout, error) {
		return func(settle bool) (rackRollout, error) {
			begin := time.Now()
			var old []int
			if settle {
				var err error
				if old, err = s.workers(); err != nil {
					return rackRollout{}, err
				}
			}
			t0 := time.Now()
			r, err := runForkctl(m.socket, cmd, "--wait")
			if err == nil && r.code != 0 {
				err = fmt.Errorf("forkctl %s --wait: exit %d: %s", cmd, r.code, strings.TrimSpace(r.out))
			}
			if err != nil {
				return rackRollout{}, err
			}
			// A refork replaces workers 1..n-1, a reload every worker. (Without settle, the
			// next call of s.workers polls the status until the old workers are gone.)
			if settle {
				draining, drainingSince = old[1:], t0
				if cmd == "reload" {
					draining = old
				}
			}
			out := rackRollout{took: r.took}
			if settle {
				out.settle = t0.Sub(begin)
			}
			// The start and done records arrived before forkctl's answer.
			var start, done *logEvent
			for _, ev := range m.out.since("", t0) {
				if ev.kind == cmd+"-start" && start == nil {
					start = &ev
				}
				if ev.kind == cmd+"-done" && done == nil {
					done = &ev
				}
			}
			if start != nil && done != nil {
				out.logged = done.at.Sub(start.at)
				out.started, out.done = start.at, done.at
				out.timeline = fmt.Sprintf("forkctl started 0.0, start record %.1f: %s", ms(start.at.Sub(t0)),
					rolloutTimeline(m.out.since("", start.at), start.at, done.at))
			}
			return out, nil
		}
	}
	s.refork, s.reload = rollout("refork"), rollout("reload")
	return s
}

// awaitExits waits for forkd's exit record of each of pids, logged at or after t.
func awaitExits(m *master, pids []int, t time.Time, deadline time.Duration) error {
	timeout := time.NewTimer(deadline)
	defer timeout.Stop()
	for {
		m.out.mu.Lock()
		changed := m.out.changed
		m.out.mu.Unlock()
		exited := map[int]bool{}
		for _, ev := range m.out.since("worker-exited", t) {
			exited[ev.pid] = true
		}
		var left []int
		for _, pid := range pids {
			if !exited[pid] {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return nil
		}
		select {
		case <-changed:
		case <-m.done:
			return fmt.Errorf("forkd exited (%v)", m.waitErr)
		case <-timeout.C:
			return fmt.Errorf("workers %v did not exit within %s", left, deadline)
		}
	}
}

// ---- Puma -------------------------------------------------------------------------------------

// pumaCluster is `puma --fork-worker` under measurement.
type pumaCluster struct {
	tb      testing.TB
	cmd     *exec.Cmd
	pid     int
	addr    string
	ctl     string // the control app's unix socket
	version string
	out     *pumaLog
	done    chan struct{}
	waitErr error
	stopped sync.Once
	// phase is the phase of the last rollout the benchmark ran (Puma's @phase).
	phase int
}

func startPuma(b *testing.B, puma string, app rackApp) *pumaCluster {
	b.Helper()
	dir := b.TempDir()
	p := &pumaCluster{tb: b, ctl: filepath.Join(dir, "puma-control.sock"), out: newPumaLog(), done: make(chan struct{})}
	// Everything on the command line but the one setting that has no flag: the shutdown timeout,
	// set to forkd's in this benchmark (startMaster: timeouts.shutdown = "5s"; both default to
	// 30 s). An old worker that has not exited that long after its SIGTERM gets SIGKILL, on both.
	conf := filepath.Join(dir, "puma.rb")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("worker_shutdown_timeout %d\n", int(rackShutdownTimeout.Seconds()))), 0o644); err != nil {
		b.Fatal(err)
	}
	p.cmd = exec.Command(puma, "--config", conf, "--environment", "production",
		"--workers", strconv.Itoa(rackWorkers), "--threads", fmt.Sprintf("0:%d", rackThreads), "--fork-worker="+strconv.Itoa(app.pumaForkWorker),
		"--bind", "tcp://127.0.0.1:0", "--control-url", "unix://"+p.ctl, "--control-token", pumaToken, app.rackup)
	p.cmd.Dir = absPath(b, rackDir)
	p.cmd.SysProcAttr = serverSession()
	p.cmd.Env = os.Environ()
	for k, v := range app.env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.WaitDelay = 5 * time.Second
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p.pid = p.cmd.Process.Pid
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	b.Cleanup(p.stop)
	listening, err := p.out.await(time.Time{}, waitDeadline, p.done, func(lines []timedLine) (bool, error) {
		for _, l := range lines {
			if pumaListeningRE.MatchString(l.line) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		b.Fatalf("puma: %v\noutput:\n%s", err, p.out.String())
	}
	for _, l := range listening {
		if m := pumaListeningRE.FindStringSubmatch(l.line); m != nil && p.addr == "" {
			p.addr = m[1]
		}
		if m := pumaVersionRE.FindStringSubmatch(l.line); m != nil {
			p.version = "puma " + m[1]
		}
	}
	st, err := p.settled(waitDeadline)
	if err != nil {
		b.Fatalf("puma: %v\noutput:\n%s", err, p.out.String())
	}
	p.phase = st.Phase
	return p
}

var (
	pumaListeningRE = regexp.MustCompile(`Listening on http://(\S+:\d+)`)
	pumaVersionRE   = regexp.MustCompile(`Puma version: (\S+ \(ruby [^)]*\))`)
	pumaBootedRE    = regexp.MustCompile(`- Worker (\d+) \(PID: (\d+)\) booted in ([\d.]+)s, phase: (\d+)`)
	pumaRestartRE   = regexp.MustCompile(`- Starting phased worker restart, phase: (\d+)`)
	pumaStoppingRE  = regexp.MustCompile(`- Stopping (\d+) for phased upgrade`)
)

// pumaStats is what Puma's control app answers on /stats in cluster mode.
type pumaStats struct {
	Workers       int `json:"workers"`
	Phase         int `json:"phase"`
	BootedWorkers int `json:"booted_workers"`
	OldWorkers    int `json:"old_workers"`
	WorkerStatus  []struct {
		PID    int  `json:"pid"`
		Index  int  `json:"index"`
		Phase  int  `json:"phase"`
		Booted bool `json:"booted"`
	} `json:"worker_status"`
}

// stats asks Puma's control app (what `pumactl stats` does) on a connection of its own.
func (p *pumaCluster) stats(ctx context.Context) (pumaStats, error) {
	var st pumaStats
	return st, getJSONOverUnix(ctx, p.ctl, "http://puma/stats?token="+pumaToken, 1<<20, &st)
}

// settled polls /stats until n workers are booted, all in the current phase, and no old one is
// left (Puma stops an old worker before it starts its replacement, so none drains after).
func (p *pumaCluster) settled(deadline time.Duration) (pumaStats, error) {
	end := time.Now().Add(deadline)
	var last pumaStats
	var lastErr error
	for time.Now().Before(end) {
		select {
		case <-p.done:
			return last, fmt.Errorf("puma exited (%v)", p.waitErr)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := p.stats(ctx)
		cancel()
		if err == nil {
			last = st
			ok := st.Workers == rackWorkers && st.BootedWorkers == rackWorkers && st.OldWorkers == 0 && len(st.WorkerStatus) == rackWorkers
			for _, w := range st.WorkerStatus {
				ok = ok && w.Booted && w.Phase == st.Phase && w.PID > 0 && !processGone(w.PID)
			}
			if ok {
				sort.Slice(st.WorkerStatus, func(i, j int) bool { return st.WorkerStatus[i].Index < st.WorkerStatus[j].Index })
				return st, nil
			}
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	return last, fmt.Errorf("timed out after %s waiting for %d booted workers in one phase: last stats %+v (error %v)", deadline, rackWorkers, last, lastErr)
}

// rollout waits for Puma to settle (/stats: every worker booted in the current phase), then
// sends sig to its master and waits for the "booted" lines of the workers it replaces in the next
// phase: SIGURG (refork: workers 1..n-1, forked again from worker 0) or SIGUSR1 (phased restart:
// every worker, worker 0 first).
//
// The wait for /stats is not only politeness: Puma's SIGURG trap raises worker 0's phase at once,
// but the cluster's phase only on the next turn of the master's loop; a check_workers in between
// (one runs right after each worker's boot message) takes worker 0 for an old worker and stops it,
// turning the refork into a restart of worker 0 that orphans the others. Seen with SIGURGs sent
// the moment the previous refork's last "booted" line arrived.
func (p *pumaCluster) rollout(sig syscall.Signal, indexes int) (rackRollout, error) {
	begin := time.Now()
	st, err := p.settled(settleDeadline)
	if err != nil {
		return rackRollout{}, err
	}
	phase := st.Phase + 1
	want := map[string]bool{}
	for i := rackWorkers - indexes; i < rackWorkers; i++ {
		want[strconv.Itoa(i)] = true
	}
	t0 := time.Now()
	if err := syscall.Kill(p.pid, sig); err != nil {
		return rackRollout{}, err
	}
	lines, err := p.out.await(t0, waitDeadline, p.done, func(lines []timedLine) (bool, error) {
		return len(pumaBoots(lines, phase, want)) == len(want), nil
	})
	if err != nil {
		return rackRollout{}, fmt.Errorf("%s: workers %v booted in phase %d: %w", sig, want, phase, err)
	}
	boots := pumaBoots(lines, phase, want)
	done := boots[len(boots)-1].at
	r := rackRollout{took: done.Sub(t0), timeline: pumaTimeline(lines, t0, done), settle: t0.Sub(begin)}
	for _, l := range lines {
		if m := pumaRestartRE.FindStringSubmatch(l.line); m != nil && m[1] == strconv.Itoa(phase) {
			r.logged = done.Sub(l.at)
			break
		}
	}
	return r, nil
}

// pumaBoots returns the first "booted" line in phase of each worker index in want, in order.
func pumaBoots(lines []timedLine, phase int, want map[string]bool) []timedLine {
	seen := map[string]bool{}
	var out []timedLine
	for _, l := range lines {
		if m := pumaBootedRE.FindStringSubmatch(l.line); m != nil && m[4] == strconv.Itoa(phase) && want[m[1]] && !seen[m[1]] {
			seen[m[1]] = true
			out = append(out, l)
		}
	}
	return out
}

// pumaTimeline lists a Puma rollout's lines as offsets from the signal: "restart 0.3, term 18302
// 0.4, w1 booted 160.2 (boot 0.01s), ..., done 480.0".
func pumaTimeline(lines []timedLine, t0, done time.Time) string {
	var parts []string
	for _, l := range lines {
		if l.at.After(done) {
			break
		}
		off := fmt.Sprintf("%.1f", ms(l.at.Sub(t0)))
		switch {
		case pumaRestartRE.MatchString(l.line):
			parts = append(parts, "restart "+off)
		case pumaStoppingRE.MatchString(l.line):
			parts = append(parts, fmt.Sprintf("term pid %s %s", pumaStoppingRE.FindStringSubmatch(l.line)[1], off))
		case pumaBootedRE.MatchString(l.line):
			m := pumaBootedRE.FindStringSubmatch(l.line)
			parts = append(parts, fmt.Sprintf("w%s booted %s (its own boot %ss)", m[1], off, m[3]))
		}
	}
	parts = append(parts, fmt.Sprintf("done %.1f", ms(done.Sub(t0))))
	return "SIGNAL 0.0, " + strings.Join(parts, ", ")
}

func (p *pumaCluster) side() *rackSide {
	s := &rackSide{name: "puma", url: "http://" + p.addr, masterPID: p.pid}
	s.workers = func() ([]int, error) {
		st, err := p.settled(settleDeadline)
		if err != nil {
			return nil, err
		}
		var pids []int
		for _, w := range st.WorkerStatus {
			pids = append(pids, w.PID)
		}
		return pids, nil
	}
	// Puma's rollouts always wait for it to settle first (see rollout).
	rollout := func(sig syscall.Signal, indexes int) func(bool) (rackRollout, error) {
		return func(bool) (rackRollout, error) { return p.rollout(sig, indexes) }
	}
	s.refork, s.reload = rollout(syscall.SIGURG, rackWorkers-1), rollout(syscall.SIGUSR1, rackWorkers)
	return s
}

// stop ends Puma (SIGTERM: it stops its workers and exits; SIGKILL after stopDeadline), then
// kills by PID any of its workers still running: one forked by worker 0 is not the master's
// child, and outlives a master that was killed.
func (p *pumaCluster) stop() {
	p.stopped.Do(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(stopDeadline):
				p.tb.Errorf("puma did not exit within %s of SIGTERM: SIGKILL", stopDeadline)
				p.cmd.Process.Signal(syscall.SIGKILL)
				<-p.done
			}
		}
		killSurvivors(p.tb, p.out.workerPIDs(), p.ours, "puma")
	})
}

// ours reports whether pid is a worker of this Puma: its title is "puma: cluster worker I: MASTER".
func (p *pumaCluster) ours(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && regexp.MustCompile(fmt.Sprintf(`puma: cluster worker \d+: %d\b`, p.pid)).Match(b)
}

// pumaLog collects Puma's output, every line with the time it arrived.
type pumaLog struct {
	mu      sync.Mutex
	all     bytes.Buffer
	part    []byte
	lines   []timedLine
	pids    []int
	changed chan struct{}
}

func newPumaLog() *pumaLog { return &pumaLog{changed: make(chan struct{})} }

func (l *pumaLog) Write(p []byte) (int, error) {
	at := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all.Write(p)
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		line := string(l.part[:i])
		l.lines = append(l.lines, timedLine{at, line})
		if m := pumaBootedRE.FindStringSubmatch(line); m != nil {
			pid, _ := strconv.Atoi(m[2])
			l.pids = append(l.pids, pid)
		}
		l.part = l.part[i+1:]
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

// await waits until done(the lines that arrived at or after t) says so, and returns those lines.
func (l *pumaLog) await(t time.Time, deadline time.Duration, exited chan struct{}, done func([]timedLine) (bool, error)) ([]timedLine, error) {
	timeout := time.NewTimer(deadline)
	defer timeout.Stop()
	for {
		l.mu.Lock()
		changed := l.changed
		var lines []timedLine
		for _, tl := range l.lines {
			if !tl.at.Before(t) {
				lines = append(lines, tl)
			}
		}
		l.mu.Unlock()
		if ok, err := done(lines); err != nil || ok {
			return lines, err
		}
		select {
		case <-changed:
		case <-exited:
			return lines, fmt.Errorf("puma exited")
		case <-timeout.C:
			return lines, fmt.Errorf("timed out after %s", deadline)
		}
	}
}

func (l *pumaLog) workerPIDs() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int(nil), l.pids...)
}

func (l *pumaLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}

func nonEmpty(ss []string) []string {
	var out []string
	for _, s := range ss {
		if strings.TrimSpace(s) != "" {
			out = append(out, strings.TrimSpace(s))
		}
	}
	return out
}

var pumaProblemRE = regexp.MustCompile(`\] (!|- KILL sent)`)

// pumaProblems returns Puma's warnings and errors ("! ..." lines) and its SIGKILLs.
func pumaProblems(out string) []string {
	var ps []string
	for _, line := range strings.Split(out, "\n") {
		if pumaProblemRE.MatchString(line) {
			ps = append(ps, strings.TrimSpace(line))
		}
	}
	return ps
}

// rubyForkFloorScript times, in a Ruby process that loaded test/benchrack/config.ru and Puma as
// both servers' workers do, argv[0] forks of each kind after 3 unmeasured ones: "single", fork
// until the child has written a byte to a pipe (Puma's worker 0 forks each worker so, and goes
// on); "double", the Ruby SDK's double fork as its template makes it per worker before it answers
// the master (sdk/ruby/lib/forkd/runtime.rb, double_fork): fork an intermediate child, which
// forks the worker, writes its PID to a pipe and exit!s; read the PID, reap the intermediate. It
// prints the times in ns, one line per kind.
const rubyForkFloorScript = `
require "puma"
require "rack"
require "rack/builder"
Rack::Builder.parse_file("config.ru")
n = Integer(ARGV[0], 10)
now = -> { Process.clock_gettime(Process::CLOCK_MONOTONIC, :nanosecond) }
single = (n + 3).times.map do
  r, w = IO.pipe
  t0 = now.()
  pid = fork { r.close; w.write("x"); exit!(0) }
  w.close
  r.read(1)
  t = now.() - t0
  r.close
  Process.waitpid(pid)
  t
end
double = (n + 3).times.map do
  r, w = IO.pipe
  t0 = now.()
  pid = fork do
    r.close
    worker = fork { w.close; exit!(0) }
    w.write("#{worker}\n")
    exit!(0)
  end
  w.close
  r.gets
  r.close
  Process.waitpid(pid)
  now.() - t0
end
puts single.drop(3).join(" "), double.drop(3).join(" ")
`

// rackFloor holds rubyForkFloor's times.
var rackFloor struct{ single, double []time.Duration }

const rackFloorForks = 30

func rubyForkFloor(b *testing.B, ruby string) {
	b.Helper()
	cmd := exec.Command(ruby, "-e", rubyForkFloorScript, strconv.Itoa(rackFloorForks))
	cmd.Dir = absPath(b, rackDir)
	cmd.Env = append(os.Environ(), "BENCHRACK_ALLOC_MB="+strconv.Itoa(rackAllocMB))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("ruby fork floor: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 {
		b.Fatalf("ruby fork floor printed %q", out)
	}
	for i, into := range []*[]time.Duration{&rackFloor.single, &rackFloor.double} {
		for _, f := range strings.Fields(lines[i]) {
			ns, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				b.Fatalf("ruby fork floor printed %q", out)
			}
			*into = append(*into, time.Duration(ns))
		}
	}
}

// ---- measurements -----------------------------------------------------------------------------

// rollup is the part of /proc/PID/smaps_rollup the report shows, in bytes.
type rollup struct {
	rss, pss, pssAnon, pssFile, sharedClean, sharedDirty, privateClean, privateDirty uint64
	// dirtyHeap, dirtyAnon, dirtyStack and dirtyFile split privateDirty by mapping (from
	// /proc/PID/smaps): [heap] (malloc's brk heap, where Ruby 3.1 keeps its object heap pages),
	// other anonymous mappings (thread stacks, big mallocs), [stack], and files.
	dirtyHeap, dirtyAnon, dirtyStack, dirtyFile uint64
}

func readRollup(pid int) (rollup, error) {
	var r rollup
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return r, err
	}
	fields := map[string]*uint64{"Rss": &r.rss, "Pss": &r.pss, "Pss_Anon": &r.pssAnon, "Pss_File": &r.pssFile,
		"Shared_Clean": &r.sharedClean, "Shared_Dirty": &r.sharedDirty, "Private_Clean": &r.privateClean, "Private_Dirty": &r.privateDirty}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if p := fields[k]; ok && p != nil {
			*p = uint64(kB(v)) << 10
		}
	}
	if r.pss == 0 {
		return r, fmt.Errorf("pid %d: no Pss in smaps_rollup", pid)
	}
	smaps, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return r, err
	}
	var into *uint64
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			// A mapping's header: address range, perms, offset, device, inode[, name].
			name := ""
			if len(f) >= 6 {
				name = f[5]
			}
			switch {
			case name == "[heap]":
				into = &r.dirtyHeap
			case name == "[stack]":
				into = &r.dirtyStack
			case strings.HasPrefix(name, "/"):
				into = &r.dirtyFile
			default:
				into = &r.dirtyAnon
			}
		case len(f) >= 2 && f[0] == "Private_Dirty:" && into != nil:
			*into += uint64(kB(f[1])) << 10
		}
	}
	return r, nil
}

// sampleRackMem reads the PSS of s's settled workers and of its master n times, every apart.
func sampleRackMem(s *rackSide, n int, every time.Duration) ([]rackMem, error) {
	var samples []rackMem
	for i := range n {
		if i > 0 {
			time.Sleep(every)
		}
		pids, err := s.workers()
		if err != nil {
			return nil, err
		}
		var m rackMem
		for _, pid := range pids {
			r, err := readRollup(pid)
			if err != nil {
				return nil, err
			}
			m.perWorker = append(m.perWorker, r)
			m.workers += r.pss
		}
		if m.masterRollup, err = readRollup(s.masterPID); err != nil {
			return nil, err
		}
		m.master = m.masterRollup.pss
		samples = append(samples, m)
	}
	return samples, nil
}

// medianMem returns the sample of median total, with every sample's total.
func medianMem(samples []rackMem) rackMem {
	totals := make([]uint64, len(samples))
	for i, m := range samples {
		totals[i] = m.total()
	}
	mid := samples[medianIndex(totals)]
	mid.totals = totals
	return mid
}

// rackWindow runs the load against url for latencyWindow while action (none for steady state)
// runs in a loop, a rollout every rackRolloutEvery at most: the next starts once the previous is
// done and that much time has passed since it started. Back to back, as BenchmarkLatency runs
// them, a side whose rollouts are shorter (Puma's reforks, which leave nothing draining) would
// make several times more of them per window than the other, and the rows would compare
// different amounts of rollout; paced, both sides refork ~latencyWindow/rackRolloutEvery times
// per window. The rollout in flight at the end completes, outside the window, and counts.
func rackWindow(masterPID int, url string, action func() (rackRollout, error)) (windowStats, []rackRollout, float64) {
	var ws windowStats
	var done []rackRollout
	busy0, total0 := machineCPU()
	cpu0, t0 := processCPU(masterPID), time.Now()
	stop := make(chan struct{})
	var rollouts sync.WaitGroup
	if action != nil {
		rollouts.Add(1)
		go func() {
			defer rollouts.Done()
			for next := time.Now(); ; {
				select {
				case <-stop:
					return
				case <-time.After(time.Until(next)):
				}
				select {
				case <-stop:
					return
				default:
				}
				next = time.Now().Add(rackRolloutEvery)
				r, err := action()
				if err != nil {
					ws.rolloutErrs = append(ws.rolloutErrs, err.Error())
					return
				}
				ws.rollouts++
				ws.rolloutTimes = append(ws.rolloutTimes, r.took)
				done = append(done, r)
			}
		}()
	}
	res := runLoad(url, latencyWindow)
	busy1, total1 := machineCPU()
	close(stop)
	rollouts.Wait()
	ws.masterCPU, ws.elapsed = processCPU(masterPID)-cpu0, time.Since(t0)
	var cores float64
	if total1 > total0 {
		cores = float64(busy1-busy0) / float64(total1-total0) * float64(runtime.NumCPU())
	}
	lat := res.latencies(nil)
	ws.p50, ws.p99, ws.max = quantile(lat, 0.5), quantile(lat, 0.99), quantile(lat, 1)
	ws.keepP99 = quantile(res.latencies(func(s reqSample) bool { return s.keepAlive }), 0.99)
	ws.freshP99 = quantile(res.latencies(func(s reqSample) bool { return !s.keepAlive }), 0.99)
	ws.slow, ws.slowReconnects, ws.slowFirsts = res.slowest()
	ws.ok, ws.failed, ws.errs = len(lat), res.failed, res.errs
	return ws, done, cores
}

// machineCPU reads the first line of /proc/stat: the ticks every CPU spent busy (neither idle
// nor waiting for I/O), and in all.
func machineCPU() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

func rackP99(ws []windowStats) time.Duration {
	var p99s []time.Duration
	for _, w := range ws {
		p99s = append(p99s, w.p99)
	}
	return median(p99s)
}

func rackFailed(ws []windowStats) float64 {
	n := 0
	for _, w := range ws {
		n += w.failed
	}
	return float64(n)
}

// ---- the report -------------------------------------------------------------------------------

// rackRow is one line of the comparison: lower is better on every row.
type rackRow struct {
	name        string
	forkd, puma float64
	fSpread     string // the spread of forkd's samples
	pSpread     string
	fLo, fHi    float64 // the range, to tell noise from a difference; equal when none
	pLo, pHi    float64
	integer     bool
}

func (r rackRow) verdict() string {
	switch {
	case r.forkd < r.puma:
		if r.fHi >= r.pLo && r.fLo <= r.pHi && (r.fLo != r.fHi || r.pLo != r.pHi) {
			return "yes (ranges overlap)"
		}
		return "yes"
	case r.forkd == r.puma:
		return "tie"
	default:
		if r.fHi >= r.pLo && r.fLo <= r.pHi && (r.fLo != r.fHi || r.pLo != r.pHi) {
			return "NO (ranges overlap)"
		}
		return "NO"
	}
}

func (r rackRow) ratio() string {
	switch {
	case r.puma == 0 && r.forkd == 0:
		return "-"
	case r.puma == 0:
		return "inf"
	default:
		return fmt.Sprintf("%.2fx", r.forkd/r.puma)
	}
}

func durRow(name string, f, p []time.Duration) rackRow {
	flo, fhi := minMax(f)
	plo, phi := minMax(p)
	return rackRow{name: name, forkd: ms(median(f)), puma: ms(median(p)),
		fSpread: fmt.Sprintf("%.0f..%.0f", ms(flo), ms(fhi)), pSpread: fmt.Sprintf("%.0f..%.0f", ms(plo), ms(phi)),
		fLo: ms(flo), fHi: ms(fhi), pLo: ms(plo), pHi: ms(phi)}
}

func memRow(name string, f, p rackMem, pick func(rackMem) uint64, spread bool) rackRow {
	r := rackRow{name: name, forkd: mb(pick(f)), puma: mb(pick(p))}
	r.fLo, r.fHi, r.pLo, r.pHi = r.forkd, r.forkd, r.puma, r.puma
	if spread {
		lo, hi := minMaxU(f.totals)
		r.fSpread, r.fLo, r.fHi = fmt.Sprintf("%.1f..%.1f", mb(lo), mb(hi)), mb(lo), mb(hi)
		lo, hi = minMaxU(p.totals)
		r.pSpread, r.pLo, r.pHi = fmt.Sprintf("%.1f..%.1f", mb(lo), mb(hi)), mb(lo), mb(hi)
	}
	return r
}

func minMaxU(vs []uint64) (lo, hi uint64) {
	for i, v := range vs {
		if i == 0 || v < lo {
			lo = v
		}
		if i == 0 || v > hi {
			hi = v
		}
	}
	return lo, hi
}

func rackTable(f, p *rackResult) []rackRow {
	workers := func(m rackMem) uint64 { return m.workers }
	masterPSS := func(m rackMem) uint64 { return m.master }
	total := func(m rackMem) uint64 { return m.total() }
	rows := []rackRow{
		memRow("PSS after boot: workers (MB)", f.memBoot, p.memBoot, workers, false),
		memRow("PSS after boot: master (MB)", f.memBoot, p.memBoot, masterPSS, false),
		memRow("PSS after boot: total (MB)", f.memBoot, p.memBoot, total, true),
		memRow("PSS after refork: workers (MB)", f.memRefork, p.memRefork, workers, false),
		memRow("PSS after refork: master (MB)", f.memRefork, p.memRefork, masterPSS, false),
		memRow("PSS after refork: total (MB)", f.memRefork, p.memRefork, total, true),
		durRow("refork duration (ms)", tooks(f.reforks), tooks(p.reforks)),
		durRow("phased restart duration (ms)", tooks(f.reloads), tooks(p.reloads)),
	}
	for _, row := range rackRows {
		fw, pw := f.windows[row], p.windows[row]
		failed := rackRow{name: row + ": failed requests", forkd: rackFailed(fw), puma: rackFailed(pw), integer: true}
		failed.fLo, failed.fHi, failed.pLo, failed.pHi = failed.forkd, failed.forkd, failed.puma, failed.puma
		failed.fSpread, failed.pSpread = perWindow(fw, func(w windowStats) string { return strconv.Itoa(w.failed) }),
			perWindow(pw, func(w windowStats) string { return strconv.Itoa(w.failed) })
		var fp, pp []time.Duration
		for _, w := range fw {
			fp = append(fp, w.p99)
		}
		for _, w := range pw {
			pp = append(pp, w.p99)
		}
		p99 := durRow(row+": p99 (ms)", fp, pp)
		p99.fSpread = fmt.Sprintf("%.1f..%.1f", p99.fLo, p99.fHi)
		p99.pSpread = fmt.Sprintf("%.1f..%.1f", p99.pLo, p99.pHi)
		rows = append(rows, failed, p99)
	}
	return rows
}

func perWindow(ws []windowStats, f func(windowStats) string) string {
	var parts []string
	for _, w := range ws {
		parts = append(parts, f(w))
	}
	return strings.Join(parts, "+")
}

func printRackSummary(w io.Writer) {
	f, p := rackResults["forkd"], rackResults["puma"]
	if f == nil || p == nil {
		return
	}
	fmt.Fprintf(w, "\n=== Rack: forkd-rack under forkd vs puma --fork-worker (issue 6) ===\n%s\n", rackInfo)
	fmt.Fprintf(w, "%-34s %9s %13s %9s %13s %7s  %s\n", "row (lower is better)", "forkd", "forkd range", "puma", "puma range", "ratio", "forkd beats puma")
	rows := rackTable(f, p)
	outcome := map[string][]string{} // verdict -> row names
	for _, r := range rows {
		val := func(v float64) string {
			if r.integer {
				return fmt.Sprintf("%.0f", v)
			}
			return fmt.Sprintf("%.1f", v)
		}
		dash := func(s string) string {
			if s == "" {
				return "-"
			}
			return s
		}
		v := r.verdict()
		outcome[v] = append(outcome[v], r.name)
		fmt.Fprintf(w, "%-34s %9s %13s %9s %13s %7s  %s\n", r.name, val(r.forkd), dash(r.fSpread), val(r.puma), dash(r.pSpread), r.ratio(), v)
	}
	split := func(m rackMem) string {
		var anon, file uint64
		for _, r := range append([]rollup{m.masterRollup}, m.perWorker...) {
			anon, file = anon+r.pssAnon, file+r.pssFile
		}
		return fmt.Sprintf("anon %.1f + file %.1f (master's file %.1f)", mb(anon), mb(file), mb(m.masterRollup.pssFile))
	}
	fmt.Fprintf(w, "  PSS total after boot, MB: forkd %s; puma %s\n", split(f.memBoot), split(p.memBoot))
	fmt.Fprintf(w, "  PSS total after refork, MB: forkd %s; puma %s\n", split(f.memRefork), split(p.memRefork))
	if rackFloor.single != nil {
		fmt.Fprintf(w, "  fork floor, ruby with the app loaded (%d forks each): one fork to the child's first byte p50 %s (the fork Puma's worker 0 makes per worker); "+
			"forkd's double fork to the worker's PID read and the intermediate reaped p50 %s (what forkd's template does per worker before it answers)\n",
			len(rackFloor.single), fmtMS(median(rackFloor.single)), fmtMS(median(rackFloor.double)))
	}
	fmt.Fprintf(w, "  (ratio = forkd/puma; ranges: PSS totals of %d samples after boot and after each of the %d reforks, durations of %d reforks and %d phased restarts, p99 of %d windows of %s, failures per window)\n",
		rackMemSamples, rackReforkReps, rackReforkReps, rackReloadReps, rackLatencyReps, latencyWindow)

	// The evidence behind the rows.
	for _, side := range []struct {
		name string
		r    *rackResult
	}{{"forkd", f}, {"puma", p}} {
		r := side.r
		fmt.Fprintf(w, "%s (%s):\n", side.name, r.version)
		for _, mem := range []struct {
			when string
			m    rackMem
		}{{"after boot", r.memBoot}, {"after a refork (the median of the reforks)", r.memRefork}} {
			fmt.Fprintf(w, "  memory %s, MB: %s\n", mem.when, rollupTable(mem.m))
		}
		fmt.Fprintf(w, "  refork: %s ms (%s); in the log: %s ms\n    timeline of the median: %s\n",
			msList(tooks(r.reforks)), map[string]string{"forkd": "forkctl refork --wait", "puma": "SIGURG to the last booted line"}[side.name],
			msList(loggeds(r.reforks)), r.reforks[medianIndex(durationsU(tooks(r.reforks)))].timeline)
		fmt.Fprintf(w, "  phased restart: %s ms (%s); in the log: %s ms\n    timeline of the median: %s\n",
			msList(tooks(r.reloads)), map[string]string{"forkd": "forkctl reload --wait", "puma": "SIGUSR1 to the last booted line"}[side.name],
			msList(loggeds(r.reloads)), r.reloads[medianIndex(durationsU(tooks(r.reloads)))].timeline)
		for _, row := range rackRows {
			ws := r.windows[row]
			var p50s, p99s, keep, fresh, times []time.Duration
			var maxd time.Duration
			ok, failed, rollouts, slow, reconnects, firsts := 0, 0, 0, 0, 0, 0
			var errs, rerrs []string
			for _, x := range ws {
				p50s, p99s = append(p50s, x.p50), append(p99s, x.p99)
				keep, fresh = append(keep, x.keepP99), append(fresh, x.freshP99)
				maxd = max(maxd, x.max)
				ok, failed, rollouts = ok+x.ok, failed+x.failed, rollouts+x.rollouts
				slow, reconnects, firsts = slow+x.slow, reconnects+x.slowReconnects, firsts+x.slowFirsts
				times = append(times, x.rolloutTimes...)
				errs, rerrs = append(errs, x.errs...), append(rerrs, x.rolloutErrs...)
			}
			var busy []string
			for _, c := range r.busy[row] {
				busy = append(busy, fmt.Sprintf("%.2f", c))
			}
			fmt.Fprintf(w, "  %s: p50 %s ms, p99 %s ms (keep-alive %s, new-connection %s), max %.1f ms; %d requests, %d failed; master CPU %.1f ms/s; machine CPU %s of %d cores",
				row, msList(p50s), msList(p99s), msList(keep), msList(fresh), ms(maxd), ok+failed, failed, r.masterCPU[row], strings.Join(busy, " "), runtime.NumCPU())
			if rollouts > 0 {
				fmt.Fprintf(w, "; %d rollouts, %s ms each", rollouts, msList(times))
			}
			fmt.Fprintf(w, "; above p99: %d, of which %d keep-alive reconnects, %d first answers of a worker\n", slow, reconnects, firsts)
			if rs := r.rollouts[row]; len(rs) > 0 {
				var settles []time.Duration
				slowest := rs[0]
				for _, x := range rs {
					settles = append(settles, x.settle)
					if x.took > slowest.took {
						slowest = x
					}
				}
				if quantile(settles, 1) > 0 {
					fmt.Fprintf(w, "    waiting for the cluster to settle before each rollout: p50 %s, max %s\n", fmtMS(median(settles)), fmtMS(quantile(settles, 1)))
				}
				if slowest.timeline != "" {
					fmt.Fprintf(w, "    slowest rollout: %s\n", slowest.timeline)
				}
			}
			for i, e := range firstN(errs, 3) {
				fmt.Fprintf(w, "    request error %d: %s\n", i+1, e)
			}
			for i, e := range firstN(rerrs, 3) {
				fmt.Fprintf(w, "    rollout error %d: %s\n", i+1, e)
			}
		}
	}
	for _, side := range []struct {
		name string
		r    *rackResult
	}{{"forkd", f}, {"puma", p}} {
		fmt.Fprintf(w, "%s complained %d times during the benchmark (warnings, errors, SIGKILLs after the %s shutdown timeout)\n", side.name, len(side.r.problems), rackShutdownTimeout)
		for _, l := range firstN(side.r.problems, 5) {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	lost := len(outcome["NO"]) + len(outcome["NO (ranges overlap)"])
	fmt.Fprintf(w, "target: forkd beats puma on every row: %s: of %d rows, %d won beyond the spread, %d won within it, %d tied, %d lost (%d of them within the spread)\n",
		verdict(lost == 0), len(rows), len(outcome["yes"]), len(outcome["yes (ranges overlap)"]), len(outcome["tie"]), lost, len(outcome["NO (ranges overlap)"]))
	for _, v := range []string{"NO", "NO (ranges overlap)"} {
		for _, name := range outcome[v] {
			fmt.Fprintf(w, "  lost: %s%s\n", name, map[bool]string{true: " (within the spread)", false: ""}[v != "NO"])
		}
	}
}

// rollupTable shows each process's PSS and where it comes from.
func rollupTable(m rackMem) string {
	var b strings.Builder
	fmt.Fprintf(&b, "workers %.1f + master %.1f = %.1f (samples %s)", mb(m.workers), mb(m.master), mb(m.total()), mbList(m.totals))
	b.WriteString(rollupLine("master", m.masterRollup))
	for i, r := range m.perWorker {
		b.WriteString(rollupLine(fmt.Sprintf("worker %d", i), r))
	}
	return b.String()
}

// rollupLine is one process's line of rollupTable.
func rollupLine(name string, r rollup) string {
	return fmt.Sprintf("\n    %-9s pss %5.1f (anon %5.1f file %4.1f)  rss %5.1f  shared clean %4.1f dirty %5.1f  private clean %3.1f dirty %4.1f (heap %4.2f anon %4.2f stack %4.2f file %4.2f)",
		name, mb(r.pss), mb(r.pssAnon), mb(r.pssFile), mb(r.rss), mb(r.sharedClean), mb(r.sharedDirty), mb(r.privateClean), mb(r.privateDirty),
		mb(r.dirtyHeap), mb(r.dirtyAnon), mb(r.dirtyStack), mb(r.dirtyFile))
}

func mbList(vs []uint64) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf("%.1f", mb(v))
	}
	return strings.Join(parts, " ")
}
