package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// The operator's commands under forkd's one-operation-at-a-time rule: nothing is refused or
// dropped for arriving during another operation, --wait returns when the operation has ended
// (a reload's old workers gone; a refork's drain on their own) and fails when it failed, and the
// hot restart comes in two kinds.

// TestDeploysDuringAutomaticReforks: under load, refork_after reforks every few hundred requests.
// Ten SIGUSR1 and ten `forkctl reload --wait`, each sent while an automatic refork runs, each end
// in a completed phased restart: the refork gives way instead of the deploy being refused. Each
// fork takes 0.3 s (the template's before_fork hook sleeps), so that a refork, which waits for no
// old worker's drain, lasts long enough for the deploy to arrive while it runs.
func TestDeploysDuringAutomaticReforks(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 3, map[string]string{"TESTAPP_HANG_FORK": "0.3"}, `
fork_worker {
  refork_after = [150]
  timeout      = "10s"
}
`)})
	f.waitReady(3)
	l := startLoad(t, "http://"+f.addr(), 3, 2)
	duringRefork := func(what string) control.Status {
		return f.waitFor(what+" during an automatic refork", func(st control.Status) bool {
			return st.Rollout == control.RolloutRefork
		})
	}
	reloadsDone := func() int { return strings.Count(f.output.String(), "reload done: ") }

	for i := range 10 {
		duringRefork(fmt.Sprintf("SIGUSR1 %d", i+1))
		f.signal(syscall.SIGUSR1)
		f.waitFor(fmt.Sprintf("reload %d done", i+1), func(control.Status) bool { return reloadsDone() == i+1 })
	}
	for i := range 10 {
		duringRefork(fmt.Sprintf("reload --wait %d", i+1))
		out, code := f.forkctl("reload", "--wait")
		require.Equal(t, 0, code, "reload --wait %d: %s", i+1, out)
		assert.Contains(t, out, "reload done: generation")
		// forkd's log reaches the test through a pipe, a moment after the reply.
		f.waitFor(fmt.Sprintf("reload %d in the log", 11+i), func(control.Status) bool { return reloadsDone() == 11+i })
	}
	log := f.output.String()
	assert.NotContains(t, log, "reload failed")
	assert.NotContains(t, log, "a rollout is in progress")
	assert.GreaterOrEqual(t, strings.Count(log, "automatic refork cut short"), 20, "each deploy cut a refork short")
	ok, failed := l.stop()
	t.Logf("20 reloads during automatic reforks: %d requests, %d failed", ok, failed)
	assert.Zero(t, failed, "failed requests: %v", l.errs())
}

// TestReforkWaitThenReloadWait: refork --wait returns once every slot's worker is of the new
// generation (the old workers, which run the same code, may still drain, detached), so a reload
// --wait right after it starts at once, succeeds, and returns once the workers it replaced are
// gone: a reload waits for its old workers, which run the old code.
func TestReforkWaitThenReloadWait(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 4, nil, forkWorkerBlock)})
	f.waitReady(4)
	for range 3 {
		out, code := f.forkctl("refork", "--wait")
		require.Equal(t, 0, code, out)
		st := f.status()
		current := 0
		for _, w := range st.WorkerList {
			if w.Detached {
				assert.Less(t, w.Generation, st.Generation, "detached worker %d (pid %d)", w.Index, w.PID)
				continue
			}
			current++
			assert.Equal(t, st.Generation, w.Generation, "worker %d (pid %d) is of generation %d", w.Index, w.PID, w.Generation)
		}
		assert.Equal(t, 4, current, "refork --wait returned before every slot was on the new generation: %+v", st.WorkerList)
		reforked := st.Generation
		out, code = f.forkctl("reload", "--wait")
		require.Equal(t, 0, code, out)
		st = f.status()
		for _, w := range st.WorkerList {
			assert.NotEqual(t, reforked, w.Generation, "reload --wait returned with worker %d (pid %d) of the generation it replaced", w.Index, w.PID)
		}
	}
}

// TestRestartWaitFailsOnBrokenRelease: a hot restart onto a release whose workers cannot boot:
// the new master runs, its phased restart fails, the old workers serve on, and
// `forkctl restart --wait` says so and exits 1, as `reload --wait` does.
func TestRestartWaitFailsOnBrokenRelease(t *testing.T) {
	t.Parallel()
	broken := filepath.Join(t.TempDir(), "broken")
	f := startForkd(t, options{config: worker("-crash-if-file", broken) + "\nworkers = 2\n"})
	before := f.waitReady(2)
	require.NoError(t, os.WriteFile(broken, nil, 0o644))

	out, code := f.forkctl("restart", "--wait")
	assert.Equal(t, 1, code, "restart --wait onto a broken release: %s", out)
	assert.Contains(t, out, "the restart failed")
	assert.Contains(t, out, "did not become ready")
	after := f.waitReady(2)
	assert.Equal(t, before.MasterPID, after.MasterPID)
	assert.Equal(t, before.Generation, after.Generation, "the generation does not move")
	assert.ElementsMatch(t, workerPIDs(before), workerPIDs(after), "the old workers serve on")
	require.NotNil(t, after.LastRollout)
	assert.Equal(t, control.RolloutRestart, after.LastRollout.Kind)
	assert.NotEmpty(t, after.LastRollout.Error)
}

// TestRestartKeepWorkersOrNot: `forkctl restart --keep-workers` upgrades the master only: the same
// workers serve on, and their heartbeats still reach the new image (the notify sockets, files or
// abstract, went across the exec); `forkctl restart` replaces every worker, as Puma's hot restart
// replaces the app. Both keep the master's PID.
func TestRestartKeepWorkersOrNot(t *testing.T) {
	t.Parallel()
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			t.Parallel()
			f := startForkd(t, options{config: worker() + fmt.Sprintf(`
workers = 2
timeouts {
  worker = "1s"
}
notify {
  abstract = %v
}
`, abstract)})
			before := f.waitReady(2)

			out, code := f.forkctl("restart", "--keep-workers", "--wait")
			require.Equal(t, 0, code, out)
			assert.Contains(t, out, "workers kept")
			assert.Contains(t, f.output.String(), "keeping the workers as they are")
			// Three heartbeat timeouts: a worker whose heartbeats were lost would be killed by now.
			time.Sleep(3 * time.Second)
			kept := f.waitReady(2)
			assert.Equal(t, before.MasterPID, kept.MasterPID)
			assert.ElementsMatch(t, workerPIDs(before), workerPIDs(kept), "--keep-workers keeps the workers")
			assert.Equal(t, before.Generation, kept.Generation)
			assert.NotContains(t, f.output.String(), "no heartbeat")

			out, code = f.forkctl("restart", "--wait")
			require.Equal(t, 0, code, out)
			assert.Contains(t, out, "workers replaced")
			replaced := f.waitReady(2)
			assert.Equal(t, before.MasterPID, replaced.MasterPID)
			assert.Equal(t, before.Generation+1, replaced.Generation)
			for _, pid := range workerPIDs(replaced) {
				assert.NotContains(t, workerPIDs(before), pid, "restart replaces every worker")
			}
			assert.Len(t, replaced.WorkerList, 2, "the old workers are gone when restart --wait returns")
		})
	}
}

// TestAutomaticReforkOnce: refork_after = [N, false] reforks once, when the busiest worker has
// served N requests, and never again, however much is served after.
func TestAutomaticReforkOnce(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 3, nil, `
fork_worker {
  refork_after = [50, false]
  timeout      = "10s"
}
`)})
	f.waitReady(3)
	l := startLoad(t, "http://"+f.addr(), 2, 2)
	st := f.waitFor("the automatic refork", func(st control.Status) bool { return st.Generation == 2 && len(st.WorkerList) == 3 })
	served := func(st control.Status) uint64 {
		var n uint64
		for _, w := range st.WorkerList {
			n += w.Requests
		}
		return n
	}
	base := served(st)
	// Far more than another 50 requests for every worker.
	st = f.waitFor("ten times the quota served since", func(st control.Status) bool { return served(st) > base+3*500 })
	l.stop()
	assert.Equal(t, 2, st.Generation, "refork_after = [50, false] reforks once")
	assert.Equal(t, 1, strings.Count(f.output.String(), "automatic refork to generation"))
}
