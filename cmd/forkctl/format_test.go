package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/forkd/forkd/pkg/control"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteStatusTable(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	st := control.Status{
		Name:       "demo",
		Version:    "forkd 1.0.0",
		MasterPID:  10,
		Uptime:     control.Duration(3*24*time.Hour + 4*time.Hour + 59*time.Minute),
		Phase:      control.PhaseRunning,
		Generation: 2,
		Workers:    3,
		Ready:      2,
		Mode:       control.ModeExec,
		Listeners: []control.Listener{
			{Name: "http", Address: "tcp://[::]:80"},
			{Name: "admin", Address: "unix:///run/app.sock"},
		},
		Cgroups: "off (demo.service does not delegate its cgroup to forkd (add Delegate=yes to the unit))",
		WorkerList: []control.Worker{
			{Index: 0, PID: 11, Generation: 2, State: control.WorkerReady, Uptime: control.Duration(time.Minute),
				StatusLine: "serving\x1b[2J", Requests: 9},
			{Index: 1, PID: 12, Generation: 1, State: control.WorkerStopping, Uptime: control.Duration(59 * time.Second),
				Restarts: 1, Requests: 18446744073709551615},
			{Index: 2, Generation: 2, State: control.WorkerBackoff, Restarts: 12,
				LastExit: "killed by SIGKILL (heartbeat timeout)", NextRestart: now.Add(-time.Second)},
		},
	}

	var out bytes.Buffer
	require.NoError(t, writeStatusTable(&out, st, now))
	require.Equal(t, `name:                  demo
version:               forkd 1.0.0
master pid:            10
uptime:                3d4h
phase:                 running (generation 2)
mode:                  exec
workers:               2/3 ready
listeners:             http tcp://[::]:80, admin unix:///run/app.sock (bound by forkd)
dropped notifications: 0
cgroups:               off (demo.service does not delegate its cgroup to forkd (add Delegate=yes to the unit))

INDEX  PID  GEN  ROLE  STATE     UPTIME  RESTARTS  REQUESTS              PSS  SHARED  PRIVATE  STATUS
0      11   2    exec  ready     1m      0         9                     -    -       -        serving?[2J
1      12   1    exec  stopping  59s     1         18446744073709551615  -    -       -        -
2      -    2    -     backoff   -       12        0                     -    -       -        restarting now; last exi…
`, out.String())
	requireFits(t, out.String())
}

// A refork in fork-worker mode: slot 1 has its current worker and its replacement, slot 2 a
// detached old worker beside its new one, slot 3 a worker exec'd because the template failed it.
func TestWriteStatusTableRollout(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	mem := func(rss, pss, shared float64) *control.Memory {
		// What is not shared was written: Private_Dirty, here.
		return &control.Memory{RSS: uint64(rss * (1 << 20)), PSS: uint64(pss * (1 << 20)), Shared: uint64(shared * (1 << 20)),
			PrivateDirty: uint64((rss - shared) * (1 << 20))}
	}
	st := control.Status{
		Name:       "shop",
		Version:    "forkd 1.1.0 (0123456789ab, go1.26.8)",
		MasterPID:  900,
		Uptime:     control.Duration(5 * time.Hour),
		Phase:      control.PhaseRolling,
		Rollout:    control.RolloutRefork,
		Generation: 5,
		Workers:    4,
		Ready:      4,
		Mode:       control.ModeFork,
		Listeners:  []control.Listener{{Name: "http", Address: "tcp://0.0.0.0:8080"}},
		StatusLine: "rolling (refork): 1/3 workers on generation 5, 4 ready",
		ReforkOnDecay: &control.DecayTrigger{Measured: true, Baseline: 40 << 20, Current: 100 << 20, Ratio: 2.5,
			Threshold: 232 << 20, Workers: 3, Fruitless: 1},
		WorkerList: []control.Worker{
			{Index: 0, PID: 901, Generation: 4, State: control.WorkerReady, Template: true,
				Uptime: control.Duration(5 * time.Hour), Requests: 120345, Memory: mem(512.3, 180, 400), StatusLine: "paused"},
			{Index: 1, PID: 910, Generation: 4, State: control.WorkerReady, Forked: true,
				Uptime: control.Duration(2 * time.Hour), Requests: 40000, Memory: mem(520, 64.56, 470.04)},
			{Index: 1, PID: 925, Generation: 5, State: control.WorkerBooting, Forked: true, Replacement: true,
				Uptime: control.Duration(3 * time.Second), Memory: mem(505, 40.1, 480)},
			{Index: 2, PID: 911, Generation: 4, State: control.WorkerStopping, Forked: true, Detached: true,
				Uptime: control.Duration(2 * time.Hour), Requests: 39000, StatusLine: "draining 3 requests"},
			{Index: 2, PID: 924, Generation: 5, State: control.WorkerReady, Forked: true,
				Uptime: control.Duration(20 * time.Second), Requests: 12, Memory: mem(0.04, 0, 0)},
			{Index: 3, PID: 930, Generation: 4, State: control.WorkerReady,
				Uptime: control.Duration(time.Hour), Requests: 7, Memory: mem(10240, 10240, 0),
				StatusLine: "exec'd instead of forked: the template did not answer within 10s, then served ever since"},
		},
	}

	var out bytes.Buffer
	require.NoError(t, writeStatusTable(&out, st, now))
	require.Equal(t, `name:                  shop
version:               forkd 1.1.0 (0123456789ab, go1.26.8)
master pid:            900
uptime:                5h
phase:                 rolling (generation 5)
rollout:               refork
mode:                  fork, template: worker 0 (pid 901)
workers:               4/4 ready
listeners:             http tcp://0.0.0.0:8080 (bound by forkd)
dropped notifications: 0
refork on decay:       2.50x: 100.0M private in 3 forked workers, baseline 40.0M, refork at 232.0M, 1 fruitless
status:                rolling (refork): 1/3 workers on generation 5, 4 ready

INDEX  PID  GEN  ROLE        STATE     UPTIME  RESTARTS  REQUESTS  PSS       SHARED  PRIVATE   STATUS
0      901  4    template    ready     5h      0         120345    180.0M    400.0M  112.3M    paused
1      910  4    forked      ready     2h      0         40000     64.6M     470.0M  50.0M     -
1      925  5    forked/new  booting   3s      0         0         40.1M     480.0M  25.0M     -
2      911  4    forked/old  stopping  2h      0         39000     -         -       -         draining 3 requests
2      924  5    forked      ready     20s     0         12        0.0M      0.0M    0.0M      -
3      930  4    exec        ready     1h      0         7         10240.0M  0.0M    10240.0M  exec'd instead of forked…
`, out.String())
	requireFits(t, out.String())
}

// requireFits checks that every line of a status table fits in 120 columns.
func requireFits(t *testing.T, table string) {
	t.Helper()
	for line := range strings.Lines(table) {
		require.LessOrEqual(t, utf8.RuneCountInString(strings.TrimSuffix(line, "\n")), 120, "%q", line)
	}
}

func TestTruncate(t *testing.T) {
	require.Equal(t, "short", truncate("short", 5))
	require.Equal(t, "shor…", truncate("shorter", 5))
	require.Equal(t, "héll…", truncate("héllo ✓", 5))
	require.Equal(t, "héllo ✓", truncate("héllo ✓", 7))
}

func TestMebibytes(t *testing.T) {
	require.Equal(t, "0.0M", mebibytes(0))
	require.Equal(t, "48.2M", mebibytes(48*(1<<20)+(1<<20)/5))
	require.Equal(t, "1.0M", mebibytes(1<<20))
	require.Equal(t, "1024.0M", mebibytes(1<<30))
}

func TestWorkerRole(t *testing.T) {
	tests := []struct {
		w    control.Worker
		want string
	}{
		{control.Worker{}, "-"},
		{control.Worker{PID: 1}, "exec"},
		{control.Worker{PID: 1, Template: true}, "template"},
		{control.Worker{PID: 1, Forked: true}, "forked"},
		{control.Worker{PID: 1, Forked: true, Replacement: true}, "forked/new"},
		{control.Worker{PID: 1, Replacement: true}, "exec/new"},
		{control.Worker{PID: 1, Detached: true}, "exec/old"},
		{control.Worker{PID: 1, Template: true, Detached: true}, "template/old"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, workerRole(tt.w), "%+v", tt.w)
	}
}

// A command that waits is bounded only by an explicit --timeout.
func TestContextTimeout(t *testing.T) {
	c := &cli{timeout: defaultTimeout}
	ctx, cancel := c.context(context.Background(), true)
	_, bounded := ctx.Deadline()
	cancel()
	require.False(t, bounded, "--wait without --timeout waits without limit")

	ctx, cancel = c.context(context.Background(), false)
	_, bounded = ctx.Deadline()
	cancel()
	require.True(t, bounded)

	c.timeoutSet = true
	ctx, cancel = c.context(context.Background(), true)
	_, bounded = ctx.Deadline()
	cancel()
	require.True(t, bounded, "an explicit --timeout bounds --wait too")

	c.timeout = 0
	ctx, cancel = c.context(context.Background(), false)
	_, bounded = ctx.Deadline()
	cancel()
	require.False(t, bounded, "--timeout 0 means no limit")
}

func TestHumanDuration(t *testing.T) {
	tests := map[time.Duration]string{
		-time.Second:                          "0s",
		0:                                     "0s",
		999 * time.Millisecond:                "0s",
		time.Second:                           "1s",
		59*time.Second + 999*time.Millisecond: "59s",
		time.Minute:                           "1m",
		12*time.Minute + 3*time.Second:        "12m3s",
		time.Hour + 30*time.Second:            "1h",
		2*time.Hour + 5*time.Minute:           "2h5m",
		24 * time.Hour:                        "1d",
		400*24*time.Hour + 23*time.Hour:       "400d23h",
	}
	for d, want := range tests {
		require.Equal(t, want, humanDuration(d), "humanDuration(%s)", d)
	}
}

func TestParseScale(t *testing.T) {
	valid := map[string]control.ScaleRequest{
		"1":   {Workers: 1},
		"16":  {Workers: 16},
		"+1":  {Delta: 1},
		"-4":  {Delta: -4},
		"010": {Workers: 10},
	}
	for arg, want := range valid {
		got, err := parseScale(arg)
		require.NoError(t, err, arg)
		require.Equal(t, want, got, arg)
	}
	for _, arg := range []string{"", "0", "+0", "-0", "x", "1x", "1.0", "++1", " 2", "99999999999999999999"} {
		_, err := parseScale(arg)
		var usage *usageError
		require.ErrorAs(t, err, &usage, "parseScale(%q)", arg)
	}
}

func TestNegativeNumbersAsArgs(t *testing.T) {
	tests := []struct{ in, want []string }{
		{[]string{"scale", "8"}, []string{"scale", "8"}},
		{[]string{"scale", "-2"}, []string{"scale", "--", "-2"}},
		{[]string{"scale", "-2", "--socket", "/s"}, []string{"scale", "--socket", "/s", "--", "-2"}},
		{[]string{"--timeout", "5s", "scale", "-10"}, []string{"--timeout", "5s", "scale", "--", "-10"}},
		{[]string{"scale", "--", "-2"}, []string{"scale", "--", "-2"}},
		{[]string{"scale", "-2", "--", "x"}, []string{"scale", "--", "-2", "x"}},
		{[]string{"status", "-o", "json"}, []string{"status", "-o", "json"}},
		{[]string{"scale", "-x2"}, []string{"scale", "-x2"}},
		{[]string{"top", "-n", "-1"}, []string{"top", "-n", "-1"}},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, negativeNumbersAsArgs(tt.in), "%q", tt.in)
	}
}

func TestPrintable(t *testing.T) {
	require.Equal(t, "a b c ?[31mred", printable("a\tb\nc \x1b[31mred"))
	require.Equal(t, "héllo ✓", printable("héllo ✓"))
}

// With cgroups, a CGROUP column: each worker's memory.current; "-" for one without a cgroup.
func TestWriteStatusTableCgroups(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	st := control.Status{
		Name: "api", Version: "forkd 1.2.0", MasterPID: 50, Phase: control.PhaseRunning, Generation: 1,
		Workers: 2, Ready: 2, Mode: control.ModeExec,
		Cgroups: "on: /sys/fs/cgroup/system.slice/forkd.service (memory, pids)",
		WorkerList: []control.Worker{
			{Index: 0, PID: 51, Generation: 1, State: control.WorkerReady, Uptime: control.Duration(time.Minute),
				Cgroup: &control.CgroupMemory{Current: 300 << 20, Anon: 200 << 20}},
			{Index: 1, PID: 52, Generation: 1, State: control.WorkerReady, Uptime: control.Duration(time.Minute),
				LastExit: "killed by SIGKILL (out of memory: the worker's cgroup reached memory.max, 256M)"},
		},
	}
	var out bytes.Buffer
	require.NoError(t, writeStatusTable(&out, st, now))
	assert.Contains(t, out.String(), "cgroups:               on: /sys/fs/cgroup/system.slice/forkd.service (memory, pids)\n")
	assert.Contains(t, out.String(), `
INDEX  PID  GEN  ROLE  STATE  UPTIME  RESTARTS  REQUESTS  PSS  SHARED  PRIVATE  CGROUP  STATUS
0      51   1    exec  ready  1m      0         0         -    -       -        300.0M  -
1      52   1    exec  ready  1m      0         0         -    -       -        -       -
`)
	requireFits(t, out.String())
}

// TestRolloutSummary: a failed rollout says which generation failed, why, and which one serves
// now; one refused before it began says that nothing was rolled out.
func TestRolloutSummary(t *testing.T) {
	for _, tc := range []struct {
		l    control.RolloutResult
		want string
	}{
		{control.RolloutResult{Kind: control.RolloutRefork, Generation: 3, Target: 3},
			"refork (generation 3): done"},
		{control.RolloutResult{Kind: control.RolloutReload, Generation: 1, Target: 2,
			Error: "rollout failed: worker 1 of generation 2 did not become ready: exit status 1"},
			"reload of generation 2 failed: worker 1 of generation 2 did not become ready: exit status 1; rolled back to generation 1"},
		{control.RolloutResult{Kind: control.RolloutRefork, Generation: 4, Target: 5,
			Error: "rollout failed: worker 0, the template, went away"},
			"refork of generation 5 failed: worker 0, the template, went away; rolled back to generation 4"},
		{control.RolloutResult{Kind: control.RolloutReload, Generation: 2,
			Error: "before_reload hook failed: exit status 1"},
			"reload did not begin: before_reload hook failed: exit status 1; generation 2 serves as before"},
	} {
		assert.Equal(t, tc.want, rolloutSummary(tc.l))
	}
}

func TestModeSummarySaysWhereTheTemplateCameFrom(t *testing.T) {
	st := control.Status{Mode: control.ModeFork, WorkerList: []control.Worker{
		{Index: 0, PID: 901, Template: true, Forked: true, NonServing: true, MoldOf: &control.MoldSource{Index: 2, PID: 912, Requests: 5400}},
		{Index: 1, PID: 910, Forked: true},
	}}
	assert.Equal(t, "fork, template: worker 0 (pid 901, serves nothing; forked from worker 2, pid 912, after 5400 requests)", modeSummary(st))
	st.WorkerList[0].MoldOf, st.WorkerList[0].NonServing = nil, false
	assert.Equal(t, "fork, template: worker 0 (pid 901)", modeSummary(st))
}

// A reload's warm-up: what the new template served of what the warm-up waits for, and when the
// others fork from it: at max_wait, or earlier by the idle rule.
func TestWriteStatusTableWarmUp(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	st := control.Status{
		Name: "shop", Version: "forkd 1.1.0", MasterPID: 900, Phase: control.PhaseRolling, Rollout: control.RolloutReload,
		Generation: 6, Workers: 2, Ready: 2, Mode: control.ModeFork,
		StatusLine: "rolling (reload): 1/2 workers on generation 6, 2 ready; warming up: 340/1000 requests",
		WarmUp: &control.WarmUp{Index: 0, PID: 950, Served: 340, Requests: 1000, Until: now.Add(4210 * time.Millisecond),
			IdleUntil: now.Add(2100 * time.Millisecond)},
		WorkerList: []control.Worker{
			{Index: 0, PID: 950, Generation: 6, State: control.WorkerReady, Template: true, Requests: 340},
			{Index: 1, PID: 910, Generation: 5, State: control.WorkerReady, Forked: true, Requests: 40000},
		},
	}
	var out bytes.Buffer
	require.NoError(t, writeStatusTable(&out, st, now))
	assert.Contains(t, out.String(), "\nwarm-up:               worker 0 (pid 950) served 340/1000 requests; forks in 4.2s at most (max_wait), 2.1s if idle\n")
	requireFits(t, out.String())

	// Without a count to reach, and with max_wait nearer than the idle rule's end.
	st.WarmUp = &control.WarmUp{Index: 0, PID: 950, Served: 12, Until: now.Add(time.Second), IdleUntil: now.Add(3 * time.Second)}
	out.Reset()
	require.NoError(t, writeStatusTable(&out, st, now))
	assert.Contains(t, out.String(), "\nwarm-up:               worker 0 (pid 950) served 12 requests; forks in 1s at most (max_wait)\n")

	// In mold mode, the worker warming up forks the mold the others are forked from.
	st.WarmUp = &control.WarmUp{Index: 2, PID: 952, Served: 12, Requests: 1000, Until: now.Add(time.Second), IdleUntil: now.Add(3 * time.Second), Mold: true}
	out.Reset()
	require.NoError(t, writeStatusTable(&out, st, now))
	assert.Contains(t, out.String(), "\nwarm-up:               worker 2 (pid 952) served 12/1000 requests; forks the mold in 1s at most (max_wait)\n")

	st.WarmUp = nil
	out.Reset()
	require.NoError(t, writeStatusTable(&out, st, now))
	assert.NotContains(t, out.String(), "warm-up:")
	assert.NotContains(t, out.String(), "heap size:")
}

// The heap size the last template reported (fork_worker.carry_heap_size), and whether the next
// worker 0 boots with it.
func TestWriteStatusTableHeapSize(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	st := control.Status{
		Name: "shop", Version: "forkd 1.1.0", MasterPID: 900, Phase: control.PhaseRunning, Generation: 6, Workers: 1, Ready: 1,
		Mode:       control.ModeFork,
		HeapSize:   &control.HeapSize{Variable: "RUBY_GC_HEAP_INIT_SLOTS", Value: 1300000, Generation: 6, Carried: true},
		WorkerList: []control.Worker{{Index: 0, PID: 950, Generation: 6, State: control.WorkerReady, Template: true}},
	}
	var out bytes.Buffer
	require.NoError(t, writeStatusTable(&out, st, now))
	assert.Contains(t, out.String(), "\nheap size:             RUBY_GC_HEAP_INIT_SLOTS=1300000 from generation 6, for the next worker 0\n")
	requireFits(t, out.String())

	st.HeapSize.Carried = false
	out.Reset()
	require.NoError(t, writeStatusTable(&out, st, now))
	assert.Contains(t, out.String(), "\nheap size:             RUBY_GC_HEAP_INIT_SLOTS=1300000 from generation 6, not carried (fork_worker.carry_heap_size)\n")
	requireFits(t, out.String())
}
