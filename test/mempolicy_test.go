package test

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// forkedPrivate sums the Private_Dirty of the forked workers in st.
func forkedPrivate(st control.Status) uint64 {
	var sum uint64
	for _, w := range st.WorkerList {
		if w.Forked && w.Memory != nil && !w.Detached && !w.Replacement {
			sum += w.Memory.PrivateDirty
		}
	}
	return sum
}

// TestReforkOnDecayFiresOnceOnDirtiedMemory: the app's workers write their copy-on-write ballast on
// request (GET /dirty), so their private memory grows; refork_on_decay reforks once it has grown
// by private_growth, which wins the memory back, and then not again while the workers only serve
// requests that write nothing lasting.
func TestReforkOnDecayFiresOnceOnDirtiedMemory(t *testing.T) {
	t.Parallel()
	const minInterval = 4 * time.Second
	f := startPython(t, options{config: pythonApp(t, 3, map[string]string{"TESTAPP_ALLOC_MB": "64"}, `
memory {
  sample_interval = "1s"
}
fork_worker {
  refork_after = []
  refork_on_decay {
    private_growth = "24M"
    min_interval   = "4s"
  }
}
`)})
	f.waitReady(3)
	st := f.waitFor("the trigger's baseline", func(st control.Status) bool {
		return st.ReforkOnDecay != nil && st.ReforkOnDecay.Measured
	})
	require.Equal(t, 2, st.ReforkOnDecay.Workers, "the forked workers are watched, not the template")
	baseline := st.ReforkOnDecay.Baseline

	url := "http://" + f.addr()
	client := &http.Client{Timeout: 10 * time.Second}
	end := time.Now().Add(deadline)
	var dirtied control.Status
	for st = f.status(); st.Generation == 1; st = f.status() {
		require.True(t, time.Now().Before(end), "no refork; trigger %+v", st.ReforkOnDecay)
		dirtied = st
		resp, err := client.Get(url + "/dirty?mb=4")
		require.NoError(t, err)
		resp.Body.Close()
	}
	require.Greater(t, forkedPrivate(dirtied), baseline+16<<20, "the workers' private memory had grown before the refork")
	// The status can show generation 2 before the master's log line has been copied out of its pipe.
	waitOutput(t, f, "(refork_on_decay, threshold")
	waitOutput(t, f, "automatic refork to generation 2")

	after := f.waitFor("the baseline after the refork", func(st control.Status) bool {
		return st.Generation == 2 && st.Rollout == "" && st.ReforkOnDecay.Measured
	})
	assert.Less(t, after.ReforkOnDecay.Baseline, forkedPrivate(dirtied)-12<<20, "the refork won the private memory back")
	assert.Zero(t, after.ReforkOnDecay.Fruitless)
	t.Logf("forked workers' Private_Dirty: baseline %d MiB, %d MiB before the refork, %d MiB after it (threshold then %d MiB)",
		baseline>>20, forkedPrivate(dirtied)>>20, after.ReforkOnDecay.Baseline>>20, after.ReforkOnDecay.Threshold>>20)

	// Requests that write nothing lasting, for several min_intervals: no second refork.
	for quiet := time.Now().Add(3 * minInterval); time.Now().Before(quiet); {
		get(t, url)
		time.Sleep(20 * time.Millisecond)
	}
	st = f.status()
	assert.Equal(t, 2, st.Generation, "no refork without new decay; trigger %+v", st.ReforkOnDecay)
	assert.Equal(t, 1, strings.Count(f.output.String(), "(refork_on_decay, threshold"), "one refork_on_decay refork")

	out, code := f.forkctl("status")
	require.Equal(t, 0, code, out)
	assert.Regexp(t, `refork on decay: +\d+\.\d\dx: .* private in 2 forked workers, baseline .*, refork at `, out)
	assert.Contains(t, out, "PRIVATE")
}

// waitRecycled sends GETs of path until a worker of f other than the template has been replaced
// by a forked one for reason (in the log), and returns the status then. No request fails
// meanwhile: the replacement is ready before the old worker drains.
func waitRecycled(t *testing.T, f *forkd, path, reason string) control.Status {
	t.Helper()
	url := "http://" + f.addr()
	client := &http.Client{Timeout: 10 * time.Second}
	before := f.status()
	end := time.Now().Add(deadline)
	for !strings.Contains(f.output.String(), reason) {
		require.True(t, time.Now().Before(end), "no worker recycled for %q; status %+v", reason, f.status().WorkerList)
		resp, err := client.Get(url + path)
		require.NoError(t, err, "a request failed while forkd recycles workers")
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	return f.waitFor("the recycled worker's replacement serving", func(st control.Status) bool {
		if st.Ready != len(before.WorkerList) || len(st.WorkerList) != len(before.WorkerList) {
			return false
		}
		for i, w := range st.WorkerList[1:] {
			if w.PID != before.WorkerList[i+1].PID && w.Forked {
				return true
			}
		}
		return false
	})
}

// TestRecycleByRequestsAndByPrivateMemory: a worker is recycled after max_requests, and after its
// private memory passes max_private (the app writes its copy-on-write ballast on GET /dirty), each
// replaced by a worker forked from the template (the template itself, which serves too, by an
// exec'd worker 0 that becomes the template), without a failed request.
func TestRecycleByRequestsAndByPrivateMemory(t *testing.T) {
	t.Parallel()
	f := startPython(t, options{config: pythonApp(t, 2, nil, `
fork_worker {
  refork_after = []
}
recycle {
  max_requests = 40
  min_lifetime = "1s"
}
`)})
	f.waitReady(2)
	after := waitRecycled(t, f, "/", "recycling worker 1: it served")
	assertForkTree(t, f, after)
	assert.Equal(t, 1, after.Generation, "recycling is not a rollout")
	assert.Regexp(t, `recycling worker 1: it served \d+ requests \(max_requests 40 with its jitter\); its replacement starts first`, f.output.String())

	g := startPython(t, options{config: pythonApp(t, 2, map[string]string{"TESTAPP_ALLOC_MB": "64"}, `
memory {
  sample_interval = "1s"
}
fork_worker {
  refork_after = []
}
recycle {
  max_private = "32M"
}
`)})
	g.waitReady(2)
	st := waitRecycled(t, g, "/dirty?mb=4", "recycling worker 1: its private memory is")
	for _, w := range st.WorkerList {
		if w.Index == 1 && w.Memory != nil {
			assert.Less(t, w.Memory.PrivateDirty, uint64(32<<20), "the new worker 1 shares the template's memory again")
		}
	}
}

// TestReloadWarmsTheNewTemplateUp: with fork_worker.warm_up, a reload's new worker 0 serves alone
// (beside the old worker 1) until it has served its requests; only then is worker 1 forked from
// it. A trickle of traffic runs throughout, so that the cluster does not count as idle.
func TestReloadWarmsTheNewTemplateUp(t *testing.T) {
	t.Parallel()
	f := startPython(t, options{config: pythonApp(t, 2, nil, `
fork_worker {
  refork_after = []
  warm_up {
    requests = 20
    max_wait = "120s"
  }
}
`)})
	before := f.waitReady(2)
	url := "http://" + f.addr()
	stop := trickle(t, url, 500*time.Millisecond)
	defer stop()
	f.waitFor("a request count reported", func(st control.Status) bool { return st.WorkerList[0].Requests+st.WorkerList[1].Requests > 0 })
	out, code := f.forkctl("reload")
	require.Equal(t, 0, code, out)
	warming := f.waitFor("the new template warming up", func(st control.Status) bool {
		return len(st.WorkerList) == 2 && st.WorkerList[0].Generation == 2 && st.WorkerList[0].Template
	})
	require.Equal(t, before.WorkerList[1].PID, warming.WorkerList[1].PID, "worker 1 is not forked before the warm-up")
	assert.Contains(t, f.output.String(), "the new template warms up before the others are forked from it (20 requests, or 2m0s at most)")

	end := time.Now().Add(deadline)
	for st := f.status(); st.Generation != 2 || st.Rollout != "" || st.WorkerList[1].Generation != 2; st = f.status() {
		require.True(t, time.Now().Before(end), "worker 1 never forked from the warmed-up template; %+v", st.WorkerList)
		get(t, url)
	}
	assert.Regexp(t, `the new template served (2\d|[3-9]\d|\d{3,}) requests while it warmed up: forking the others from it`, f.output.String())
}

// TestReloadWarmUpByDefault: without a warm_up block, a reload in fork-worker mode warms its new
// template up (1000 requests, or 5 s at most), unless no traffic comes: an idle cluster forks at
// once. A warm-up that served refork_after's first count stands for that refork: with
// refork_after = [40, false], no automatic refork follows the reload, however much the workers
// serve (before, one did, within a second of the reload's end; after the idle reload, whose
// warm-up served nothing, one still does once traffic comes).
func TestReloadWarmUpByDefault(t *testing.T) {
	t.Parallel()
	f := startPython(t, options{config: pythonApp(t, 2, nil, `
fork_worker {
  refork_after = [40, false]
}
`)})
	f.waitReady(2)
	out, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	assert.Contains(t, f.output.String(), "reload: no worker reported a request for 3s, so nothing warms the new template up: forking the others from it",
		"an idle cluster does not wait for a warm-up")

	url := "http://" + f.addr()
	stop := trickle(t, url, 0)
	defer stop()
	f.waitFor("a request count reported", func(st control.Status) bool { return st.WorkerList[0].Requests+st.WorkerList[1].Requests > 0 })
	out, code = f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	log := f.output.String()
	assert.Contains(t, log, "reload: the new template warms up before the others are forked from it (1000 requests, or 5s at most)")
	served := regexp.MustCompile(`reload: the new template served (\d+) requests while it warmed up`).FindStringSubmatch(log)
	require.NotNil(t, served, "the warm-up ended with requests served")
	n, err := strconv.Atoi(served[1])
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, 40, "the warm-up served refork_after's first count")
	reloaded := f.status()
	f.waitFor("the workers serving more than refork_after's count since the reload", func(st control.Status) bool {
		for _, w := range st.WorkerList {
			for _, r := range reloaded.WorkerList {
				if w.PID == r.PID && w.Requests >= r.Requests+200 {
					return true
				}
			}
		}
		return false
	})
	time.Sleep(2 * time.Second) // a refork it would start comes with the next count: at most a second later
	assert.NotContains(t, f.output.String()[len(log):], "automatic refork", "the warm-up was the list's refork")
	assert.Equal(t, reloaded.Generation, f.status().Generation, "no refork since the reload")
}

// trickle sends GET requests to url on new connections, every pause, until the returned func
// is called; a failed request fails the test.
func trickle(t *testing.T, url string, pause time.Duration) func() {
	t.Helper()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			select {
			case <-done:
				return
			case <-time.After(pause):
			}
			resp, err := httpClient.Get(url)
			if err != nil {
				t.Errorf("GET %s: %v", url, err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("GET %s: %s", url, resp.Status)
				return
			}
		}
	}()
	return func() { close(done); <-stopped }
}
