package bench

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkRackReforkNice measures fork_worker.refork_nice (issue 14's target "refork duration
// under load no slower than idle"): on BenchmarkRackMemory's app (test/benchrack/memory.ru, 150 MB
// built at boot, 100 MB lazily over each process's first 20 requests, 4 workers x 5 threads),
// forkd-rack in template mode and in mold mode (refork_from = "warmest"), each with
// refork_nice = 0 (off) and with the default, next to `puma -w 4 --fork-worker=1000`, all alive
// for the whole run. After a warm-up of load (rackMemWarmup, so that every heap holds its lazy
// half), each round does, side by side in turns: an idle refork (forkctl refork --wait; Puma:
// SIGURG), then a refork under wrk -t2 -c16 keep-alive (rackmem_rollout_test.go's
// reforkUnderLoad: 5 s of steady load, the refork, the 10 s after it). The table gives each
// side's median idle and loaded refork (as forkctl refork --wait takes it; Puma: from its SIGURG),
// loaded over idle, each against Puma's, and the requests/s of the 10 s after the refork against
// the 5 s before; then the same reforks as each server's own log times them, and the templates'
// readying times logged during the reforks.
//
//	FORKD_BENCH_LOCK=/tmp/forkd-heavy.lock go test -run XXX -bench BenchmarkRackReforkNice -benchtime 1x ./test/bench/
//
// FORKD_BENCH_REFORK_ROUNDS sets the rounds (default 3); each holds the heavy lock
// (FORKD_BENCH_LOCK), released between rounds. FORKD_BENCH_REFORK_NICE lists the refork_nice
// values to compare (default "10,19": the old default and the new). FORKD_BENCH_REFORK_TRACE=1 runs the forkd masters at log
// level debug and prints, for each loaded refork, every line forkd and its workers logged from its
// start record to its done record, each with its offset in ms: the refork's critical path.
// FORKD_BENCH_REFORK_SURGE lists rollout.max_surge values to compare (default: the default, 1);
// FORKD_BENCH_REFORK_MODES the modes (default "template,mold").

// rackReforkNiceSides are the forkd sides: template mode and mold mode, each with every nice
// value of FORKD_BENCH_REFORK_NICE (a comma-separated list; default "10,19").
func rackReforkNiceSides(b *testing.B) []rackMemVariant {
	nices := envInts(b, "FORKD_BENCH_REFORK_NICE", "nice values", 0, 19, []int{10, 19})
	surges := envInts(b, "FORKD_BENCH_REFORK_SURGE", "max_surge values", 1, 8, []int{0}) // 0: the default rollout block
	modes := "template,mold"
	if s := os.Getenv("FORKD_BENCH_REFORK_MODES"); s != "" {
		modes = s
	}
	var sides []rackMemVariant
	for _, mode := range []struct{ name, block, env string }{
		{"template", "", "template mode"},
		{"mold", "  refork_from = \"warmest\"\n", "refork_from = \"warmest\""},
	} {
		if !slices.Contains(strings.Split(modes, ","), mode.name) {
			continue
		}
		for _, n := range nices {
			for _, surge := range surges {
				v := rackMemVariant{name: fmt.Sprintf("%s nice %d", mode.name, n),
					forkWorker: mode.block + fmt.Sprintf("  refork_nice = %d\n", n), env: fmt.Sprintf("%s, refork_nice = %d", mode.env, n)}
				if surge > 0 {
					v.name += fmt.Sprintf(" surge %d", surge)
					v.extra = fmt.Sprintf("rollout {\n  max_surge = %d\n}\n", surge)
					v.env += fmt.Sprintf(", max_surge = %d", surge)
				}
				sides = append(sides, v)
			}
		}
	}
	return sides
}

// envInts reads the environment variable name as a comma-separated list of what (each in
// lo..hi), or gives def when it is unset.
func envInts(b *testing.B, name, what string, lo, hi int, def []int) []int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	var ns []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < lo || n > hi {
			b.Fatalf("%s: %q: want %s in %d..%d", name, s, what, lo, hi)
		}
		ns = append(ns, n)
	}
	return ns
}

// rackReforkNiceRun is one side's figures over the rounds.
type rackReforkNiceRun struct {
	name, env    string
	idle, loaded []time.Duration
	// loggedIdle and loggedLoaded are the same reforks in the server's own log: forkd's start to
	// done record (idle and loaded take forkctl's exec and connection too, which under load
	// waits for the CPU like any new process), Puma's restart line to its last booted line.
	loggedIdle, loggedLoaded []time.Duration
	steady, after            []float64
	errors, non2xx           int
	readied                  []string // during the loaded reforks
	readiedIdle              []string
	traces                   [][]string
	output                   func() string
	side                     *rackMemSide
}

var (
	rackReforkNiceRuns []*rackReforkNiceRun
	rackReforkNiceInfo string
)

func BenchmarkRackReforkNice(b *testing.B) {
	ruby, puma := requireRackTools(b)
	wrk, err := exec.LookPath("wrk")
	if err != nil {
		b.Skip("wrk is not installed: apt-get install -y wrk")
	}
	rounds := 3
	if s := os.Getenv("FORKD_BENCH_REFORK_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("FORKD_BENCH_REFORK_ROUNDS: %q: want a positive count", s)
		}
		rounds = n
	}
	load := loadAvg()
	started := time.Now()
	var runs []*rackReforkNiceRun
	var pc *pumaCluster
	fatal := func(r *rackReforkNiceRun, what string, err error) {
		b.Helper()
		b.Fatalf("%s: %s: %v\noutput:\n%s", r.name, what, err, r.output())
	}
	turn := func(i int) []*rackReforkNiceRun { return rotated(runs, i) }
	round(b, "boot", func() {
		for _, v := range rackReforkNiceSides(b) {
			app := rackMemApp
			app.forkBlock = "fork_worker {\n  refork_after = [1000, false]\n" + v.forkWorker + "}\n"
			fm := startForkdRack(b, ruby, app)
			s := forkdRackSide(b, fm)
			s.name = v.name
			runs = append(runs, &rackReforkNiceRun{name: v.name, env: v.env, output: fm.out.String,
				side: &rackMemSide{rackSide: s, output: fm.out.String, fm: fm}})
		}
		pc = startPuma(b, puma, rackMemApp)
		runs = append(runs, &rackReforkNiceRun{name: "puma", env: "--fork-worker=1000", output: pc.out.String,
			side: &rackMemSide{rackSide: pc.side(), output: pc.out.String}})
	})
	round(b, "warm-up", func() {
		for _, r := range runs {
			if _, err := runWrk(wrk, r.side.url+"/", rackMemConns, rackMemWarmup, 0); err != nil {
				fatal(r, "wrk", err)
			}
		}
	})
	for i := range rounds {
		round(b, fmt.Sprintf("round %d", i+1), func() {
			for _, r := range turn(i) {
				before := strings.Count(r.output(), "readied the template")
				ro, err := r.side.refork(true)
				if err != nil {
					fatal(r, "idle refork", err)
				}
				r.idle = append(r.idle, ro.took)
				r.loggedIdle = append(r.loggedIdle, ro.logged)
				r.readiedIdle = append(r.readiedIdle, readiedSince(r.output(), before)...)
			}
			for _, r := range turn(i + 1) {
				before := strings.Count(r.output(), "readied the template")
				res, err := reforkUnderLoad(wrk, r.side)
				if err != nil {
					fatal(r, "refork under load", err)
				}
				r.loaded = append(r.loaded, res.reforkLoaded)
				r.loggedLoaded = append(r.loggedLoaded, res.reforkLoggedLoaded)
				r.steady = append(r.steady, res.reforkSteady)
				r.after = append(r.after, res.reforkAfter)
				r.errors += res.reforkRun.socketErrors()
				r.non2xx += res.reforkRun.non2xx
				r.readied = append(r.readied, readiedSince(r.output(), before)...)
				if span := res.reforkSpan; os.Getenv("FORKD_BENCH_REFORK_TRACE") != "" && r.side.fm != nil && !span[0].IsZero() {
					r.traces = append(r.traces, r.side.fm.out.between(span[0], span[1], 1000))
				}
			}
		})
	}
	b.ReportMetric(0, "ns/op")
	for _, r := range runs {
		b.ReportMetric(ms(median(r.idle)), strings.ReplaceAll(r.name, " ", "-")+"-idle-ms")
		b.ReportMetric(ms(median(r.loaded)), strings.ReplaceAll(r.name, " ", "-")+"-loaded-ms")
	}
	rackReforkNiceRuns = runs
	rackReforkNiceInfo = fmt.Sprintf("%d workers x %d threads, test/benchrack/%s, wrk -t2 -c%d keep-alive, %d rounds; %s vs %s; %s in %s",
		rackWorkers, rackThreads, rackMemRackup, rackMemConns, rounds, forkdVersion(runs[0].side.fm), pc.version, busy(load),
		time.Since(started).Round(time.Second))
}

// readiedSince returns the readying lines the output logged after its first n.
func readiedSince(out string, n int) []string {
	var lines []string
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, "readied the template"); i >= 0 {
			if n > 0 {
				n--
				continue
			}
			line = line[i:]
			if j := strings.Index(line, ":"); j >= 0 {
				line = line[:j]
			}
			lines = append(lines, strings.TrimSuffix(line, "\""))
		}
	}
	return lines
}

func medianRate(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func printRackReforkNiceSummary(w io.Writer) {
	if len(rackReforkNiceRuns) == 0 {
		return
	}
	runs := rackReforkNiceRuns
	puma := runs[len(runs)-1]
	fmt.Fprintf(w, "\nBenchmarkRackReforkNice: refork idle and under load, medians (%s)\n", rackReforkNiceInfo)
	fmt.Fprintf(w, "%-18s %-34s %18s %18s %14s %26s %s\n", "side", "config", "idle (x Puma)", "loaded (x Puma)", "loaded/idle",
		"r/s 10 s after / 5 s before", "wrk errors")
	for _, r := range runs {
		idle, loaded := median(r.idle), median(r.loaded)
		ratios := make([]string, len(r.after))
		for i := range r.after {
			ratios[i] = fmt.Sprintf("%.2f", ratioOf(r.after[i], r.steady[i]))
		}
		fmt.Fprintf(w, "%-18s %-34s %18s %18s %14s %26s %d socket, %d non-2xx\n", r.name, r.env,
			fmt.Sprintf("%.0f ms (%.2fx)", ms(idle), ratioOf(ms(idle), ms(median(puma.idle)))),
			fmt.Sprintf("%.0f ms (%.2fx)", ms(loaded), ratioOf(ms(loaded), ms(median(puma.loaded)))),
			fmt.Sprintf("%.2fx", ratioOf(ms(loaded), ms(idle))),
			fmt.Sprintf("%.0f/%.0f (%s)", medianRate(r.after), medianRate(r.steady), strings.Join(ratios, " ")),
			r.errors, r.non2xx)
		fmt.Fprintf(w, "%-18s   each: idle %s; loaded %s\n", "", fmtDurations(r.idle), fmtDurations(r.loaded))
		li, ll := median(r.loggedIdle), median(r.loggedLoaded)
		fmt.Fprintf(w, "%-18s   in its own log: idle %.0f ms, loaded %.0f ms (%.2fx; each: idle %s; loaded %s)\n", "",
			ms(li), ms(ll), ratioOf(ms(ll), ms(li)), fmtDurations(r.loggedIdle), fmtDurations(r.loggedLoaded))
		for _, line := range r.readiedIdle {
			fmt.Fprintf(w, "%-18s   idle: %s\n", "", line)
		}
		for _, line := range r.readied {
			fmt.Fprintf(w, "%-18s   under load: %s\n", "", line)
		}
		for i, trace := range r.traces {
			fmt.Fprintf(w, "%-18s   trace of loaded refork %d:\n", "", i+1)
			for _, line := range trace {
				fmt.Fprintf(w, "%-18s     %s\n", "", line)
			}
		}
	}
}

func fmtDurations(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmt.Sprintf("%.0f ms", ms(d))
	}
	return strings.Join(s, ", ")
}
