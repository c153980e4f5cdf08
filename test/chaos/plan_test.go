package chaos

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
