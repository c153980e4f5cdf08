package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/internal/memsample"
)

// Memory that stays shared (issue 14): test/benchrack/memory.ru, an app that builds 150 MB of
// Ruby objects at boot and 100 MB more over each process's first 20 requests, under forkd-rack in
// fork-worker mode and under `puma -w 4 --fork-worker=1000`, side by side, 4 workers x 5 threads
// each, all alive for the whole run. The forkd sides (rackMemForkd): the template mode as it is
// by default, with fork_worker.refork_on_decay, with memory.ksm (ksmd switched on for the
// rounds, its settings restored at the end), and with refork_from = "warmest" (the mold). All refork on their own once, after 1000 requests
// (forkd's refork_after = [1000, false] counts the busiest worker's, Puma worker 0's); the
// benchmark reforks each once more itself, then loads each with wrk (-t2 -c16, keep-alive, never
// retries) in turns, which side goes first rotating, and reads every process's smaps_rollup
// (master included) after each stage:
//
//   - boot: both settled, before any request;
//   - warm-up: rackMemWarmup of load (each worker builds its lazy 100 MB; the automatic refork
//     comes during it, and the new workers build nothing: they inherit worker 0's);
//   - refork: right after a refork the benchmark asks for (forkctl refork --wait; Puma: SIGURG);
//   - then after each of rackMemLoad more of load, counted from the refork.
//
// Each stage is a round: every side does it in turn, and with FORKD_BENCH_LOCK set (the path of
// the heavy lock, /tmp/forkd-heavy.lock) the round holds that lock, released between rounds, so
// that a run of many minutes lets other heavy runs go between them. The rollout rounds follow
// (rackmem_rollout_test.go): a refork under load, a phased restart under load (forkd's default
// warm-up included), and one without a warm-up (fork_worker.warm_up { max_wait = "0s" }; the
// first forkd side and the mold's).
//
// Beside them, in the boot and refork rounds only, the bare fork (rackmem_floor_test.go): no
// server, one Ruby process holding the app and 4 children that only wait, the floor of the total
// at those two stages, printed with its ratio to Puma and 0.8x Puma's total beside it, then what
// each side holds beyond it (master, private, shared).
//
// The printed table has each side's total PSS (the median of rackMemStageSamples samples), the ratio,
// and each side's growth over its own figure after the refork; under it, the evidence: every
// process's memory by kind and by mapping, and each worker's GC counts (GC.stat, from the app's
// /stats, asked until every worker answered). Stages run in turns: the side that waits holds its
// memory still (it serves nothing), so that the machine's other work weighs on both alike.
//
// FORKD_BENCH_MEM_LOAD sets the load stages (a comma-separated list of durations or seconds, each
// the total since the refork; default 5s,30s,120s).

const (
	rackMemRackup       = "memory.ru"
	rackMemBootMB       = 150
	rackMemLazyMB       = 100
	rackMemSteps        = 20
	rackMemWarmup       = 10 * time.Second
	rackMemStageSamples = 3
	// rackMemConns is wrk's -c: keep-alive connections, 4 per worker.
	rackMemConns = 16
	// Issue 14's targets: at every stage at most 0.8x Puma's total; after the last stage at most
	// 1.5x the total right after the refork.
	rackMemRatioTarget  = 0.8
	rackMemGrowthTarget = 1.5
)

var rackMemLoad = []time.Duration{5 * time.Second, 30 * time.Second, 120 * time.Second}

var rackMemApp = rackApp{
	rackup: rackMemRackup,
	env: map[string]string{"BENCHMEM_BOOT_MB": strconv.Itoa(rackMemBootMB), "BENCHMEM_LAZY_MB": strconv.Itoa(rackMemLazyMB),
		"BENCHMEM_LAZY_STEPS": strconv.Itoa(rackMemSteps)},
	forkBlock:      "fork_worker {\n  refork_after = [1000, false]\n}\n",
	pumaForkWorker: 1000,
}

// rackMemStage is one side's figures after one stage.
type rackMemStage struct {
	name string
	mem  rackMem
	// gc is each worker's GC.stat (and its requests), by PID; wrk is the load of a load stage.
	gc  map[int]benchMemStats
	wrk *wrkLoad
	// note says how the stage went (the warm-up's automatic reforks, the refork's duration).
	note string
	// top is worker 1's mappings with the most private dirty memory.
	top []mappingDirty
}

// benchMemStats is memory.ru's /stats answer.
type benchMemStats struct {
	PID      int              `json:"pid"`
	Steps    int              `json:"steps"`
	Requests int              `json:"requests"`
	GC       map[string]int64 `json:"gc"`
	GCState  string           `json:"gc_state"`
	MajorBy  string           `json:"major_by"`
}

// rackMemSide is one server under measurement: Puma, or a forkd-rack with its config.
type rackMemSide struct {
	*rackSide
	version string
	env     string // what it runs with, for the report
	// reforks counts the reforks so far; output is the server's output.
	reforks func() int
	output  func() string
	// ready is forkd-rack's --ready-template ("": the default); readied what its templates
	// logged of their readying (Readying.run).
	ready   string
	readied []string
	// ksm is true for the side with memory.ksm; fm is forkd's master (nil for Puma).
	ksm      bool
	fm       *master
	stages   []rackMemStage
	rollouts rackRolloutResult
}

// rackMemVariant is one forkd side: its name, forkd-rack's --ready-template, more of the
// fork_worker block, more blocks, memory.ksm.
type rackMemVariant struct {
	name, ready, forkWorker, extra string
	ksm                            bool
	env                            string
	// args adds to forkd-rack's command line (e.g. --malloc=system).
	args []string
	// appEnv adds to the app's environment (e.g. RUBY_GC_* variables).
	appEnv map[string]string
}

// rackMemForkd are the forkd-rack servers of the benchmark: the template mode as it is by
// default (Puma's fork_worker: worker 0 serves and is the template), with refork_on_decay, with
// KSM, and the mold mode (a template that serves nothing, forked at each refork from the worker
// that served the most). FORKD_BENCH_MEM_FORKD replaces them: "NAME:STEPS[:K=V,...];..." (forkd-rack's
// --ready-template, empty: the default; then variables added to the app's environment, such as
// RUBY_GC_HEAP_FREE_SLOTS_MIN_RATIO=0.20,RUBY_GC_HEAP_FREE_SLOTS_GOAL_RATIO=0.40 for Ruby's own
// defaults; a NAME of the sides above, such as forkd-mold, or of rackMemOptional's, such as
// forkd-nocarry, runs that side's config, any other the template mode). FORKD_BENCH_PUMA_ENV="K=V,..."
// adds variables to Puma's.
var rackMemForkd = []rackMemVariant{
	{name: "forkd", env: "template mode (refork_after = [1000, false])"},
	{name: "forkd-decay", forkWorker: "  refork_on_decay {\n    private_growth = \"64M\"\n    min_interval   = \"20s\"\n  }\n",
		extra: "memory {\n  sample_interval = \"2s\"\n}\n", env: "refork_on_decay { private_growth = 64M, min_interval = 20s }, sample_interval 2s"},
	{name: "forkd-ksm", extra: "memory {\n  ksm = true\n}\n", ksm: true, env: "memory.ksm = true"},
	{name: "forkd-mold", forkWorker: "  refork_from = \"warmest\"\n", env: "refork_from = \"warmest\" (a mold of the busiest worker; 4 serving + the mold)"},
}

// rackMemOptional are sides that only FORKD_BENCH_MEM_FORKD runs: forkd-nocarry's phased restart
// execs its new template without the heap size the first one reported (fork_worker.carry_heap_size),
// to compare with the default side's, which has it; forkd-glibc runs on glibc's malloc where the
// default side runs on jemalloc, if installed (forkd-rack --malloc).
var rackMemOptional = []rackMemVariant{
	{name: "forkd-nocarry", forkWorker: "  carry_heap_size = false\n", env: "carry_heap_size = false (the phased restart's template boots without RUBY_GC_HEAP_INIT_SLOTS)"},
	{name: "forkd-glibc", args: []string{"--malloc=system"}, env: "forkd-rack --malloc=system (glibc's malloc)"},
}

// rackKSMPagesToScan and rackKSMSleep are ksmd's pace while the benchmark holds the machine
// (the kernel's defaults are 100 and 20 ms: 20 MB/s, too slow to see within its stages).
// FORKD_BENCH_KSM_PAGES sets the first.
const (
	rackKSMPagesToScan = "1000"
	rackKSMSleep       = "20"
)

var (
	rackMemSides []*rackMemSide
	// rackMemFloorMem is the bare fork's memory by stage (rackmem_floor_test.go).
	rackMemFloorMem  map[string]rackMem
	rackMemFloorInfo string
	rackMemInfo      string
	rackKSMInfo      string
)

// rotated is s, starting from its element i (modulo its length): whose turn comes first.
func rotated[T any](s []T, i int) []T {
	i %= len(s)
	return append(append([]T{}, s[i:]...), s[:i]...)
}

// parseEnvList reads "K=V,K=V" (empty: none).
func parseEnvList(s string) (map[string]string, error) {
	vars := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if kv = strings.TrimSpace(kv); kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q: want K=V", kv)
		}
		vars[k] = v
	}
	return vars, nil
}

// heavyLock is the lock the project's heavy runs share (FORKD_BENCH_LOCK names its file, e.g.
// /tmp/forkd-heavy.lock); round holds it for one round of the benchmark, so that a run of
// several minutes lets others' tests run between its rounds. Without FORKD_BENCH_LOCK, rounds
// take no lock (run the whole benchmark under flock then).
func round(b *testing.B, name string, during func()) {
	b.Helper()
	path := os.Getenv("FORKD_BENCH_LOCK")
	if path != "" {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o666)
		if err != nil {
			b.Fatalf("FORKD_BENCH_LOCK: %v", err)
		}
		t0 := time.Now()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			b.Fatalf("FORKD_BENCH_LOCK: flock: %v", err)
		}
		if waited := time.Since(t0); waited > time.Second {
			b.Logf("round %q waited %s for %s", name, waited.Round(time.Second), path)
		}
		defer f.Close() // releases the lock
	}
	ksmdRun("1")
	defer ksmdRun("0")
	during()
}

// ksmdFiles are ksmd's settings the benchmark changes, with their values before it; nil when it
// does not (no side with memory.ksm, or not writable).
var ksmdFiles map[string]string

// setupKSM saves ksmd's settings and restores them when the benchmark ends; between rounds ksmd
// stays stopped (round starts it), so that it neither merges idle memory nor takes CPU from the
// tests of others. It says why not, when ksmd cannot be set.
func setupKSM(b *testing.B) string {
	b.Helper()
	pages := rackKSMPagesToScan
	if v := os.Getenv("FORKD_BENCH_KSM_PAGES"); v != "" {
		pages = v
	}
	saved := map[string]string{}
	for _, name := range []string{"run", "pages_to_scan", "sleep_millisecs"} {
		v, err := os.ReadFile(filepath.Join(memsample.KSMDir, name))
		if err != nil {
			return fmt.Sprintf("no ksmd (%v)", err)
		}
		saved[name] = strings.TrimSpace(string(v))
	}
	b.Cleanup(func() {
		for _, name := range []string{"pages_to_scan", "sleep_millisecs", "run"} {
			if err := os.WriteFile(filepath.Join(memsample.KSMDir, name), []byte(saved[name]), 0o644); err != nil {
				b.Errorf("restoring ksmd's %s to %s: %v", name, saved[name], err)
			}
		}
		ksmdFiles = nil
	})
	for name, v := range map[string]string{"pages_to_scan": pages, "sleep_millisecs": rackKSMSleep, "run": "0"} {
		if err := os.WriteFile(filepath.Join(memsample.KSMDir, name), []byte(v), 0o644); err != nil {
			return fmt.Sprintf("cannot set ksmd's %s: %v", name, err)
		}
	}
	ksmdFiles = saved
	return fmt.Sprintf("ksmd run only during the rounds, pages_to_scan %s, sleep_millisecs %s (before: run %s, %s, %s)",
		pages, rackKSMSleep, saved["run"], saved["pages_to_scan"], saved["sleep_millisecs"])
}

func ksmdRun(v string) {
	if ksmdFiles != nil {
		os.WriteFile(filepath.Join(memsample.KSMDir, "run"), []byte(v), 0o644)
	}
}

// ksmdCPU is the CPU time of the kernel's ksmd thread so far, or 0.
func ksmdCPU() time.Duration {
	matches, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil && strings.TrimSpace(string(b)) == "ksmd" {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(m)))
			return processCPU(pid)
		}
	}
	return 0
}

// ksmMergedMB sums what ksmd merged of pids' pages (ksm_merging_pages), in MB.
func ksmMergedMB(pids []int) float64 {
	var pages uint64
	for _, pid := range pids {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/ksm_merging_pages", pid)); err == nil {
			n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
			pages += n
		}
	}
	return mb(pages * uint64(os.Getpagesize()))
}

// BenchmarkRackMemory: see the top of this file.
func BenchmarkRackMemory(b *testing.B) {
	ruby, puma := requireRackTools(b)
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not installed: apt-get install -y wrk")
	}
	stages := rackMemLoad
	if s := os.Getenv("FORKD_BENCH_MEM_LOAD"); s != "" {
		if stages, err = parseWindows(s); err != nil {
			b.Fatalf("FORKD_BENCH_MEM_LOAD: %v", err)
		}
	}
	var counts []int
	if s := os.Getenv("FORKD_BENCH_MEM_REQUESTS"); s != "" {
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n <= 0 || (len(counts) > 0 && n <= counts[len(counts)-1]) {
				b.Fatalf("FORKD_BENCH_MEM_REQUESTS: %q: want increasing request counts, each the total since the refork", s)
			}
			counts = append(counts, n)
		}
	}
	variants := rackMemForkd
	if s := os.Getenv("FORKD_BENCH_MEM_FORKD"); s != "" {
		variants = nil
		for _, v := range strings.Split(s, ";") {
			name, rest, ok := strings.Cut(v, ":")
			ready, vars, _ := strings.Cut(rest, ":")
			appEnv, err := parseEnvList(vars)
			if !ok || name == "" || name == "puma" || err != nil {
				b.Fatalf("FORKD_BENCH_MEM_FORKD: %q: want NAME:STEPS[:K=V,...];... (STEPS: forkd-rack's --ready-template; NAME not puma)", v)
			}
			desc := "--ready-template " + orDash(ready)
			if vars != "" {
				desc += ", " + vars
			}
			// A name of one of rackMemForkd's or rackMemOptional's sides starts from its config
			// (forkd-mold: the mold).
			v := rackMemVariant{name: name}
			known := slices.Concat(rackMemForkd, rackMemOptional)
			if i := slices.IndexFunc(known, func(d rackMemVariant) bool { return d.name == name }); i >= 0 {
				v = known[i]
				desc = v.env + ", " + desc
			}
			v.ready, v.env, v.appEnv = ready, desc, appEnv
			variants = append(variants, v)
		}
	}
	rackKSMInfo = ""
	if slices.ContainsFunc(variants, func(v rackMemVariant) bool { return v.ksm }) {
		rackKSMInfo = setupKSM(b)
		if ksmdFiles == nil {
			b.Logf("the KSM side is left out: %s", rackKSMInfo)
			variants = slices.DeleteFunc(slices.Clone(variants), func(v rackMemVariant) bool { return v.ksm })
		}
	}
	load := loadAvg()
	started := time.Now()
	ksm0 := ksmdCPU()

	var sides []*rackMemSide
	var pc *pumaCluster
	var floor *rackMemFloor
	fatal := func(s *rackMemSide, what string, err error) {
		b.Helper()
		b.Fatalf("%s: %s: %v\noutput:\n%s", s.name, what, err, s.output())
	}
	// turn rotates which side goes first.
	turn := func(i int) []*rackMemSide { return rotated(sides, i) }
	measure := func(s *rackMemSide, name string, w *wrkLoad, note string) {
		mem, err := sampleRackMem(s.rackSide, rackMemStageSamples, 500*time.Millisecond)
		if err != nil {
			fatal(s, "memory "+name, err)
		}
		st := rackMemStage{name: name, mem: medianMem(mem), wrk: w, note: note}
		pids, err := s.workers()
		if err != nil {
			fatal(s, "settling", err)
		}
		if s.ksm {
			st.note = strings.TrimPrefix(st.note+fmt.Sprintf("; ksm merged %.1f MB", ksmMergedMB(pids)), "; ")
		}
		st.gc = benchMemGC(s.url, pids)
		st.top = topDirtyMappings(pids[1], 5)
		s.stages = append(s.stages, st)
	}
	loadStage := func(s *rackMemSide, d time.Duration, requests int) (*wrkLoad, string) {
		before := s.reforks()
		w, err := runWrk(wrk, s.url+"/", rackMemConns, d, requests)
		if err != nil {
			fatal(s, "wrk", err)
		}
		if _, err := s.workers(); err != nil {
			fatal(s, "settling after the load", err)
		}
		note := ""
		if n := s.reforks() - before; n > 0 {
			note = fmt.Sprintf("%d automatic refork(s) during it", n)
		}
		return w, note
	}

	round(b, "boot", func() {
		for _, v := range variants {
			app := rackMemApp
			app.forkBlock = "fork_worker {\n  refork_after = [1000, false]\n" + v.forkWorker + "}\n" + v.extra
			if v.ready != "" {
				app.forkdRackArgs = []string{"--ready-template", v.ready}
			}
			app.forkdRackArgs = append(slices.Clone(app.forkdRackArgs), v.args...)
			app.env = maps.Clone(app.env)
			maps.Copy(app.env, v.appEnv)
			fm := startForkdRack(b, ruby, app)
			s := forkdRackSide(b, fm)
			s.name = v.name
			sides = append(sides, &rackMemSide{rackSide: s, version: forkdVersion(fm), env: v.env, ready: v.ready, ksm: v.ksm, fm: fm,
				reforks: func() int { return len(fm.out.since("refork-done", time.Time{})) }, output: fm.out.String})
		}
		pumaApp := rackMemApp
		pumaDesc := "--fork-worker=1000"
		if s := os.Getenv("FORKD_BENCH_PUMA_ENV"); s != "" {
			vars, err := parseEnvList(s)
			if err != nil {
				b.Fatalf("FORKD_BENCH_PUMA_ENV: %v", err)
			}
			pumaApp.env = maps.Clone(pumaApp.env)
			maps.Copy(pumaApp.env, vars)
			pumaDesc += ", " + s
		}
		pc = startPuma(b, puma, pumaApp)
		sides = append(sides, &rackMemSide{rackSide: pc.side(), version: pc.version, env: pumaDesc,
			reforks: func() int { return pumaPhase(pc) }, output: pc.out.String})
		floor = startRackMemFloor(b, scriptInterpreter(puma, ruby), pumaApp.env)
		for _, s := range sides {
			measure(s, "after boot", nil, "")
		}
		if err := floor.measure("after boot"); err != nil {
			b.Fatalf("%s: memory after boot: %v", rackMemFloorName, err)
		}
	})
	round(b, "warm-up", func() {
		for _, s := range turn(0) {
			w, note := loadStage(s, rackMemWarmup, 0)
			measure(s, "after warm-up", w, note)
		}
	})
	round(b, "refork", func() {
		for _, s := range turn(1) {
			r, err := s.refork(true)
			if err != nil {
				fatal(s, "refork", err)
			}
			s.rollouts.reforkIdle = r.took
			measure(s, "after a refork", nil, fmt.Sprintf("refork took %s", fmtMS(r.took)))
		}
		// The floor last (it builds its lazy half now, while the sides are idle), then gone before
		// the load stages.
		if err := floor.refork(); err != nil {
			b.Fatalf("%s: refork: %v", rackMemFloorName, err)
		}
		if err := floor.measure("after a refork"); err != nil {
			b.Fatalf("%s: memory after a refork: %v", rackMemFloorName, err)
		}
		floor.stop()
		// A floor without the lazy half would put the target above it for nothing.
		if grew := mb(floor.stages["after a refork"].total()) - mb(floor.stages["after boot"].total()); grew < 0.8*rackMemLazyMB {
			b.Errorf("%s: %.1f MB more after the refork than after boot: it did not build its lazy %d MB", rackMemFloorName, grew, rackMemLazyMB)
		}
	})
	if counts != nil {
		done := 0
		for i, n := range counts {
			round(b, fmt.Sprintf("%d requests", n), func() {
				for _, s := range turn(i + 2) {
					w, note := loadStage(s, 0, n-done)
					measure(s, fmt.Sprintf("after %d requests of load", n), w, note)
				}
			})
			done = n
		}
	} else {
		var done time.Duration
		for i, d := range stages {
			round(b, d.String()+" of load", func() {
				for _, s := range turn(i + 2) {
					w, note := loadStage(s, d-done, 0)
					measure(s, fmt.Sprintf("after %s of load", d), w, note)
				}
			})
			done = d
		}
	}
	// The rollout rounds (rackmem_rollout_test.go).
	round(b, "refork under load", func() {
		for _, s := range turn(0) {
			idle := s.rollouts.reforkIdle
			r, err := reforkUnderLoad(wrk, s)
			if err != nil {
				fatal(s, "refork under load", err)
			}
			r.reforkIdle = idle
			s.rollouts = r
		}
	})
	round(b, "phased restart", func() {
		for _, s := range turn(1) {
			since := 0
			if s.fm != nil {
				since = countWarmUps(s.output())
			}
			p, err := phasedUnderLoad(wrk, "phased restart", s)
			if err != nil {
				fatal(s, "phased restart under load", err)
			}
			if s.fm != nil {
				// The default warm-up: the row says what it served, or that it did not run.
				p.note = warmUpNote(s.output(), since)
			}
			s.rollouts.phased = append(s.rollouts.phased, p)
		}
	})
	round(b, "phased restart without warm_up", func() {
		// The first forkd side, and the mold's: each mode's reload without a warm-up.
		for _, s := range sides {
			if s.fm == nil || (s != sides[0] && !strings.Contains(s.env, "refork_from")) {
				continue
			}
			if err := switchWarmUpOff(s.fm); err != nil {
				fatal(s, "warm_up", err)
			}
			since := countWarmUps(s.output())
			p, err := phasedUnderLoad(wrk, "without warm_up", s)
			if err != nil {
				fatal(s, "phased restart without warm_up", err)
			}
			// A row that says no warm_up must have had none.
			if countWarmUps(s.output()) != since {
				fatal(s, "phased restart without warm_up", fmt.Errorf("forkd warmed up all the same"))
			}
			s.rollouts.phased = append(s.rollouts.phased, p)
		}
	})
	for _, stage := range rackMemFloorStages {
		b.ReportMetric(mb(floor.stages[stage].total()), "floor-pss-"+strings.ReplaceAll(strings.TrimPrefix(stage, "after "), " ", "-")+"-MB")
	}
	for _, s := range sides {
		b.ReportMetric(0, "ns/op")
		for _, st := range s.stages {
			b.ReportMetric(mb(st.mem.total()), s.name+"-pss-"+strings.ReplaceAll(strings.TrimPrefix(st.name, "after "), " ", "-")+"-MB")
		}
	}
	for _, s := range sides {
		for _, line := range strings.Split(s.output(), "\n") {
			if i := strings.Index(line, "readied the template"); i >= 0 {
				s.readied = append(s.readied, line[i:])
			}
		}
	}
	// A side that measured something else than it says would go unnoticed in the figures.
	for _, s := range sides[:len(sides)-1] {
		if off := s.ready == "off"; off != (len(s.readied) == 0) {
			b.Errorf("%s (%s): its templates logged %d readyings", s.name, s.env, len(s.readied))
		}
		if st := s.fm.status(); s.ksm != strings.HasPrefix(st.KSM, "on") {
			b.Errorf("%s: the status says ksm %q", s.name, st.KSM)
		}
	}
	if rackKSMInfo != "" && ksmdFiles != nil {
		rackKSMInfo += fmt.Sprintf("; ksmd's CPU over the run: %.1f s", (ksmdCPU() - ksm0).Seconds())
	}
	rackMemSides = sides
	rackMemFloorMem = floor.stages
	rackMemFloorInfo = fmt.Sprintf("%s %s, %d children that only wait, its heap readied by GC.compact (Puma's interpreter and environment)",
		floor.interpreter, filepath.Join("test/benchrack", "floor.rb"), rackWorkers)
	rackMemInfo = fmt.Sprintf("%d workers x %d threads, test/benchrack/%s (%d MB at boot, %d MB lazily over %d requests), wrk -t2 -c%d keep-alive, on 127.0.0.1; %s vs %s; %s in %s",
		rackWorkers, rackThreads, rackMemRackup, rackMemBootMB, rackMemLazyMB, rackMemSteps, rackMemConns, sides[0].version, pc.version,
		busy(load), time.Since(started).Round(time.Second))
	b.Logf("\n%s", rackMemInfo)
}

// warmUpStarted is what forkd logs when a reload's warm-up begins: the new template's, or in mold
// mode the first new serving worker's.
var warmUpStarted = []string{"the new template warms up before the others are forked from it",
	"warms up, then forks the new template (a mold)"}

// countWarmUps counts the warm-ups that began in out.
func countWarmUps(out string) int {
	n := 0
	for _, started := range warmUpStarted {
		n += strings.Count(out, started)
	}
	return n
}

// warmUpNote says how the warm-up after the first since warm-ups in out (countWarmUps) ended
// (what the warming worker served), and in mold mode what came of the mold.
func warmUpNote(out string, since int) string {
	if countWarmUps(out) <= since {
		return "no warm-up"
	}
	msg := func(line, what string) string {
		i := strings.Index(line, "reload: ")
		if i < 0 || !strings.Contains(line[i:], what) {
			return ""
		}
		m, _, _ := strings.Cut(line[i+len("reload: "):], "\"")
		return m
	}
	note := ""
	for _, line := range strings.Split(out, "\n") {
		if note == "" {
			m := msg(line, "while it warmed up")
			if m == "" {
				m = msg(line, "so nothing warms")
			}
			if m != "" {
				if since--; since < 0 {
					note = "warm-up: " + m
				}
			}
			continue
		}
		if m := msg(line, "(a mold)"); m != "" && !strings.Contains(m, "warms up") {
			return note + "; " + m
		}
		if m := msg(line, "no mold"); m != "" {
			return note + "; " + m
		}
	}
	if note == "" {
		return "warm-up did not end"
	}
	return note
}

// parseWindows reads a comma-separated list of increasing durations (parseWindow's forms).
func parseWindows(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, part := range strings.Split(s, ",") {
		d, err := parseWindow(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		if len(out) > 0 && d <= out[len(out)-1] {
			return nil, fmt.Errorf("%q: each stage is the total load since the refork, so they must increase", s)
		}
		out = append(out, d)
	}
	return out, nil
}

// pumaPhase is Puma's phase now (one more after each refork).
func pumaPhase(p *pumaCluster) int {
	st, err := p.settled(settleDeadline)
	if err != nil {
		return -1
	}
	return st.Phase
}

// benchMemGC asks memory.ru's /stats, on a new connection each time, until each of pids has
// answered (or after 20 tries per worker): the kernel hands each connection to one worker.
func benchMemGC(url string, pids []int) map[int]benchMemStats {
	want := map[int]bool{}
	for _, pid := range pids {
		want[pid] = true
	}
	out := map[int]benchMemStats{}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for try := 0; try < 20*len(pids) && len(out) < len(want); try++ {
		resp, err := c.Get(url + "/stats")
		if err != nil {
			continue
		}
		var st benchMemStats
		err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st)
		resp.Body.Close()
		if err == nil && want[st.PID] {
			out[st.PID] = st
		}
	}
	return out
}

// wrkLoad is one load stage's wrk run, and how long it took.
type wrkLoad struct {
	wrkRun
	took time.Duration
}

// wrkStopAfter makes each of wrk's threads stop after WRK_STOP_AFTER responses and say so; wrk
// itself runs for its whole -d even once its threads have stopped, so runWrk interrupts it then
// (SIGINT: it prints its summary and exits).
const wrkStopAfter = `
local left = tonumber(os.getenv("WRK_STOP_AFTER"))
function response()
  left = left - 1
  if left == 0 then
    io.write("forkd-bench: enough\n")
    io.flush()
    wrk.thread:stop()
  end
end
`

// runWrk runs wrk -t2 -cCONNS against url (keep-alive; wrk never retries) for d, or, with
// requests > 0, until it has had that many responses (its two threads half each).
func runWrk(wrk, url string, conns int, d time.Duration, requests int) (*wrkLoad, error) {
	args := []string{"-t2", "-c" + strconv.Itoa(conns), "--timeout", "30s"}
	cmd := exec.Command(wrk)
	if requests > 0 {
		script, err := os.CreateTemp("", "forkd-bench-wrk-*.lua")
		if err != nil {
			return nil, err
		}
		defer os.Remove(script.Name())
		if _, err := script.WriteString(wrkStopAfter); err != nil {
			return nil, err
		}
		script.Close()
		args = append(args, "-d600s", "-s", script.Name())
		cmd.Env = append(os.Environ(), "WRK_STOP_AFTER="+strconv.Itoa((requests+1)/2))
	} else {
		args = append(args, "-d"+strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))+"s")
	}
	cmd.Args = append(cmd.Args, append(args, url)...)
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var all strings.Builder
	scanner := bufio.NewScanner(pipe)
	stopped := 0
	for scanner.Scan() {
		all.WriteString(scanner.Text() + "\n")
		if scanner.Text() == "forkd-bench: enough" {
			if stopped++; stopped == 2 {
				cmd.Process.Signal(syscall.SIGINT)
			}
		}
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("wrk: %v: %s", err, all.String())
	}
	r, err := parseWrkRun(all.String())
	if err != nil {
		return nil, err
	}
	return &wrkLoad{wrkRun: r, took: time.Since(t0)}, nil
}

func printRackMemorySummary(w io.Writer) {
	sides := rackMemSides
	if len(sides) < 2 {
		return
	}
	puma := sides[len(sides)-1]
	forkds := sides[:len(sides)-1]
	fmt.Fprintf(w, "\n=== Rack memory: forkd-rack vs puma --fork-worker=1000, total PSS with the master, MB (issue 14) ===\n%s\n", rackMemInfo)
	fmt.Fprintf(w, "(each stage is one round: every side in turn, which goes first rotating; FORKD_BENCH_LOCK held per round)\n")
	for _, s := range sides {
		fmt.Fprintf(w, "  %s: %s\n", s.name, s.env)
	}
	total := func(s *rackMemSide, i int) float64 { return mb(s.stages[i].mem.total()) }
	refork := func(s *rackMemSide) float64 {
		for i, st := range s.stages {
			if st.name == "after a refork" {
				return total(s, i)
			}
		}
		return 0
	}
	fmt.Fprintf(w, "%-20s", "stage")
	for _, s := range sides {
		fmt.Fprintf(w, " %16s", s.name)
	}
	for _, s := range forkds {
		fmt.Fprintf(w, " %22s", s.name+"/puma")
	}
	floor := rackMemFloorMem
	if len(floor) > 0 {
		fmt.Fprintf(w, " %18s %11s %10s", rackMemFloorName, "floor/puma", fmt.Sprintf("%.1fx puma", rackMemRatioTarget))
	}
	fmt.Fprintln(w)
	ratioMet := map[string]bool{}
	growth := map[string]float64{}
	for _, s := range forkds {
		ratioMet[s.name] = true
	}
	for i, st := range puma.stages {
		fmt.Fprintf(w, "%-20s", st.name)
		for _, s := range sides {
			g := ""
			if strings.Contains(st.name, "load") {
				growth[s.name] = total(s, i) / refork(s)
				g = fmt.Sprintf(" (%.2fx)", growth[s.name])
			}
			fmt.Fprintf(w, " %16s", fmt.Sprintf("%.1f%s", total(s, i), g))
		}
		for _, s := range forkds {
			r := total(s, i) / total(puma, i)
			ratioMet[s.name] = ratioMet[s.name] && r <= rackMemRatioTarget
			fmt.Fprintf(w, " %21.2fx", r)
		}
		if m, ok := floor[st.name]; ok {
			fmt.Fprintf(w, " %18.1f %10.2fx %10.1f", mb(m.total()), mb(m.total())/total(puma, i), rackMemRatioTarget*total(puma, i))
		}
		fmt.Fprintln(w)
	}
	for i, st := range puma.stages {
		if m, ok := floor[st.name]; ok {
			f, target := mb(m.total()), rackMemRatioTarget*total(puma, i)
			under := "above"
			if target < f {
				under = "under"
			}
			fmt.Fprintf(w, "floor %s: the bare fork holds %.1f MB, %.2fx puma's; %.1fx puma's is %.1f MB, %.1f MB %s the floor\n",
				st.name, f, f/total(puma, i), rackMemRatioTarget, target, max(f-target, target-f), under)
		}
	}
	fmt.Fprintf(w, "  (in parentheses: the growth over the side's own total right after the refork; each figure the median of %d samples 0.5 s apart)\n", rackMemStageSamples)
	fmt.Fprintf(w, "requests served in each load stage (wrk; socket errors + non-2xx):\n")
	for i, st := range puma.stages {
		if puma.stages[i].wrk == nil {
			continue
		}
		fmt.Fprintf(w, "%-20s", st.name)
		for _, s := range sides {
			r := s.stages[i].wrk
			fmt.Fprintf(w, " %16s", fmt.Sprintf("%d (%d)", r.requests, r.socketErrors()+r.non2xx))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "puma's growth after the last stage: %.2fx\n", growth[puma.name])
	printRackMemFloor(w, sides, floor, rackMemFloorInfo)
	if rackKSMInfo != "" {
		fmt.Fprintf(w, "KSM: %s\n", rackKSMInfo)
	}
	printRackRollouts(w, sides)
	for _, s := range forkds {
		fmt.Fprintf(w, "target: %s at most %.1fx puma's total at every stage: %s; at most %.1fx growth after the last stage: %s (%.2fx)\n",
			s.name, rackMemRatioTarget, verdict(ratioMet[s.name]), rackMemGrowthTarget, verdict(growth[s.name] <= rackMemGrowthTarget), growth[s.name])
	}
	for _, s := range sides {
		fmt.Fprintf(w, "%s (%s, %s):\n", s.name, s.version, s.env)
		for _, l := range s.readied {
			fmt.Fprintf(w, "  %s\n", l)
		}
		for _, st := range s.stages {
			fmt.Fprintf(w, "  %s", st.name)
			if st.note != "" {
				fmt.Fprintf(w, " (%s)", st.note)
			}
			if st.wrk != nil {
				fmt.Fprintf(w, " [wrk: %d requests in %.1f s, %.0f/s, %d socket errors, %d non-2xx]", st.wrk.requests, st.wrk.took.Seconds(), st.wrk.rps, st.wrk.socketErrors(), st.wrk.non2xx)
			}
			fmt.Fprintf(w, ", MB: %s\n", rollupTable(st.mem))
			fmt.Fprintf(w, "    GC per worker: %s\n", gcLine(st.gc))
			fmt.Fprintf(w, "    worker 1's most dirtied mappings: %s\n", mappingsLine(st.top))
		}
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// gcLine shows each worker's GC counts: collections (minor/major), heap pages, old objects, and
// its requests and lazy steps built.
func gcLine(gc map[int]benchMemStats) string {
	var pids []int
	for pid := range gc {
		pids = append(pids, pid)
	}
	sort.Ints(pids)
	var parts []string
	for _, pid := range pids {
		s := gc[pid]
		g := s.GC
		parts = append(parts, fmt.Sprintf("pid %d: %d req, %d steps, gc %d (minor %d major %d, now %s, last major by %s), pages %d, live %dk, old %dk/%dk, "+
			"free %dk, allocated %dk, shady %dk/%dk, oldmalloc %dM/%dM",
			pid, s.Requests, s.Steps, g["count"], g["minor_gc_count"], g["major_gc_count"], s.GCState, orDash(s.MajorBy), g["heap_allocated_pages"],
			g["heap_live_slots"]/1000, g["old_objects"]/1000, g["old_objects_limit"]/1000, g["heap_free_slots"]/1000, g["total_allocated_objects"]/1000,
			g["remembered_wb_unprotected_objects"]/1000, g["remembered_wb_unprotected_objects_limit"]/1000,
			g["oldmalloc_increase_bytes"]>>20, g["oldmalloc_increase_bytes_limit"]>>20))
	}
	if len(parts) == 0 {
		return "(no answer)"
	}
	return strings.Join(parts, "; ")
}

// mappingDirty is one mapping of /proc/PID/smaps and its private dirty memory.
type mappingDirty struct {
	start, end uint64
	perms      string
	name       string // its path or [heap], [stack]; "" for anonymous memory
	dirty, rss uint64
	// next is the mapping right after it when that one is its PROT_NONE reserve: glibc's malloc
	// makes each thread arena (a non-main arena) a 64 MiB reservation, readable and writable up
	// to where it has grown.
	reserve uint64
}

// topDirtyMappings returns pid's n mappings with the most private dirty memory.
func topDirtyMappings(pid, n int) []mappingDirty {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil
	}
	var all []mappingDirty
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			lo, hi, _ := strings.Cut(f[0], "-")
			m := mappingDirty{perms: f[1]}
			m.start, _ = strconv.ParseUint(lo, 16, 64)
			m.end, _ = strconv.ParseUint(hi, 16, 64)
			if len(f) >= 6 {
				m.name = f[5]
			}
			if k := len(all); k > 0 && m.perms == "---p" && m.name == "" && all[k-1].end == m.start && all[k-1].name == "" {
				all[k-1].reserve = m.end - m.start
			}
			all = append(all, m)
		case len(f) >= 2 && f[0] == "Private_Dirty:" && len(all) > 0:
			all[len(all)-1].dirty = uint64(kB(f[1])) << 10
		case len(f) >= 2 && f[0] == "Rss:" && len(all) > 0:
			all[len(all)-1].rss = uint64(kB(f[1])) << 10
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].dirty > all[j].dirty })
	return all[:min(n, len(all))]
}

func mappingsLine(ms []mappingDirty) string {
	var parts []string
	for _, m := range ms {
		name := m.name
		switch {
		case name == "" && m.reserve > 0 && m.end-m.start+m.reserve == 64<<20:
			name = "malloc thread arena"
		case name == "":
			name = "anon"
		}
		parts = append(parts, fmt.Sprintf("%s %.1f of %.1f (rss %.1f)", name, mb(m.dirty), mb(m.end-m.start), mb(m.rss)))
	}
	if len(parts) == 0 {
		return "(none)"
	}
	return strings.Join(parts, "; ")
}
