package test

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/internal/proctest"
	"github.com/forkd/forkd/pkg/control"
)

// eventsFollower is a `forkctl events` running against a forkd, read line by line.
type eventsFollower struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	stderr *proctest.Output
}

// followEvents starts `forkctl events` with args against f.
func (f *forkd) followEvents(args ...string) *eventsFollower {
	f.t.Helper()
	cmd := exec.Command(filepath.Join(bin, "forkctl"), append([]string{"--socket", f.socket, "events"}, args...)...)
	e := &eventsFollower{t: f.t, cmd: cmd, lines: make(chan string, 10000), stderr: &proctest.Output{}}
	cmd.Stderr = e.stderr
	out, err := cmd.StdoutPipe()
	require.NoError(f.t, err)
	require.NoError(f.t, cmd.Start())
	go func() {
		scanner := bufio.NewScanner(out)
		for scanner.Scan() {
			e.lines <- scanner.Text()
		}
		close(e.lines)
	}()
	f.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return e
}

// waitLine returns the first line from now on for which match holds.
func (e *eventsFollower) waitLine(what string, match func(string) bool) string {
	e.t.Helper()
	timeout := time.After(deadline)
	for {
		select {
		case line, ok := <-e.lines:
			require.True(e.t, ok, "forkctl events ended before %s; stderr: %s", what, e.stderr.String())
			if match(line) {
				return line
			}
		case <-timeout:
			e.t.Fatalf("no %s from forkctl events; stderr: %s", what, e.stderr.String())
		}
	}
}

// waitEvent returns the first event (of -o json) from now on for which match holds.
func (e *eventsFollower) waitEvent(what string, match func(control.Event) bool) control.Event {
	e.t.Helper()
	var ev control.Event
	e.waitLine(what, func(line string) bool {
		ev = control.Event{}
		require.NoError(e.t, json.Unmarshal([]byte(line), &ev), line)
		return match(ev)
	})
	return ev
}

// A refork shows as a rollout that starts and ends, with the forked workers' readiness between;
// a killed worker as a crash; and forkctl top shows the workers and the latest events.
func TestEventsShowReforkAndCrash(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 3, nil, forkWorkerBlock)})
	before := f.waitReady(3)
	events := f.followEvents("-o", "json", "--recent")
	events.waitEvent("cluster-ready", func(ev control.Event) bool { return ev.Type == control.EventClusterReady })

	out, code := f.forkctl("refork", "--wait")
	require.Equal(t, 0, code, out)
	started := events.waitEvent("the refork's start", func(ev control.Event) bool { return ev.Type == control.EventRolloutStarted })
	assert.Equal(t, control.RolloutRefork, started.Kind)
	assert.Equal(t, 2, started.Generation)
	forked := map[int]bool{}
	// The workers the refork replaces exit as forkd stopped them, before or after its end.
	replaced := map[int]string{before.WorkerList[1].PID: "", before.WorkerList[2].PID: ""}
	noteExit := func(ev control.Event) {
		if ev.Type != control.EventWorkerExited {
			return
		}
		if _, ok := replaced[ev.Worker.PID]; ok {
			replaced[ev.Worker.PID] = ev.Reason
		}
	}
	ended := events.waitEvent("the refork's end", func(ev control.Event) bool {
		if ev.Type == control.EventWorkerReady && ev.Path == control.PathFork && ev.Worker.Generation == 2 {
			forked[ev.Worker.Index] = true
		}
		noteExit(ev)
		return ev.Type == control.EventRolloutEnded
	})
	assert.Equal(t, map[int]bool{1: true, 2: true}, forked, "workers 1 and 2 were re-forked, and became ready, during the refork")
	for pid, reason := range replaced {
		if reason == "" {
			events.waitEvent("the exit of a replaced worker", func(ev control.Event) bool {
				noteExit(ev)
				return replaced[pid] != ""
			})
		}
	}
	assert.Equal(t, map[int]string{before.WorkerList[1].PID: control.ExitStopped, before.WorkerList[2].PID: control.ExitStopped},
		replaced)
	assert.Equal(t, control.RolloutRefork, ended.Kind)
	assert.Equal(t, control.ResultSucceeded, ended.Result)
	assert.Equal(t, 2, ended.Generation)
	assert.Positive(t, ended.DurationSeconds)
	assert.Greater(t, ended.Seq, started.Seq)

	st := f.waitFor("generation 2 settled", func(st control.Status) bool {
		return st.Generation == 2 && st.Phase == control.PhaseRunning && len(st.WorkerList) == 3 && st.Ready == 3
	})
	victim := st.WorkerList[2]
	require.NoError(t, syscall.Kill(victim.PID, syscall.SIGKILL))
	crash := events.waitEvent("the killed worker's exit", func(ev control.Event) bool {
		return ev.Type == control.EventWorkerExited && ev.Worker.PID == victim.PID
	})
	assert.Equal(t, control.ExitCrash, crash.Reason)
	assert.Equal(t, "killed by SIGKILL", crash.Status)
	assert.Equal(t, control.EventWorker{Index: 2, PID: victim.PID, Generation: 2}, *crash.Worker)

	// top, its output piped: plain snapshots of the same cluster.
	f.waitReady(3)
	out, code = f.forkctl("top", "-n", "2", "--interval", "200ms")
	require.Equal(t, 0, code, out)
	require.NotContains(t, out, "\x1b")
	last := out[strings.LastIndex(out, "\n\n"+"forkd: ")+2:]
	assert.Contains(t, last, "mode: fork, template: worker 0")
	assert.Contains(t, last, "refork succeeded, generation 2, after ")
	assert.Contains(t, last, "worker 2 (pid "+strconv.Itoa(victim.PID)+", generation 2) exited: crash (killed by SIGKILL)")
	for _, w := range f.status().WorkerList {
		assert.Contains(t, last, "\n"+strconv.Itoa(w.Index)+"  ", "a row for worker %d", w.Index)
	}
}

// A worker forkd kills for its missing heartbeat says so; a hot restart's steps show in the human
// output, which follows the master through its exec and misses nothing.
func TestEventsShowHeartbeatKillAndHotRestart(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + `
workers = 2
timeouts {
  worker = "1s"
}
`})
	st := f.waitReady(2)
	events := f.followEvents("--recent")
	hung := st.WorkerList[0].PID
	events.waitLine("the start's events", func(l string) bool { return strings.Contains(l, "cluster-ready") })
	require.NoError(t, syscall.Kill(hung, syscall.SIGSTOP))
	line := events.waitLine("the hung worker's exit", func(l string) bool {
		return strings.Contains(l, "worker-exited") && strings.Contains(l, "pid "+strconv.Itoa(hung)+",")
	})
	assert.Contains(t, line, "exited: heartbeat_timeout (killed by SIGKILL (heartbeat timeout))")

	out, code := f.forkctl("restart", "--wait")
	require.Equal(t, 0, code, out)
	pid := strconv.Itoa(f.cmd.Process.Pid)
	for _, want := range []string{
		"rollout-started   restart started",
		"master-restart    the master (pid " + pid + ") execs its new image",
		"master-restart    the new master image took the cluster over",
		"rollout-ended     restart succeeded, generation 2, after ",
	} {
		events.waitLine(want, func(l string) bool { return strings.Contains(l, want) })
	}

	// Keeping the workers, the new image ends the restart as it adopts them: the adoption first,
	// and no worker replaced. (The old workers of the phased restart have exited first.)
	f.waitFor("generation 2 alone", func(st control.Status) bool {
		return st.Phase == control.PhaseRunning && len(st.WorkerList) == 2 && st.Ready == 2 &&
			st.WorkerList[0].Generation == 2 && st.WorkerList[1].Generation == 2
	})
	out, code = f.forkctl("restart", "--keep-workers", "--wait")
	require.Equal(t, 0, code, out)
	events.waitLine("the start of the restart keeping the workers", func(l string) bool {
		return strings.Contains(l, "rollout-started   restart started")
	})
	lines := []string{"  rollout-started   restart started"}
	events.waitLine("the end of the restart keeping the workers", func(l string) bool {
		lines = append(lines, l)
		return strings.Contains(l, "rollout-ended     restart")
	})
	var steps []string
	for _, l := range lines {
		assert.NotContains(t, l, "worker-", "the workers are kept")
		if i := strings.Index(l, "  rollout-"); i >= 0 {
			steps = append(steps, strings.TrimSpace(l[i:]))
		} else if i := strings.Index(l, "  master-restart"); i >= 0 {
			steps = append(steps, strings.TrimSpace(l[i:]))
		}
	}
	require.Len(t, steps, 4, "%q", lines)
	assert.Equal(t, "rollout-started   restart started", steps[0])
	assert.Equal(t, "master-restart    the master (pid "+pid+") execs its new image", steps[1])
	assert.Equal(t, "master-restart    the new master image took the cluster over", steps[2])
	assert.Contains(t, steps[3], "rollout-ended     restart succeeded, generation 2, after ")
	assert.NotContains(t, events.stderr.String(), "missed")
}
