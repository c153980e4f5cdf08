package test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// This file tests the lifetime of the processes forkd starts: which signals reach them, when, and
// that none outlives what the master tracks.

// hotRestartsKeepAdoptedWorkers runs three hot restarts in a row. The first two roll out a broken
// release, so the phased restart after each fails and the adopted workers keep serving: through
// the second exec they must live on untouched (no signal, same PIDs, all ready). The third, of a
// good release, replaces them.
func hotRestartsKeepAdoptedWorkers(t *testing.T, f *forkd, workers int, breakRelease func(string) string) {
	t.Helper()
	st := f.waitReady(workers)
	original := workerPIDs(st)
	slices.Sort(original)
	path := filepath.Join(f.dir, "forkd.hcl")
	good, err := os.ReadFile(path)
	require.NoError(t, err)
	broken := breakRelease(string(good))
	require.NotEqual(t, string(good), broken)
	require.NoError(t, os.WriteFile(path, []byte(broken), 0o644))

	for i := 1; i <= 3; i++ {
		if i == 3 {
			require.NoError(t, os.WriteFile(path, good, 0o644))
		}
		// The exit code of a restart whose phased restart fails is not what this test is about.
		out, _ := f.forkctl("restart", "--wait")
		st = f.waitFor("the phased restart after the exec ended", func(st control.Status) bool {
			return strings.Count(f.output.String(), "taking over") == i && st.Rollout == "" &&
				st.Phase == control.PhaseRunning && st.Ready == workers && len(st.WorkerList) == workers
		})
		require.Equal(t, f.cmd.Process.Pid, st.MasterPID, "restart %d: %s", i, out)
		pids := workerPIDs(st)
		slices.Sort(pids)
		if i < 3 {
			assert.Equal(t, original, pids, "restart %d of a broken release: the adopted workers serve on", i)
			assert.Equal(t, 1, st.Generation)
		} else {
			for _, pid := range pids {
				assert.NotContains(t, original, pid, "restart %d: every worker replaced", i)
			}
			assert.Equal(t, 2, st.Generation)
		}
	}
	// Until the good release replaced them, no worker of the first generation exited (the broken
	// releases' canaries, of generation 2, did).
	out := f.output.String()
	for _, line := range strings.Split(out[:strings.LastIndex(out, "taking over")], "\n") {
		if strings.Contains(line, "worker exited") && strings.Contains(line, "generation=1 ") {
			t.Errorf("an adopted worker died before its replacement: %s", line)
		}
	}
}

func TestThreeHotRestartsKeepAdoptedWorkersInExecMode(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 3\n"})
	hotRestartsKeepAdoptedWorkers(t, f, 3, func(cfg string) string {
		return strings.Replace(cfg, "testworker\"]", "testworker\", \"-crash-if-file\", \"/\"]", 1)
	})
}

func TestThreeHotRestartsKeepAdoptedWorkersInForkWorkerMode(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 3, nil, forkWorkerBlock)})
	hotRestartsKeepAdoptedWorkers(t, f, 3, func(cfg string) string {
		return strings.Replace(cfg, `"app:app"`, `"app:no_such_app"`, 1)
	})
	assertForkTree(t, f, f.status())
}
