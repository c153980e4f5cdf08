package chaos

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// report collects the rounds and prints the table make chaos shows.
type report struct {
	seed    uint64
	full    bool
	rounds  int
	out     io.Writer
	verbose bool

	mu      sync.Mutex
	results []roundResult
	skipped []string
}

func (r *report) mode() string {
	if r.full {
		return fmt.Sprintf("full: every fault on every runner, %d rounds", r.rounds)
	}
	return "short: every fault not known to fail, once on every runner"
}

// replay is the command that injects the same faults at the same moments again: the short version
// plans other rounds than make chaos for the same seed.
func (r *report) replay() string {
	if r.full {
		return fmt.Sprintf("make chaos SEED=%d ROUNDS=%d", r.seed, r.rounds)
	}
	return fmt.Sprintf("go test -count=1 ./test/chaos -args -chaos.seed=%d", r.seed)
}

// sayf prints progress as it happens when the test runs verbosely (make chaos).
func (r *report) sayf(format string, args ...any) {
	if r.verbose {
		fmt.Fprintf(r.out, format+"\n", args...)
	}
}

func (r *report) add(res roundResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.results = append(r.results, res)
}

func (r *report) addSkipped(what ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.skipped = append(r.skipped, what...)
}

func (r *report) violationCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, res := range r.results {
		n += len(res.violations)
	}
	return n
}

func (res roundResult) summary() string {
	expected := 0
	for _, f := range res.failed {
		if f.expected {
			expected++
		}
	}
	s := fmt.Sprintf("%s: %d injected, %d requests, %d failed (%d expected), %d violations",
		res.duration.Round(100*time.Millisecond), res.injected, res.served, len(res.failed), expected, len(res.violations))
	for _, n := range res.notes {
		s += "\n    note: " + n
	}
	for _, v := range res.violations {
		s += "\n    VIOLATION " + v.invariant + ": " + v.detail
	}
	return s
}

type row struct {
	fault, runner    string
	rounds, injected int
	served           int64
	failed, expected int
	violations       int
	invariants       map[string]int
	known            *knownFailure
	duration         time.Duration
}

// table is the report: one row per fault and runner, the totals, then every violation, the
// expected failures' causes, and the known-failing faults.
func (r *report) table() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	rows := map[[2]string]*row{}
	var keys [][2]string
	total := row{invariants: map[string]int{}}
	for _, res := range r.results {
		k := [2]string{res.fault, res.runner}
		rw := rows[k]
		if rw == nil {
			rw = &row{fault: res.fault, runner: res.runner, invariants: map[string]int{}, known: knownFailingFor(res.fault, res.runner)}
			rows[k] = rw
			keys = append(keys, k)
		}
		for _, add := range []*row{rw, &total} {
			add.rounds++
			add.injected += res.injected
			add.served += res.served
			add.failed += len(res.failed)
			add.duration += res.duration
			for _, f := range res.failed {
				if f.expected {
					add.expected++
				}
			}
			add.violations += len(res.violations)
			for _, v := range res.violations {
				add.invariants[v.invariant]++
			}
		}
	}
	order := map[string]int{}
	for i, f := range faults {
		order[f.name] = i
	}
	sort.SliceStable(keys, func(i, j int) bool {
		if keys[i][0] != keys[j][0] {
			return order[keys[i][0]] < order[keys[j][0]]
		}
		return keys[i][1] < keys[j][1]
	})

	var b strings.Builder
	fmt.Fprintf(&b, "\nforkd fault suite: seed %d (replay: %s), %s\n\n", r.seed, r.replay(), r.mode())
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "FAULT\tRUNNER\tROUNDS\tINJECTED\tREQUESTS\tFAILED (EXPECTED)\tVIOLATIONS\tTIME\t")
	line := func(rw *row, fault, runner string) {
		viol := fmt.Sprint(rw.violations)
		if rw.violations > 0 {
			viol += " (" + invariantCounts(rw.invariants) + ")"
		}
		if rw.known != nil {
			viol += " [known]"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d (%d)\t%s\t%s\t\n", fault, runner, rw.rounds, rw.injected, rw.served,
			rw.failed, rw.expected, viol, rw.duration.Round(time.Second))
	}
	for _, k := range keys {
		line(rows[k], k[0], k[1])
	}
	line(&total, "total", "")
	w.Flush()

	var violations, causes []string
	causeCount := map[string]int{}
	for _, res := range r.results {
		for _, v := range res.violations {
			violations = append(violations, fmt.Sprintf("- round %d %s %s (%s): %s: %s", res.index, res.runner, res.fault, res.plan, v.invariant, v.detail))
		}
		for _, f := range res.failed {
			if f.expected {
				key := fmt.Sprintf("%s %s: %s", res.fault, res.runner, generalize(f.cause))
				if causeCount[key] == 0 {
					causes = append(causes, key)
				}
				causeCount[key]++
			}
		}
	}
	if len(violations) > 0 {
		fmt.Fprintf(&b, "\nViolations:\n%s\n", strings.Join(violations, "\n"))
	}
	if len(causes) > 0 {
		b.WriteString("\nExpected failed requests (a fault killed the process serving them):\n")
		for _, c := range causes {
			fmt.Fprintf(&b, "- %d x %s\n", causeCount[c], c)
		}
	}
	b.WriteString("\nThe masters after each round (baseline: when each master first settled):\n")
	for _, runner := range runnersIn(r.results) {
		var maxFDs, baseFDs int
		var maxRSS, baseRSS uint64
		for _, res := range r.results {
			if res.runner != runner {
				continue
			}
			if res.usage.fds-res.baseline.fds > maxFDs-baseFDs || baseFDs == 0 {
				maxFDs, baseFDs = res.usage.fds, res.baseline.fds
			}
			if res.usage.rss > maxRSS {
				maxRSS, baseRSS = res.usage.rss, res.baseline.rss
			}
		}
		fmt.Fprintf(&b, "- %s: at most %d descriptors (baseline %d), RSS at most %.1f MiB (baseline %.1f MiB)\n",
			runner, maxFDs, baseFDs, mib(maxRSS), mib(baseRSS))
	}
	if len(knownFailing) > 0 {
		b.WriteString("\nKnown failing (knownFailing in known_test.go):\n")
		for _, k := range knownFailing {
			runner := k.runner
			if runner == "" {
				runner = "every runner"
			}
			state := "not run in the short version"
			if r.full {
				state = knownState(rows, k)
			}
			fmt.Fprintf(&b, "- %s on %s: waits for %s; %s\n", k.fault, runner, k.waitsFor, state)
		}
	}
	if len(r.skipped) > 0 {
		fmt.Fprintf(&b, "\nNot run on this machine:\n- %s\n", strings.Join(r.skipped, "\n- "))
	}
	return b.String()
}

func runnersIn(results []roundResult) []string {
	var names []string
	for _, res := range results {
		if !slices.Contains(names, res.runner) {
			names = append(names, res.runner)
		}
	}
	return names
}

// knownState says whether a known-failing fault still fails in this run.
func knownState(rows map[[2]string]*row, k knownFailure) string {
	ran, failed := 0, 0
	for key, rw := range rows {
		if key[0] == k.fault && (k.runner == "" || k.runner == key[1]) {
			ran += rw.rounds
			failed += rw.violations
		}
	}
	switch {
	case ran == 0:
		return "not run"
	case failed == 0:
		return fmt.Sprintf("PASSED in %d rounds: once it has passed for good, take it off the list", ran)
	default:
		return fmt.Sprintf("still fails (%d violations in %d rounds)", failed, ran)
	}
}

func invariantCounts(m map[string]int) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %d", n, m[n]))
	}
	return strings.Join(parts, ", ")
}

// generalize drops the PIDs from a cause, so that the same cause counts once.
func generalize(cause string) string {
	var b strings.Builder
	digits := false
	for _, r := range cause {
		if r >= '0' && r <= '9' {
			if !digits {
				b.WriteString("N")
			}
			digits = true
			continue
		}
		digits = false
		b.WriteRune(r)
	}
	return b.String()
}
