package chaos

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

func describePlan(steps []step) []string {
	var out []string
	for _, s := range steps {
		out = append(out, fmt.Sprintf("%d %s %s: %s", s.index, s.runner.name, s.fault.name, s.inj))
	}
	return out
}

// TestPlanIsTheSeeds: the same seed injects the same faults at the same moments, whatever else is
// selected; another seed, others.
func TestPlanIsTheSeeds(t *testing.T) {
	python := runnerNamed("python")
	a, _ := plan(7, python, faults, 3, true)
	b, _ := plan(7, python, faults, 3, true)
	require.Equal(t, describePlan(a), describePlan(b))
	c, _ := plan(8, python, faults, 3, true)
	assert.NotEqual(t, describePlan(a), describePlan(c))

	// A fault's parameters depend on the seed, the runner, the fault and the round only.
	only, _ := plan(7, python, []*fault{faultNamed("restart-stall-master")}, 3, true)
	var stalls []string
	for _, s := range a {
		if s.fault.name == "restart-stall-master" {
			stalls = append(stalls, s.inj.String())
		}
	}
	require.Len(t, only, 3)
	for i, s := range only {
		assert.Equal(t, stalls[i], s.inj.String())
	}
}

func TestPlanLeavesOutWhatDoesNotApply(t *testing.T) {
	steps, _ := plan(1, runnerNamed("go-hello"), faults, 1, true)
	for _, s := range steps {
		assert.False(t, s.fault.forkOnly, "%s planned for a runner in exec mode", s.fault.name)
	}
	short, _ := plan(1, runnerNamed("python"), faults, 1, false)
	for _, s := range short {
		assert.Nil(t, knownFailingFor(s.fault.name, "python"), "the short version plans %s, which is known to fail", s.fault.name)
	}
}

func TestMoment(t *testing.T) {
	worker := func(i int) *int { return &i }
	spawned := func(gen, slot int) event {
		return event{Event: evWorkerSpawned, Generation: gen, Worker: worker(slot), PID: 100 + slot}
	}
	second := moment("spawn#1", 3)
	assert.False(t, second(spawned(2, 0)), "another generation")
	assert.False(t, second(spawned(3, 0)), "the first of generation 3")
	assert.True(t, second(spawned(3, 1)), "the second of generation 3")
	assert.False(t, second(spawned(3, 2)), "fires once")

	check := moment("check", 3)
	assert.True(t, check(event{Event: evRestartStart}), "the old image checks the binary: no generation yet")
	assert.False(t, check(event{Event: evRestartStart, Generation: 3}), "the new image's rollout")
}

func TestExplain(t *testing.T) {
	now := time.Now()
	c := &cluster{log: &eventLog{}, master: nil}
	c.log.events = []event{
		{Time: now, Event: evWorkerExited, PID: 20, Status: "exit status 0 (replaced by generation 2)"},
		{Time: now, Event: evWorkerExited, PID: 30, Status: "killed by SIGKILL (heartbeat timeout)"},
	}
	rd := &roundRun{c: c, kills: []kill{{at: now, pid: 10, what: "worker 1"}}, orphaned: map[int]bool{}}
	for _, tt := range []struct {
		f        failure
		expected bool
		cause    string
	}{
		{failure{at: now.Add(time.Millisecond), reused: true, pid: 10, stage: "no response"}, true, "in flight on pid 10, which the fault killed"},
		{failure{at: now.Add(time.Millisecond), stage: "no response"}, true, "on a new connection as the fault killed pid 10"},
		{failure{at: now.Add(time.Minute), stage: "no response"}, false, "no worker was killed then"},
		{failure{at: now, reused: true, pid: 20, stage: "no response"}, false, "draining"},
		{failure{at: now, reused: true, pid: 30, stage: "no response"}, false, "heartbeat timeout"},
		{failure{at: now, stage: "status"}, false, "answered with an error"},
		{failure{at: now, stage: "connect"}, false, "refused a connection"},
	} {
		e := rd.explain(tt.f)
		assert.Equal(t, tt.expected, e.expected, "%s: %s", tt.f, e.cause)
		assert.Contains(t, e.cause, tt.cause, "%s", tt.f)
	}
}

func TestCheckReplaced(t *testing.T) {
	st := func(gen int, workers ...control.Worker) control.Status {
		return control.Status{Generation: gen, WorkerList: workers}
	}
	w := func(index, pid, gen int) control.Worker {
		return control.Worker{Index: index, PID: pid, Generation: gen}
	}
	for _, tt := range []struct {
		name          string
		kind          string
		before, after control.Status
		happened      bool
		violated      string
	}{
		{"every worker replaced", "reload", st(1, w(0, 10, 1), w(1, 11, 1)), st(2, w(0, 20, 2), w(1, 21, 2)), true, ""},
		{"a refork keeps the template", "refork", st(1, w(0, 10, 1), w(1, 11, 1)), st(2, w(0, 10, 2), w(1, 21, 2)), true, ""},
		{"a reload left a worker in place", "reload", st(1, w(0, 10, 1), w(1, 11, 2)), st(2, w(0, 20, 2), w(1, 11, 2)), true,
			"left worker 1 (pid 11, generation 2) in place"},
		{"a failed rollout left nothing ahead", "reload", st(1, w(0, 10, 1)), st(1, w(0, 20, 1)), false, ""},
		{"a failed rollout left a worker ahead", "refork", st(1, w(0, 10, 1), w(1, 11, 1)), st(1, w(0, 30, 1), w(1, 21, 2)), false,
			"left worker 1 (pid 21) on generation 2, the cluster back on 1"},
		{"one left ahead before is not this rollout's", "refork", st(1, w(0, 10, 1), w(1, 21, 2)), st(1, w(0, 30, 1), w(1, 21, 2)), false, ""},
	} {
		rd := &roundRun{res: &roundResult{}}
		rd.checkReplaced(tt.kind, tt.before, tt.after, tt.happened)
		if tt.violated == "" {
			assert.Empty(t, rd.res.violations, tt.name)
			continue
		}
		if assert.Len(t, rd.res.violations, 1, tt.name) {
			assert.Equal(t, invRollout, rd.res.violations[0].invariant, tt.name)
			assert.Contains(t, rd.res.violations[0].detail, tt.violated, tt.name)
		}
	}
	_, ahead := aheadOfCluster(st(1, w(0, 10, 1), w(1, 21, 2)))
	assert.True(t, ahead)
	_, ahead = aheadOfCluster(st(2, w(0, 10, 2), w(1, 21, 1)))
	assert.False(t, ahead)
}
