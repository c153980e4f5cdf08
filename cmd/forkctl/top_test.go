package main

import (
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/forkd/forkd/pkg/control"
	"github.com/stretchr/testify/require"
)

// columns splits a table row on its runs of spaces.
func columns(row string) []string { return strings.Fields(row) }

// workerRow finds the table row of the worker with pid in a snapshot.
func workerRow(t *testing.T, snapshot string, pid int) []string {
	t.Helper()
	for _, line := range strings.Split(snapshot, "\n") {
		if cols := columns(line); len(cols) > 1 && cols[1] == strconv.Itoa(pid) {
			return cols
		}
	}
	t.Fatalf("no row for pid %d in:\n%s", pid, snapshot)
	return nil
}

// When its output is not a terminal, top prints plain snapshots, -n of them; requests per second
// come from two of them.
func TestTopSnapshots(t *testing.T) {
	b := newFakeBackend()
	b.servedPerStatus = 50
	socket := serve(t, b)

	r := forkctl(t, nil, "--socket", socket, "top", "-n", "3", "--interval", "100ms")
	require.Equal(t, 0, r.code, r.stderr)
	require.NotContains(t, r.stdout, "\x1b", "no escapes when the output is not a terminal")
	snapshots := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n\ndemo: ")
	require.Len(t, snapshots, 3, r.stdout)

	header := columns(strings.Split(snapshots[0], "\n")[7])
	require.Equal(t, []string{"INDEX", "PID", "GEN", "ROLE", "STATE", "UPTIME", "REQ/S", "REQUESTS", "RSS", "PSS", "SHARED",
		"PRIVATE", "SHARE", "STATUS"}, header, snapshots[0])
	require.Equal(t, "-", workerRow(t, snapshots[0], 4300)[6], "no rate from one snapshot")
	require.Contains(t, snapshots[0], "requests: -/s")
	for _, s := range snapshots[1:] {
		rate, err := strconv.ParseFloat(workerRow(t, s, 4300)[6], 64)
		require.NoError(t, err, s)
		require.Positive(t, rate, "worker 0 served 50 requests between two snapshots")
	}
	require.Contains(t, snapshots[0], "phase: running, generation 3")
	require.Contains(t, snapshots[0], "workers: 1/2 ready; mode: exec")
}

// The latest events come from the event stream, while top runs.
func TestTopShowsRecentEvents(t *testing.T) {
	b := newFakeBackend()
	b.events.Publish(crashEvent())
	socket := serve(t, b)

	f := follow(t, "--socket", socket, "top", "--interval", "100ms")
	for line := f.next(); !strings.Contains(line, "worker 1 (pid 4301, generation 2) exited: crash"); line = f.next() {
	}
	require.Equal(t, 0, f.interrupt())
}

func TestTopErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		says string
	}{
		{[]string{"top", "--interval", "10ms"}, "--interval 10ms is too short"},
		{[]string{"top", "-n", "-1"}, "-n -1: give a number of refreshes"},
	} {
		r := forkctl(t, nil, append([]string{"--socket", "x"}, tc.args...)...)
		require.Equal(t, exitUsage, r.code, tc.args)
		require.Contains(t, r.stderr, tc.says)
	}
	r := forkctl(t, nil, "--socket", t.TempDir()+"/none.sock", "top", "-n", "1")
	require.Equal(t, exitNotRunning, r.code, r.stderr)
}

func sampleTopView() topView {
	st := sampleStatus()
	st.Phase, st.Rollout, st.Queued = control.PhaseRolling, control.RolloutReload, []string{control.RolloutRefork}
	for i := 2; i < 12; i++ {
		st.WorkerList = append(st.WorkerList, control.Worker{Index: i, PID: 5000 + i, Generation: 3, State: control.WorkerReady,
			Requests: 100, Memory: &control.Memory{RSS: 200 << 20, PSS: 80 << 20, Shared: 150 << 20}})
	}
	now := time.Now()
	v := topView{status: st, at: now, interval: 2 * time.Second, live: true}
	for i := range 30 {
		v.events = append(v.events, control.Event{Seq: uint64(i + 1), Time: now, Type: control.EventScale, Workers: i, Previous: i + 1})
	}
	v.events = append(v.events, control.Event{Seq: 31, Time: now.Add(-90 * time.Second), Type: control.EventRolloutStarted,
		Kind: control.RolloutReload, Generation: 4})
	return v
}

// A frame fits the screen, however small: the header, then the table, then the events, each cut.
func TestRenderTopFitsTheScreen(t *testing.T) {
	v := sampleTopView()
	for _, size := range [][2]int{{120, 40}, {80, 24}, {60, 12}, {40, 5}} {
		lines := renderTop(v, size[0], size[1])
		require.LessOrEqual(t, len(lines), size[1], "%dx%d", size[0], size[1])
		for _, l := range lines {
			require.LessOrEqual(t, utf8.RuneCountInString(l), size[0], "%dx%d: %q", size[0], size[1], l)
		}
	}
	lines := renderTop(v, 120, 40)
	text := strings.Join(lines, "\n")
	require.Contains(t, text, "phase: rolling, generation 3: reload in progress for 1m30s; queued: refork")
	require.Contains(t, text, "; q quits")
	require.Contains(t, text, "rollout-started   reload started: generation 4", "the latest event is shown")
	require.NotContains(t, text, "scaled from 1 to 0 workers", "the oldest events give way")

	// Too short for every worker: the table says how many it leaves out.
	lines = renderTop(v, 120, 16)
	require.Contains(t, strings.Join(lines, "\n"), "... ")
}

func TestRenderTopMemory(t *testing.T) {
	v := sampleTopView()
	v.rates, v.total, v.haveRates = map[int]float64{5002: 12.5}, 12.5, true
	text := strings.Join(renderTop(v, 200, 0), "\n")
	require.Contains(t, text, "requests: 12.5/s; memory: PSS 800.0M (the workers' total), RSS 2000.0M, shared 1500.0M (75%), private 500.0M")
	row := workerRow(t, text, 5002)
	require.Equal(t, []string{"2", "5002", "3", "exec", "ready", "0s", "12.5", "100", "200.0M", "80.0M", "150.0M", "50.0M", "75%", "-"}, row)
}

// During a reload's warm-up, top says how far it is under the phase.
func TestRenderTopWarmUp(t *testing.T) {
	v := sampleTopView()
	v.status.WarmUp = &control.WarmUp{Index: 0, PID: 5000, Served: 7, Requests: 1000, Until: v.at.Add(5 * time.Second),
		IdleUntil: v.at.Add(3 * time.Second)}
	lines := renderTop(v, 200, 0)
	i := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "phase: ") })
	require.Positive(t, i, lines)
	require.Equal(t, "warm-up: worker 0 (pid 5000) served 7/1000 requests; forks in 5s at most (max_wait), 3s if idle", lines[i+1])
}

func TestRateTracker(t *testing.T) {
	var r rateTracker
	at := time.Now()
	st := control.Status{WorkerList: []control.Worker{{PID: 10, Requests: 100}, {PID: 11, Requests: 50}}}
	_, _, ok := r.update(st, at)
	require.False(t, ok, "nothing to compare the first status with")

	st = control.Status{WorkerList: []control.Worker{{PID: 10, Requests: 300}, {PID: 11, Requests: 10}, {PID: 12, Requests: 5}}}
	rates, total, ok := r.update(st, at.Add(2*time.Second))
	require.True(t, ok)
	require.Equal(t, map[int]float64{10: 100}, rates, "a count that went down or a new worker has no rate")
	require.Equal(t, 100.0, total)
}
