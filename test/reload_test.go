package test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// capacity samples the status while rollouts run and keeps the lowest number of ready workers
// among the desired ones, as the master counts them.
type capacity struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	min  int
}

func watchCapacity(f *forkd, workers int) *capacity {
	c := &capacity{stop: make(chan struct{}), done: make(chan struct{}), min: workers}
	go func() {
		defer close(c.done)
		for {
			select {
			case <-c.stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if st, err := f.client.Status(f.t.Context()); err == nil && st.Phase != control.PhaseStopping {
				c.mu.Lock()
				c.min = min(c.min, st.Ready)
				c.mu.Unlock()
			}
		}
	}()
	return c
}

func (c *capacity) lowest() int {
	close(c.stop)
	<-c.done
	return c.min
}

// reloadTenTimes runs 10 phased restarts under load and checks that each replaced every worker,
// that no request failed, and that capacity never dropped below workers - maxUnavailable.
func reloadTenTimes(t *testing.T, f *forkd, workers, maxUnavailable int) {
	t.Helper()
	st := f.waitReady(workers)
	l := startLoad(t, "http://"+f.addr(), 4, 2)
	c := watchCapacity(f, workers)
	for i := range 10 {
		before := map[int]bool{}
		for _, w := range st.WorkerList {
			before[w.PID] = true
		}
		out, code := f.forkctl("reload", "--wait")
		require.Equal(t, 0, code, "reload %d: %s", i+1, out)
		st = f.waitFor("the old workers gone", func(st control.Status) bool {
			return len(st.WorkerList) == workers && st.Ready == workers
		})
		for _, w := range st.WorkerList {
			assert.False(t, before[w.PID], "reload %d: worker %d (pid %d) was not replaced", i+1, w.Index, w.PID)
			assert.Equal(t, i+2, w.Generation)
		}
	}
	lowest := c.lowest()
	ok, failed := l.stop()
	assert.Zero(t, failed, "failed requests during 10 reloads (%d ok): %v", ok, l.errs())
	assert.GreaterOrEqual(t, lowest, workers-maxUnavailable, "ready workers during the reloads")
	t.Logf("10 phased restarts: %d requests, %d failed, lowest capacity %d/%d", ok, failed, lowest, workers)
}

func TestTenPhasedRestartsInExecMode(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 4\n"})
	reloadTenTimes(t, f, 4, 0)
}

func TestTenPhasedRestartsInForkWorkerMode(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 4, nil, forkWorkerBlock)})
	reloadTenTimes(t, f, 4, 0)
	assertForkTree(t, f, f.status())
}

func TestPhasedRestartWithMaxUnavailable(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + `
workers = 4
rollout {
  max_surge       = 0
  max_unavailable = 1
}
`})
	st := f.waitReady(4)
	c := watchCapacity(f, 4)
	out, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	assert.GreaterOrEqual(t, c.lowest(), 3)
	after := f.waitReady(4)
	assert.NotEqual(t, st.WorkerList[3].PID, after.WorkerList[3].PID)
}

func TestPhasedRestartPicksUpSymlinkedRelease(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, r := range []string{"1", "2"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "releases", r), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "releases", r, "VERSION"), []byte("release "+r), 0o644))
	}
	current := filepath.Join(dir, "current")
	require.NoError(t, os.Symlink(filepath.Join(dir, "releases", "1"), current))
	f := startForkd(t, options{config: worker() + fmt.Sprintf("\nworkers = 2\ndirectory = %q\n", current)})
	f.waitReady(2)
	url := "http://" + f.addr() + "/version"
	assert.Equal(t, "release 1\n", get(t, url))

	// The deploy: switch the symlink atomically, then reload.
	next := filepath.Join(dir, "current.new")
	require.NoError(t, os.Symlink(filepath.Join(dir, "releases", "2"), next))
	require.NoError(t, os.Rename(next, current))
	out, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	f.waitFor("the old workers gone", func(st control.Status) bool { return len(st.WorkerList) == 2 })
	for range 10 {
		assert.Equal(t, "release 2\n", get(t, url))
	}
}

func TestBrokenReleaseFailsTheReloadAndKeepsTheOldWorkers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, flags, reason string
	}{
		{"exits at boot", `"-crash-if-file", "/"`, "did not become ready: exit status 1"},
		{"hangs at boot", `"-ready", "never"`, "did not become ready: killed by SIGKILL (boot timeout)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			good := worker() + "\nworkers = 3\ntimeouts {\n  boot = \"2s\"\n}\n"
			f := startForkd(t, options{config: good})
			st := f.waitReady(3)
			path := filepath.Join(f.dir, "forkd.hcl")
			orig, err := os.ReadFile(path)
			require.NoError(t, err)
			broken := strings.Replace(string(orig), "testworker\"]", "testworker\", "+tc.flags+"]", 1)
			require.NotEqual(t, string(orig), broken)
			require.NoError(t, os.WriteFile(path, []byte(broken), 0o644))

			l := startLoad(t, "http://"+f.addr(), 2, 1)
			out, code := f.forkctl("reload", "--wait")
			assert.Equal(t, 1, code, out)
			assert.Contains(t, out, tc.reason)
			after := f.waitFor("the canary gone", func(st control.Status) bool {
				return len(st.WorkerList) == 3 && st.Phase == control.PhaseRunning
			})
			for i, w := range after.WorkerList {
				assert.Equal(t, st.WorkerList[i].PID, w.PID, "worker %d still serving", i)
				assert.Equal(t, 1, w.Generation)
			}
			ok, failed := l.stop()
			assert.Zero(t, failed, "failed requests (%d ok): %v", ok, l.errs())
			out, code = f.forkctl("status")
			require.Equal(t, 0, code, out)
			assert.Regexp(t, `(?m)^last rollout: +reload of generation 2 failed: worker \d of generation 2 `+
				regexp.QuoteMeta(tc.reason)+`; rolled back to generation 1$`, out)

			// Fixed: the next reload succeeds.
			require.NoError(t, os.WriteFile(path, orig, 0o644))
			out, code = f.forkctl("reload", "--wait")
			require.Equal(t, 0, code, out)
			assert.Equal(t, 2, f.waitReady(3).Generation)
		})
	}
}

func TestReloadWithInvalidConfigChangesNothing(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n"})
	st := f.waitReady(2)
	path := filepath.Join(f.dir, "forkd.hcl")
	orig, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, append(orig, []byte("\nworkers = \"many\"\n")...), 0o644))
	out, code := f.forkctl("reload", "--wait")
	assert.Equal(t, 1, code, out)
	assert.Contains(t, out, "forkd.hcl:")

	// The log says it in one readable line, with every problem and where: not the diagnostics'
	// source snippets as \n escapes.
	f.signal(syscall.SIGHUP)
	var logged string
	waitUntil(t, "the SIGHUP's reload to fail", func() bool {
		for _, line := range strings.Split(f.output.String(), "\n") {
			if strings.Contains(line, "SIGHUP: reload failed") {
				logged = line
				return true
			}
		}
		return false
	})
	assert.Regexp(t, `forkd\.hcl:\d+,\d+-\d+: Attribute redefined: The argument \\"workers\\" was already set`, logged)
	assert.NotContains(t, logged, `\n`)

	after := f.status()
	assert.Equal(t, st.WorkerList[0].PID, after.WorkerList[0].PID)
	assert.Equal(t, 1, after.Generation)
}
