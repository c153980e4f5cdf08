package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

const forkWorkerBlock = `
fork_worker {
  refork_after = []
  timeout      = "10s"
}
`

func assertForkTree(t *testing.T, f *forkd, st control.Status) {
	t.Helper()
	require.Equal(t, control.ModeFork, st.Mode, "fork-worker mode")
	for _, w := range st.WorkerList {
		assert.Equal(t, f.cmd.Process.Pid, parentOf(t, w.PID), "worker %d is the master's child", w.Index)
		if w.Index == 0 {
			assert.True(t, w.Template, "worker 0 is the template")
			assert.False(t, w.Forked)
		} else {
			assert.True(t, w.Forked, "worker %d was forked from the template", w.Index)
		}
	}
}

func TestForkWorkerProcessTree(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 4, nil, forkWorkerBlock)})
	st := f.waitMemory(4)
	assertForkTree(t, f, st)
	assert.Equal(t, "4/4 workers ready, generation 1", st.StatusLine)

	// Forked workers share worker 0's memory: the token made when worker 0 imported the app.
	url := "http://" + f.addr()
	tokens, workers := map[string]bool{}, map[string]bool{}
	for i := 0; i < 200 && len(workers) < 3; i++ {
		fields := strings.Fields(get(t, url))
		workers[fields[0]] = true
		tokens[fields[3]] = true
	}
	assert.Len(t, tokens, 1, "every worker answers with the template's token: %v, from %v", tokens, workers)
	for _, w := range st.WorkerList[1:] {
		require.NotNil(t, w.Memory)
		assert.Greater(t, w.Memory.Shared, w.Memory.RSS/2, "worker %d shares most of its memory", w.Index)
	}
}

func TestReforkBySignalCLIAndRequestCount(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 3, nil, forkWorkerBlock)})
	before := f.waitReady(3)

	f.signal(syscall.SIGURG)
	after := f.waitFor("generation 2", func(st control.Status) bool {
		return st.Generation == 2 && st.Phase == control.PhaseRunning && len(st.WorkerList) == 3 && st.Ready == 3
	})
	assertReforked(t, before, after, 2)
	assertForkTree(t, f, after)

	out, code := f.forkctl("refork", "--wait")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "generation 3")
	third := f.waitFor("generation 3 settled", func(st control.Status) bool {
		return st.Generation == 3 && len(st.WorkerList) == 3 && st.Ready == 3
	})
	assertReforked(t, after, third, 3)

	// Automatic: after 20 requests served by worker 0. Requests land on any worker, so keep
	// sending until worker 0 has served its quota and reported it.
	g := startForkd(t, options{config: pythonApp(t, 2, nil, `
fork_worker {
  refork_after = [20]
}
`)})
	g.waitReady(2)
	requestUntilAutomaticRefork(t, g)
}

// requestUntilAutomaticRefork sends requests until f's worker 0 has served refork_after's first
// count and reported it (requests land on any worker), and checks that forkd says why it reforked.
func requestUntilAutomaticRefork(t *testing.T, f *forkd) {
	t.Helper()
	url := "http://" + f.addr()
	end := time.Now().Add(deadline)
	for {
		st := f.status()
		if st.Generation >= 2 {
			break
		}
		require.True(t, time.Now().Before(end), "no automatic refork; worker 0 served %d", st.WorkerList[0].Requests)
		for range 10 {
			get(t, url)
		}
	}
	assert.Contains(t, f.output.String(), "automatic refork to generation 2")
}

// assertReforked checks a refork: worker 0 kept, every other worker replaced and of the new
// generation.
func assertReforked(t *testing.T, before, after control.Status, generation int) {
	t.Helper()
	require.Len(t, after.WorkerList, len(before.WorkerList))
	assert.Equal(t, before.WorkerList[0].PID, after.WorkerList[0].PID, "the template survives a refork")
	for i, w := range after.WorkerList[1:] {
		assert.NotEqual(t, before.WorkerList[i+1].PID, w.PID, "worker %d was re-forked", w.Index)
		assert.Equal(t, generation, w.Generation)
		assert.True(t, w.Forked)
	}
}

func TestTemplateKilledBeforeDuringAndAfterRefork(t *testing.T) {
	t.Parallel()
	// Each fork takes a second in the template's before-fork hook, so a refork of three workers
	// lasts long enough to kill worker 0 in its middle.
	f := startForkd(t, options{config: pythonApp(t, 4, map[string]string{"TESTAPP_HANG_FORK": "1"}, forkWorkerBlock)})
	st := f.waitReady(4)
	healed := func(old int) control.Status {
		t.Helper()
		return f.waitFor("a new template", func(st control.Status) bool {
			w0 := st.WorkerList[0]
			return w0.PID != old && w0.Template && st.Ready == 4 && len(st.WorkerList) == 4 && st.Phase == control.PhaseRunning
		})
	}

	// Before: the template dies at steady state.
	require.NoError(t, syscall.Kill(st.WorkerList[0].PID, syscall.SIGKILL))
	st = healed(st.WorkerList[0].PID)

	// During: the refork fails with the reason, and the cluster heals.
	result := make(chan string, 1)
	go func() {
		out, _ := f.forkctl("refork", "--wait")
		result <- out
	}()
	f.waitFor("the refork", func(st control.Status) bool { return st.Rollout == control.RolloutRefork })
	require.NoError(t, syscall.Kill(st.WorkerList[0].PID, syscall.SIGKILL))
	assert.Contains(t, <-result, "worker 0, the template, went away")
	st = healed(st.WorkerList[0].PID)

	// After: a refork completes, then the template dies.
	out, code := f.forkctl("refork", "--wait")
	require.Equal(t, 0, code, out)
	st = f.waitFor("the refork's old workers gone", func(st control.Status) bool { return len(st.WorkerList) == 4 })
	require.NoError(t, syscall.Kill(st.WorkerList[0].PID, syscall.SIGKILL))
	st = healed(st.WorkerList[0].PID)
	for _, w := range st.WorkerList {
		assert.Equal(t, "ready", w.State, "no slot stuck")
	}
}

func TestForkThatHangsFallsBackToExec(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 2, map[string]string{"TESTAPP_HANG_FORK": "3"}, `
fork_worker {
  refork_after = []
  timeout      = "1s"
}
`)})
	st := f.waitReady(2)
	assert.False(t, st.WorkerList[1].Forked, "worker 1 was exec'd after its fork timed out")
	assert.Contains(t, f.output.String(), "worker 0 did not fork it within 1s; starting it with exec instead")
	// The fork the template finished late was killed: only the two workers remain.
	f.waitFor("the late fork gone", func(control.Status) bool {
		_, live := childrenOf(t, f.cmd.Process.Pid)
		return live == 2
	})
}

func TestKilledForkedWorkerIsReforkedUnderLoad(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 3, nil, forkWorkerBlock)})
	st := f.waitReady(3)
	l := startLoad(t, "http://"+f.addr(), 2, 1)
	victim := st.WorkerList[2].PID
	require.NoError(t, syscall.Kill(victim, syscall.SIGKILL))
	st = f.waitFor("worker 2 re-forked", func(st control.Status) bool {
		return st.WorkerList[2].PID != victim && st.Ready == 3
	})
	ok, failed := l.stop()
	assert.True(t, st.WorkerList[2].Forked, "re-forked from the template, not exec'd")
	t.Logf("requests during the kill: %d ok, %d failed (in flight on the killed worker)", ok, failed)
}

func TestNoFailedRequestsDuringTenReforks(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 4, nil, forkWorkerBlock)})
	f.waitReady(4)
	l := startLoad(t, "http://"+f.addr(), 4, 2)
	for i := range 10 {
		out, code := f.forkctl("refork", "--wait")
		require.Equal(t, 0, code, "refork %d: %s", i+1, out)
	}
	st := f.waitFor("every old worker gone", func(st control.Status) bool { return len(st.WorkerList) == 4 })
	ok, failed := l.stop()
	assert.Equal(t, 11, st.Generation)
	assert.Zero(t, failed, "failed requests during 10 reforks (%d ok): %v", ok, l.errs())
	assert.Greater(t, ok, int64(100), "the load generator ran")
	t.Logf("10 reforks: %d requests, %d failed", ok, failed)
}

func TestForkWorkerSharesMemory(t *testing.T) {
	t.Parallel()
	total := func(extra string) uint64 {
		return totalPSSThenStop(t, startForkd(t, options{config: pythonApp(t, 4, map[string]string{"TESTAPP_ALLOC_MB": "100"}, extra)}), 4)
	}
	exec, fork := total(""), total(forkWorkerBlock)
	t.Logf("total PSS of 4 workers with 100 MiB each: exec %d MiB, fork %d MiB", exec>>20, fork>>20)
	assert.Less(t, fork, exec/2, "fork-worker mode uses under half the memory of exec mode")
}

// totalPSSThenStop waits for n workers ready and sampled, sums their PSS as forkd reports it,
// and stops forkd.
func totalPSSThenStop(t *testing.T, f *forkd, n int) uint64 {
	t.Helper()
	st := f.waitMemory(n)
	var pss uint64
	for _, w := range st.WorkerList {
		require.NotNil(t, w.Memory)
		pss += w.Memory.PSS
	}
	f.signal(syscall.SIGTERM)
	assert.Equal(t, 0, f.waitExit())
	return pss
}

func TestForkWorkerWithoutSDKRunsInExecMode(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n" + forkWorkerBlock})
	st := f.waitReady(2)
	assert.Equal(t, control.ModeExec, st.Mode)
	assert.Contains(t, f.output.String(), "running in exec mode: worker 0 cannot be the template")
	out, code := f.forkctl("refork")
	assert.Equal(t, 1, code, out)
	assert.Contains(t, out, "exec mode")
}

// load is a bounded load generator against one URL: keep-alive clients and clients that open a
// new connection per request, counting what succeeds and what fails.
type load struct {
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	ok, fails atomic.Int64
	mu        sync.Mutex
	errors    []string
}

// startLoad sends requests that take 5 ms to serve.
func startLoad(t *testing.T, url string, keepAlive, fresh int) *load {
	return startLoadOf(t, url, 5, keepAlive, fresh)
}

// startLoadOf sends requests that take serveMS to serve (the test apps' /slow?ms=).
func startLoadOf(t *testing.T, url string, serveMS, keepAlive, fresh int) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	run := func(c *http.Client) {
		defer l.wg.Done()
		for ctx.Err() == nil {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/slow?ms=%d", url, serveMS), nil)
			resp, err := c.Do(req)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %s", resp.Status)
				}
			}
			switch {
			case err == nil:
				l.ok.Add(1)
			case ctx.Err() != nil && errors.Is(err, context.Canceled):
				// stopped mid-request by the test, not a failure
			default:
				l.fails.Add(1)
				l.mu.Lock()
				if len(l.errors) < 5 {
					l.errors = append(l.errors, err.Error())
				}
				l.mu.Unlock()
			}
		}
	}
	for range keepAlive {
		l.wg.Add(1)
		go run(&http.Client{Timeout: 30 * time.Second})
	}
	for range fresh {
		l.wg.Add(1)
		go run(&http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}})
	}
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *load) stop() (ok, failed int64) {
	l.cancel()
	l.wg.Wait()
	return l.ok.Load(), l.fails.Load()
}

func (l *load) errs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errors
}
