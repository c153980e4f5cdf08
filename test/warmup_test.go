package test

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"slices"
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

// TestReloadWarmUpShowsInStatus: a reload under traffic (a curl loop, a new connection per
// request, so that the new template gets its share) warms its new template up; meanwhile
// `forkctl status` has a warm-up line and its JSON a warm_up whose served count grows, until the
// others are forked from the template and the reload finishes, when both are gone. Without them,
// a reload under traffic looks stuck for as long as its warm-up takes.
func TestReloadWarmUpShowsInStatus(t *testing.T) {
	t.Parallel()
	requireTool(t, exec.Command("curl", "--version"), "curl")
	const need = 60
	f := startPython(t, options{config: pythonApp(t, 2, nil, `
fork_worker {
  refork_after = []
  warm_up {
    requests = `+strconv.Itoa(need)+`
    max_wait = "120s"
  }
}
`)})
	f.waitReady(2)
	url := "http://" + f.addr() + "/"
	// The loop ends, saying so, at curl's first failed request; its own process group, so that
	// the test stops it and its curl, and nothing else.
	loop := exec.Command("sh", "-c", `while curl -sSf -o /dev/null --max-time 10 "$1"; do sleep 0.1; done; echo "curl failed" >&2`, "sh", url)
	loopOut := &proctest.Output{}
	loop.Stdout, loop.Stderr = loopOut, loopOut
	loop.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	require.NoError(t, loop.Start())
	loopDone := make(chan struct{})
	go func() { loop.Wait(); close(loopDone) }()
	t.Cleanup(func() { syscall.Kill(-loop.Process.Pid, syscall.SIGKILL); <-loopDone })
	f.waitFor("a request count reported", func(st control.Status) bool { return st.WorkerList[0].Requests+st.WorkerList[1].Requests > 0 })

	out, code := f.forkctl("reload")
	require.Equal(t, 0, code, out)
	var served []uint64 // each status JSON's warm_up.served, in order
	var tableLines []string
	lineRE := regexp.MustCompile(`(?m)^warm-up: +worker 0 \(pid (\d+)\) served (\d+)/` + strconv.Itoa(need) +
		` requests; forks in [0-9.ms]+ at most \(max_wait\), [0-9.ms]+ if idle$`)
	end := time.Now().Add(deadline)
	var st control.Status
	for {
		require.True(t, time.Now().Before(end), "the reload never finished; last status %+v", st)
		select {
		case <-loopDone:
			t.Fatalf("the curl loop stopped: %s", loopOut.String())
		default:
		}
		out, code := f.forkctl("status", "-o", "json")
		require.Equal(t, 0, code, out)
		st = control.Status{}
		require.NoError(t, json.Unmarshal([]byte(out), &st), out)
		if w := st.WarmUp; w != nil {
			require.Equal(t, uint64(need), w.Requests, out)
			tmpl := slices.IndexFunc(st.WorkerList, func(wk control.Worker) bool { return wk.Template })
			require.GreaterOrEqual(t, tmpl, 0, out)
			require.Equal(t, st.WorkerList[tmpl].PID, w.PID, "the warm-up counts the template's requests: %s", out)
			require.Equal(t, 2, st.WorkerList[tmpl].Generation, "the new template warms up: %s", out)
			// Traffic comes, so the idle rule's end (3 s after the last report) is the nearer one.
			require.True(t, !w.IdleUntil.IsZero() && w.IdleUntil.Before(w.Until), out)
			assert.Contains(t, st.StatusLine, "; warming up: ", "systemd's STATUS= says so too")
			served = append(served, w.Served)
			table, code := f.forkctl("status")
			require.Equal(t, 0, code, table)
			if m := lineRE.FindStringSubmatch(table); m != nil {
				assert.Equal(t, strconv.Itoa(w.PID), m[1], table)
				tableLines = append(tableLines, m[0])
			} else if strings.Contains(table, "warm-up:") {
				t.Fatalf("forkctl status's warm-up line is not as documented:\n%s", table)
			}
		}
		if st.Generation == 2 && st.Rollout == "" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	require.NotEmpty(t, served, "no status showed the warm-up")
	require.True(t, slices.IsSorted(served), "the served count only grows: %v", served)
	require.Greater(t, served[len(served)-1], served[0], "the served count grows while the warm-up runs: %v", served)
	require.NotEmpty(t, tableLines, "forkctl status never showed a warm-up line")
	t.Logf("served while warming up, as the status showed it: %v; e.g. %q", slices.Compact(served), tableLines[len(tableLines)-1])
	assert.Regexp(t, `the new template served (\d+) requests while it warmed up: forking the others from it`, f.output.String())

	// Finished: every worker is of the new generation, and the status shows no warm-up.
	for _, w := range st.WorkerList {
		assert.Equal(t, 2, w.Generation, "%+v", st.WorkerList)
	}
	assert.Nil(t, st.WarmUp)
	assert.NotContains(t, st.StatusLine, "warming up")
	table, code := f.forkctl("status")
	require.Equal(t, 0, code, table)
	assert.NotContains(t, table, "warm-up:")
}
