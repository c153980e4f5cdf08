package bench

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// Fork-worker mode (issue 3): how long a forked worker takes to be ready next to an exec'd one and
// next to a bare os.fork(), how long a refork takes, and the memory the workers share.

// respawnSamples is how many kills BenchmarkForkSpawn makes in each mode.
const respawnSamples = 40

// floorReps and floorForks: BenchmarkForkSpawn runs the floor script floorReps times, each timing
// floorForks forks.
const (
	floorReps  = 3
	floorForks = 100
)

// respawnSettle separates two kills: the previous replacement's start-up (its heartbeat thread,
// its first status) is over, so each boot has the machine to itself as far as forkd goes.
const respawnSettle = 50 * time.Millisecond

// BenchmarkForkSpawn measures spawn to READY=1 of one Python worker (test/testapp under the SDK),
// as forkd logs it (boot=, from the master's SpawnWorker to its READY=1), when forked from the
// template and when exec'd, and the floor under the forked case: os.fork() in a Python process
// that imported the same app, until the child writes a byte to a pipe; and the same through a
// double fork (fork, fork again, exit), which the SDK makes so that every worker is the master's
// child.
//
// A sample is a SIGKILL of worker 1, 2 or 3 in turn (restart.reset_after is 1ms, so every kill is a
// first crash, respawned at once): in fork-worker mode the slot is re-forked from worker 0, in exec
// mode it is exec'd. Each sample is also split at the arrival of the "worker spawned" record, which
// forkd logs when it learns the new worker's PID (a forked worker's hello, or the template's
// spawned reply, whichever comes first; an exec'd worker's successful exec of the shim): before it,
// the master's spawn request and the fork (or exec); after it, the worker's start until READY=1.
func BenchmarkForkSpawn(b *testing.B) {
	// The floor right before the forked case, so that the machine's other work weighs on both
	// alike.
	b.Run("floor=os.fork", func(b *testing.B) { benchForkFloor(b, false) })
	b.Run("worker=forked", func(b *testing.B) { benchRespawn(b, true) })
	b.Run("floor=double-fork", func(b *testing.B) { benchForkFloor(b, true) })
	b.Run("worker=exec", func(b *testing.B) { benchRespawn(b, false) })
}

// benchForkFloor times forkFloorScript: floorReps runs of floorForks forks each.
func benchForkFloor(b *testing.B, double bool) {
	cfg := pythonApp(b, testappDir, 1, 4, nil, "")
	load := loadAvg()
	var all, medians []time.Duration
	for range floorReps {
		ds := forkFloor(b, cfg, floorForks, double)
		all = append(all, ds...)
		medians = append(medians, median(ds))
	}
	p50, p90, maxd := percentiles(all)
	lo, hi := minMax(medians)
	reportDetail(b, map[string]float64{"p50-ms": ms(p50), "p90-ms": ms(p90), "max-ms": ms(maxd), "samples": float64(len(all)),
		"rep-p50-lo-ms": ms(lo), "rep-p50-hi-ms": ms(hi)},
		fmt.Sprintf("medians of the %d runs of %d forks: %s ms; %s", floorReps, floorForks, msList(medians), busy(load)))
	what := "os.fork() to the child's first byte on a pipe"
	if double {
		what = "os.fork(), the child forks again and exits, to the grandchild's first byte on a pipe"
	}
	b.Logf("\n%s, in a Python process that imported test/testapp, %d x %d forks:\n"+
		"  p50 %s  p90 %s  max %s  (p50 of each run: %s ms)", what, floorReps, floorForks, fmtMS(p50), fmtMS(p90), fmtMS(maxd), msList(medians))
}

func benchRespawn(b *testing.B, fork bool) {
	extra := noBackoff
	if fork {
		extra += forkWorkerBlock
	}
	load := loadAvg()
	m := startMaster(b, pythonApp(b, testappDir, 4, 4, nil, extra))
	st := m.settled(4)
	if want := map[bool]string{true: control.ModeFork, false: control.ModeExec}[fork]; st.Mode != want {
		b.Fatalf("mode %q, want %q\noutput:\n%s", st.Mode, want, m.out.String())
	}
	pids := map[int]int{}
	for _, w := range st.WorkerList {
		pids[w.Index] = w.PID
	}
	var boots, toSpawned, toReady []time.Duration
	for i := range respawnSamples {
		slot := 1 + i%3
		victim := pids[slot]
		time.Sleep(respawnSettle)
		t0 := time.Now()
		if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
			b.Fatalf("kill worker %d (pid %d): %v", slot, victim, err)
		}
		exited := m.await("worker-exited", t0, func(ev logEvent) bool { return ev.pid == victim })
		ready := m.await("worker-ready", t0, func(ev logEvent) bool { return ev.worker == slot && ev.pid != victim })
		spawned := m.await("worker-spawned", t0, func(ev logEvent) bool { return ev.pid == ready.pid })
		if ready.forked != fork {
			b.Fatalf("worker %d (pid %d) was respawned forked=%v, want forked=%v\noutput:\n%s", slot, ready.pid, ready.forked, fork, m.out.String())
		}
		boots = append(boots, ready.boot)
		toSpawned = append(toSpawned, spawned.at.Sub(exited.at))
		toReady = append(toReady, ready.at.Sub(spawned.at))
		pids[slot] = ready.pid
	}
	m.stop()

	p50, p90, maxd := percentiles(boots)
	metrics := map[string]float64{"p50-ms": ms(p50), "p90-ms": ms(p90), "max-ms": ms(maxd), "samples": float64(len(boots)),
		"to-spawned-p50-ms": ms(median(toSpawned)), "to-ready-p50-ms": ms(median(toReady))}
	how := map[bool]string{true: "forked from worker 0", false: "exec'd"}[fork]
	detail := fmt.Sprintf("%s: exit record to spawned record p50 %s (p90 %s), spawned record to ready record p50 %s (p90 %s); %s",
		how, fmtMS(median(toSpawned)), fmtMS(quantile(toSpawned, 0.9)), fmtMS(median(toReady)), fmtMS(quantile(toReady, 0.9)), busy(load))
	reportDetail(b, metrics, detail)
	b.Logf("\nspawn to READY=1 of a killed Python worker %s, as forkd logs it (boot=), %d kills:\n"+
		"  p50 %s  p90 %s  max %s\n  %s", how, len(boots), fmtMS(p50), fmtMS(p90), fmtMS(maxd), detail)
}

// reforkReps is how many reforks BenchmarkRefork times for each size.
const reforkReps = 5

// BenchmarkRefork times `forkctl refork --wait` end to end (the forkctl process, start to exit),
// and the refork as forkd logs it, from "refork: re-forking ..." to "refork done" (both taken when
// the record arrives here), with 4 and 16 Python workers (test/testapp, whose fork hooks do no work
// of their own). The old workers drain after "refork done"; each refork starts once they are gone.
func BenchmarkRefork(b *testing.B) {
	for _, n := range []int{4, 16} {
		b.Run(fmt.Sprintf("workers=%d", n), func(b *testing.B) { benchRefork(b, n) })
	}
}

func benchRefork(b *testing.B, workers int) {
	load := loadAvg()
	m := startMaster(b, pythonApp(b, testappDir, workers, 4, nil, forkWorkerBlock))
	if st := m.settled(workers); st.Mode != control.ModeFork {
		b.Fatalf("mode %q, want fork\noutput:\n%s", st.Mode, m.out.String())
	}
	var e2e, logged, boots []time.Duration
	var timelines []string
	for i := range reforkReps {
		r := m.timeRollout("refork", i+1)
		for _, ev := range r.ready {
			boots = append(boots, ev.boot)
		}
		e2e = append(e2e, r.took)
		logged = append(logged, r.logged)
		timelines = append(timelines, rolloutTimeline(m.out.since("", r.start.at), r.start.at, r.done.at))
		m.settled(workers)
	}
	m.stop()

	lo, hi := minMax(e2e)
	llo, lhi := minMax(logged)
	metrics := map[string]float64{
		"forkctl-p50-ms": ms(median(e2e)), "forkctl-min-ms": ms(lo), "forkctl-max-ms": ms(hi),
		"log-p50-ms": ms(median(logged)), "log-min-ms": ms(llo), "log-max-ms": ms(lhi),
		"boot-p50-ms": ms(median(boots)), "boot-p90-ms": ms(quantile(boots, 0.9)), "reps": float64(len(e2e)),
	}
	detail := fmt.Sprintf("forkctl refork --wait: %s ms; start to done in the log: %s ms; %s\n"+
		"%d forked workers' boot p50 %s p90 %s max %s\n"+
		"timeline of the median refork (ms after its start record; s = worker spawned, r = ready):\n  %s",
		msList(e2e), msList(logged), busy(load), len(boots), fmtMS(median(boots)), fmtMS(quantile(boots, 0.9)), fmtMS(quantile(boots, 1)),
		timelines[medianIndex(durationsU(logged))])
	reportDetail(b, metrics, detail)
	b.Logf("\nrefork of %d Python workers (%d forks each), %d reforks:\n  forkctl p50 %s, log p50 %s, forked boot p50 %s",
		workers, workers-1, len(e2e), fmtMS(median(e2e)), fmtMS(median(logged)), fmtMS(median(boots)))
}

// Memory of BenchmarkForkMemory's app: built at import, and lazily on each worker's first /warm.
const (
	memImportMB = 100
	memLazyMB   = 100
	memWorkers  = 4
)

// BenchmarkForkMemory sums the workers' PSS (from the status API, /proc/PID/smaps_rollup) of 4
// workers of test/benchapp, which builds 100 MiB at import and 100 MiB more on the first /warm
// request each process serves, once every worker has served one: in exec mode (nothing shared),
// in fork-worker mode (the import half shared, each worker built its own lazy half), and in
// fork-worker mode after a refork from the warmed-up worker 0 (both halves shared).
func BenchmarkForkMemory(b *testing.B) {
	b.Run("mode=exec", func(b *testing.B) { benchMemory(b, false, false) })
	b.Run("mode=fork", func(b *testing.B) { benchMemory(b, true, false) })
	b.Run("mode=fork+refork", func(b *testing.B) { benchMemory(b, true, true) })
}

func benchMemory(b *testing.B, fork, refork bool) {
	extra := "memory {\n  sample_interval = \"1s\"\n}\n"
	if fork {
		extra += forkWorkerBlock
	}
	load := loadAvg()
	env := map[string]string{"BENCHAPP_IMPORT_MB": strconv.Itoa(memImportMB), "BENCHAPP_LAZY_MB": strconv.Itoa(memLazyMB)}
	// One request at a time per worker: a worker holding a /warm accepts no other, so concurrent
	// requests spread over the workers.
	m := startMaster(b, pythonApp(b, benchappDir, memWorkers, 1, env, extra))
	m.settled(memWorkers)
	warmAll(b, m)
	if refork {
		if out, code, _ := m.forkctl("refork", "--wait"); code != 0 {
			b.Fatalf("refork: forkctl exit %d: %s\noutput:\n%s", code, out, m.out.String())
		}
		m.settled(memWorkers)
		if warmed := warmAll(b, m); warmed != 0 {
			b.Errorf("%d workers built their lazy half again after the refork: it was not inherited", warmed)
		}
	}
	// Three of the master's memory samples, each taken after the one before (a second apart at
	// the earliest); the median of the totals is reported.
	var totals []control.Status
	since := time.Now()
	for range 3 {
		st := m.waitFor("a memory sample of the settled workers", func(st control.Status) bool {
			return settledCond(memWorkers)(st) && st.MemorySampledAt.After(since)
		})
		since = st.MemorySampledAt
		totals = append(totals, st)
	}
	m.stop()

	var pss, rss, shared []uint64
	for _, st := range totals {
		var p, r, s uint64
		for _, w := range st.WorkerList {
			if w.Memory == nil {
				b.Fatalf("worker %d: no memory in the status", w.Index)
			}
			p, r, s = p+w.Memory.PSS, r+w.Memory.RSS, s+w.Memory.Shared
		}
		pss, rss, shared = append(pss, p), append(rss, r), append(shared, s)
	}
	mid := medianIndex(pss)
	var detail strings.Builder
	fmt.Fprintf(&detail, "%-6s %-9s %8s %8s %9s", "worker", "role", "pss MB", "rss MB", "shared MB")
	for _, w := range totals[mid].WorkerList {
		role := map[bool]string{true: "template", false: "exec'd"}[w.Template]
		if w.Forked {
			role = "forked"
		}
		fmt.Fprintf(&detail, "\n%-6d %-9s %8.1f %8.1f %9.1f", w.Index, role, mb(w.Memory.PSS), mb(w.Memory.RSS), mb(w.Memory.Shared))
	}
	fmt.Fprintf(&detail, "\ntotal PSS of the 3 samples: %.1f %.1f %.1f MB; %s", mb(pss[0]), mb(pss[1]), mb(pss[2]), busy(load))
	reportDetail(b, map[string]float64{"pss-MB": mb(pss[mid]), "rss-MB": mb(rss[mid]), "shared-MB": mb(shared[mid])}, detail.String())
	b.Logf("\n%d workers, %d MiB built at import + %d MiB on the first /warm: total PSS %.1f MB, RSS %.1f MB\n%s",
		memWorkers, memImportMB, memLazyMB, mb(pss[mid]), mb(rss[mid]), detail.String())
}

// warmAll sends /warm requests, memWorkers at a time on new connections, until every worker has
// answered one, and returns how many of the answers built a lazy half (built=1): every worker,
// the first time; none, after a refork from a warmed-up worker 0.
func warmAll(b *testing.B, m *master) (built int) {
	b.Helper()
	st := m.settled(memWorkers)
	want := map[int]bool{}
	for _, w := range st.WorkerList {
		want[w.PID] = true
	}
	url := "http://" + m.addr() + "/warm?ms=300"
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	warmed := map[int]bool{}
	end := time.Now().Add(waitDeadline)
	for len(warmed) < len(want) {
		if time.Now().After(end) {
			b.Fatalf("only %d of %d workers served a /warm within %s", len(warmed), len(want), waitDeadline)
		}
		var mu sync.Mutex
		var wg sync.WaitGroup
		var errs []error
		for range memWorkers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				pid, fresh, err := warmOnce(client, url)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
					return
				}
				if !warmed[pid] && fresh {
					built++
				}
				warmed[pid] = true
			}()
		}
		wg.Wait()
		if len(errs) > 0 {
			b.Fatalf("/warm: %v", errs[0])
		}
	}
	for pid := range warmed {
		if !want[pid] {
			b.Fatalf("pid %d answered /warm but is not a worker of the status", pid)
		}
	}
	return built
}

// warmOnce sends one /warm and returns the answering worker's pid and whether this request built
// its lazy half.
func warmOnce(client *http.Client, url string) (pid int, built bool, err error) {
	resp, err := client.Get(url)
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(io.LimitReader(resp.Body, 4096)).ReadString('\n')
	if err != nil {
		return 0, false, fmt.Errorf("reading the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, false, fmt.Errorf("status %s: %s", resp.Status, line)
	}
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "pid":
			pid, _ = strconv.Atoi(v)
		case "built":
			built = v == "1"
		}
	}
	if pid == 0 {
		return 0, false, fmt.Errorf("unexpected answer %q", line)
	}
	return pid, built, nil
}

// rolloutTimeline lists a rollout's worker records between its start and done, as offsets from start:
// "w1 s 3.1 r 5.0, w2 s 9.8 r 12.1, ..., done 40.2", the records of old workers leaving as "x".
func rolloutTimeline(evs []logEvent, start, done time.Time) string {
	var parts []string
	for _, ev := range evs {
		if ev.at.After(done) {
			break
		}
		off := fmt.Sprintf("%.1f", ms(ev.at.Sub(start)))
		switch ev.kind {
		case "worker-spawned":
			parts = append(parts, fmt.Sprintf("w%d s %s", ev.worker, off))
		case "worker-ready":
			parts = append(parts, "r "+off)
		case "worker-exited":
			parts = append(parts, fmt.Sprintf("w%d x %s", ev.worker, off))
		}
	}
	parts = append(parts, fmt.Sprintf("done %.1f", ms(done.Sub(start))))
	return strings.Join(parts, ", ")
}

func durationsU(ds []time.Duration) []uint64 {
	us := make([]uint64, len(ds))
	for i, d := range ds {
		us[i] = uint64(d)
	}
	return us
}

// medianIndex returns the index of the median of vs.
func medianIndex(vs []uint64) int {
	idx := make([]int, len(vs))
	for i := range idx {
		idx[i] = i
	}
	for i := 1; i < len(idx); i++ {
		for j := i; j > 0 && vs[idx[j]] < vs[idx[j-1]]; j-- {
			idx[j], idx[j-1] = idx[j-1], idx[j]
		}
	}
	return idx[len(idx)/2]
}

func mb(v uint64) float64 { return float64(v) / (1 << 20) }

// Targets from issue 3.
const (
	targetForkFloorRatio = 3.0             // a forked worker READY within 3x the bare fork
	targetRefork4        = 1 * time.Second // refork of 4 workers, plus the app's own post-fork work (none here)
)

func printForkSummary(w io.Writer) {
	spawn := lookup("BenchmarkForkSpawn/")
	refork := lookup("BenchmarkRefork/")
	memory := lookup("BenchmarkForkMemory/")
	if len(spawn)+len(refork)+len(memory) == 0 {
		return
	}
	fmt.Fprintf(w, "\n=== fork-worker mode (issue 3) ===\n")
	byName := func(rs []result, suffix string) *result {
		for i := range rs {
			if strings.HasSuffix(rs[i].name, suffix) {
				return &rs[i]
			}
		}
		return nil
	}
	if len(spawn) > 0 {
		fmt.Fprintf(w, "%-36s %8s %8s %8s %5s  %s\n", "python worker spawn to READY", "p50 ms", "p90 ms", "max ms", "n", "split p50: to spawned record + to ready")
		for _, r := range spawn {
			m := r.metrics
			split := ""
			if _, ok := m["to-spawned-p50-ms"]; ok {
				split = fmt.Sprintf("%.2f + %.2f ms", m["to-spawned-p50-ms"], m["to-ready-p50-ms"])
			} else {
				split = fmt.Sprintf("p50 of each run %.2f..%.2f ms", m["rep-p50-lo-ms"], m["rep-p50-hi-ms"])
			}
			fmt.Fprintf(w, "%-36s %8.2f %8.2f %8.2f %5.0f  %s\n", strings.TrimPrefix(r.name, "Benchmark"), m["p50-ms"], m["p90-ms"], m["max-ms"], m["samples"], split)
		}
	}
	if len(refork) > 0 {
		fmt.Fprintf(w, "%-36s %8s %13s %8s %13s %9s\n", "refork (python, testapp)", "p50 ms", "forkctl range", "log p50", "log range", "boot p50")
		for _, r := range refork {
			m := r.metrics
			fmt.Fprintf(w, "%-36s %8.1f %13s %8.1f %13s %9.2f\n", strings.TrimPrefix(r.name, "Benchmark"), m["forkctl-p50-ms"],
				fmt.Sprintf("%.0f..%.0f", m["forkctl-min-ms"], m["forkctl-max-ms"]), m["log-p50-ms"],
				fmt.Sprintf("%.0f..%.0f", m["log-min-ms"], m["log-max-ms"]), m["boot-p50-ms"])
		}
	}
	if len(memory) > 0 {
		fmt.Fprintf(w, "%-36s %9s %9s %10s\n", fmt.Sprintf("memory, %d workers, %d+%d MiB", memWorkers, memImportMB, memLazyMB), "PSS MB", "RSS MB", "vs exec")
		exec := byName(memory, "/mode=exec")
		for _, r := range memory {
			vs := "-"
			if exec != nil && exec.metrics["pss-MB"] > 0 {
				vs = fmt.Sprintf("%.2fx", r.metrics["pss-MB"]/exec.metrics["pss-MB"])
			}
			fmt.Fprintf(w, "%-36s %9.1f %9.1f %10s\n", strings.TrimPrefix(r.name, "Benchmark"), r.metrics["pss-MB"], r.metrics["rss-MB"], vs)
		}
	}
	for _, r := range append(append(append([]result(nil), spawn...), refork...), memory...) {
		if r.detail != "" {
			fmt.Fprintf(w, "%s:\n", strings.TrimPrefix(r.name, "Benchmark"))
			for _, line := range strings.Split(r.detail, "\n") {
				fmt.Fprintf(w, "  %s\n", line)
			}
		}
	}
	fmt.Fprintln(w, "targets:")
	forked, floor := byName(spawn, "/worker=forked"), byName(spawn, "/floor=os.fork")
	if forked != nil && floor != nil && floor.metrics["p50-ms"] > 0 {
		ratio := forked.metrics["p50-ms"] / floor.metrics["p50-ms"]
		fmt.Fprintf(w, "  forked worker READY within %.0fx of a bare os.fork(): p50 %.2f ms / %.2f ms = %.1fx: %s\n",
			targetForkFloorRatio, forked.metrics["p50-ms"], floor.metrics["p50-ms"], ratio, verdict(ratio <= targetForkFloorRatio))
		if double := byName(spawn, "/floor=double-fork"); double != nil && double.metrics["p50-ms"] > 0 {
			fmt.Fprintf(w, "    (for scale: the double fork alone is %.1fx the bare fork; the forked worker %.1fx the double fork)\n",
				double.metrics["p50-ms"]/floor.metrics["p50-ms"], forked.metrics["p50-ms"]/double.metrics["p50-ms"])
		}
	} else {
		fmt.Fprintln(w, "  forked worker READY within 3x of a bare os.fork(): not measured in this run")
	}
	if r := byName(refork, "/workers=4"); r != nil {
		fmt.Fprintf(w, "  refork of 4 workers < %s (testapp has no post-fork work of its own): forkctl p50 %.0f ms (log %.0f ms): %s\n",
			targetRefork4, r.metrics["forkctl-p50-ms"], r.metrics["log-p50-ms"], verdict(r.metrics["forkctl-p50-ms"] < ms(targetRefork4)))
	} else {
		fmt.Fprintln(w, "  refork of 4 workers < 1s: not measured in this run")
	}
}
