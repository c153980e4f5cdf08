package chaos

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// step is one planned round: a fault, drawn in full from the seed.
type step struct {
	index  int
	runner *runner
	fault  *fault
	inj    injection
}

// streamOf is a random source that depends only on the seed and the names given, so that the
// plan for one runner or fault is the same whatever else is selected.
func streamOf(seed uint64, names ...any) *rand.Rand {
	h := fnv.New64a()
	fmt.Fprint(h, names...)
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// plan lists a runner's rounds: each applicable fault once per round, in an order drawn from the
// seed. The short version leaves out the known-failing faults. notRun says what is left out on
// this machine and why.
func plan(seed uint64, r *runner, selected []*fault, rounds int, full bool) (steps []step, notRun []string) {
	var applicable []*fault
	for _, f := range selected {
		switch {
		case f.forkOnly && !r.fork:
		case !full && knownFailingFor(f.name, r.name) != nil:
		case f.asNobody && os.Geteuid() != 0:
			notRun = append(notRun, fmt.Sprintf("%s on %s: needs root, to run its helper as nobody", f.name, r.name))
		default:
			applicable = append(applicable, f)
		}
	}
	order := streamOf(seed, "order", r.name)
	for round := 1; round <= rounds; round++ {
		for _, i := range order.Perm(len(applicable)) {
			f := applicable[i]
			steps = append(steps, step{index: len(steps) + 1, runner: r, fault: f,
				inj: f.plan(streamOf(seed, r.name, f.name, round))})
		}
	}
	return steps, notRun
}

func selection[T any](list string, all []T, named func(string) T, isNil func(T) bool) ([]T, error) {
	if list == "" {
		return all, nil
	}
	var out []T
	for _, name := range strings.Split(list, ",") {
		v := named(strings.TrimSpace(name))
		if isNil(v) {
			return nil, fmt.Errorf("no such one: %q", name)
		}
		out = append(out, v)
	}
	return out, nil
}

// TestChaos is the fault suite: see the package doc.
func TestChaos(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = rand.Uint64N(1_000_000_000)
	}
	selRunners, err := selection(*runnersFlag, runners, runnerNamed, func(r *runner) bool { return r == nil })
	if err != nil {
		t.Fatalf("-chaos.runners: %v", err)
	}
	selFaults, err := selection(*faultsFlag, faults, faultNamed, func(f *fault) bool { return f == nil })
	if err != nil {
		t.Fatalf("-chaos.faults: %v", err)
	}
	rounds := 1
	if *fullFlag {
		rounds = *roundsFlag
	}
	rep := &report{seed: seed, full: *fullFlag, rounds: rounds, out: os.Stdout, verbose: testing.Verbose()}
	rep.sayf("chaos: seed %d (replay: %s), %s", seed, rep.replay(), rep.mode())
	for _, r := range selRunners {
		t.Run(r.name, func(t *testing.T) {
			if why := r.missing(); why != "" {
				rep.addSkipped(fmt.Sprintf("runner %s: %s", r.name, why))
				t.Skip(why)
			}
			steps, notRun := plan(seed, r, selFaults, rounds, *fullFlag)
			rep.addSkipped(notRun...)
			runRunner(t, rep, r, steps)
		})
	}
	table := rep.table()
	n := rep.violationCount()
	switch {
	case rep.verbose:
		fmt.Fprint(rep.out, table)
		if n > 0 {
			t.Errorf("%d invariant violations (seed %d): see the table", n, seed)
		}
	case n > 0:
		t.Errorf("%d invariant violations (seed %d)\n%s", n, seed, table)
	}
}

func runRunner(t *testing.T, rep *report, r *runner, steps []step) {
	dir, err := os.MkdirTemp("", "forkd-chaos-"+r.name+"-")
	if err != nil {
		t.Fatal(err)
	}
	c, err := startCluster(r, dir)
	if err != nil {
		t.Fatal(err)
	}
	keep := *keepFlag
	defer func() {
		c.stop()
		if keep || t.Failed() {
			rep.sayf("%s: logs kept in %s", r.name, dir)
			return
		}
		os.RemoveAll(dir)
	}()
	if st, ok, err := c.waitSettled(readyBound); !ok {
		keep = true
		t.Fatalf("%s: the cluster did not start: %s (%v); log in %s", r.name, describe(st), err, dir)
	}
	l := startLoad(c.addr, r.path)
	defer l.stop()
	for _, s := range steps {
		rep.sayf("round %d/%d %s %s: %s", s.index, len(steps), r.name, s.fault.name, s.inj)
		res := runRound(c, l, s)
		rep.add(res)
		if len(res.violations) > 0 {
			// TestChaos reports them all, in its table.
			keep = true
			t.Fail()
		}
		rep.sayf("  %s", res.summary())
	}
}

// aheadOfCluster returns a worker on a generation above the cluster's, if there is one.
func aheadOfCluster(st control.Status) (control.Worker, bool) {
	for _, w := range st.WorkerList {
		if w.Generation > st.Generation {
			return w, true
		}
	}
	return control.Worker{}, false
}

func runRound(c *cluster, l *load, s step) roundResult {
	res := &roundResult{index: s.index, runner: s.runner.name, fault: s.fault.name, plan: s.inj.String()}
	start := time.Now()
	before, ok, err := c.waitSettled(readyBound)
	why := ""
	if !ok {
		// An earlier round left the cluster broken (and said so): start it afresh, as an
		// operator would, so that this round tests something.
		why = fmt.Sprintf("the cluster was not settled (%s, %v)", describe(before), err)
	} else if w, ahead := aheadOfCluster(before); ahead {
		// A failed rollout left it there (and its round said so): this round's rollouts would
		// take it for replaced, and find only that again.
		why = fmt.Sprintf("worker %d (pid %d) is on generation %d, the cluster on %d", w.Index, w.PID, w.Generation, before.Generation)
	}
	if why != "" {
		res.notes = append(res.notes, why+": started a new master")
		if err := c.replaceMaster(); err != nil {
			res.violations = append(res.violations, violation{invReady, "cannot start a new master: " + err.Error()})
			return *res
		}
		if before, ok, err = c.waitSettled(readyBound); !ok {
			res.violations = append(res.violations, violation{invReady,
				fmt.Sprintf("a new master did not settle: %s (%v)", describe(before), err)})
			return *res
		}
	}
	served := l.served()
	rd := &roundRun{c: c, load: l, res: res, before: before, start: time.Now(), mark: c.log.mark(), expectedDeaths: map[int]string{}, orphaned: map[int]bool{}}
	s.inj.inject(rd)
	rd.check()
	res.served -= served
	res.duration = time.Since(start)
	return *res
}
