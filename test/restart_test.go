package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
	"github.com/forkd/forkd/pkg/restart"
)

// hotRestartFiveTimes runs 5 hot restarts under load: the master keeps its PID, every worker is
// replaced each time, no request fails.
func hotRestartFiveTimes(t *testing.T, f *forkd, workers int) {
	t.Helper()
	st := f.waitReady(workers)
	master := st.MasterPID
	l := startLoad(t, "http://"+f.addr(), 4, 2)
	for i := range 5 {
		before := map[int]bool{}
		for _, w := range st.WorkerList {
			before[w.PID] = true
		}
		out, code := f.forkctl("restart", "--wait")
		require.Equal(t, 0, code, "restart %d: %s", i+1, out)
		assert.Contains(t, out, fmt.Sprintf("(pid %d)", master))
		st = f.waitFor("the old workers gone", func(st control.Status) bool {
			return len(st.WorkerList) == workers && st.Ready == workers && st.Phase == control.PhaseRunning
		})
		assert.Equal(t, master, st.MasterPID, "a hot restart keeps the master's PID")
		for _, w := range st.WorkerList {
			assert.False(t, before[w.PID], "restart %d: worker %d was not replaced", i+1, w.Index)
		}
	}
	ok, failed := l.stop()
	assert.Zero(t, failed, "failed requests during 5 hot restarts (%d ok): %v", ok, l.errs())
	assert.Equal(t, 6, st.Generation)
	t.Logf("5 hot restarts: %d requests, %d failed", ok, failed)
}

func TestFiveHotRestartsInExecMode(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 3\n"})
	hotRestartFiveTimes(t, f, 3)
}

func TestFiveHotRestartsInForkWorkerMode(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 3, nil, forkWorkerBlock)})
	hotRestartFiveTimes(t, f, 3)
	assertForkTree(t, f, f.status())
}

// buildForkd builds forkd with version v into path (atomically, as a package upgrade replaces it).
func buildForkd(t *testing.T, path, v string) {
	t.Helper()
	tmp := path + ".new"
	cmd := exec.Command("go", "build", "-o", tmp, "-ldflags", "-X github.com/forkd/forkd/internal/version.Version="+v, "../cmd/forkd")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.NoError(t, os.Rename(tmp, path))
}

func TestHotRestartOntoAReplacedBinary(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	binary := filepath.Join(dir, "forkd")
	buildForkd(t, binary, "1.0.0-old")
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n", forkdPath: binary})
	st := f.waitReady(2)
	assert.Contains(t, st.Version, "1.0.0-old")
	l := startLoad(t, "http://"+f.addr(), 2, 1)

	buildForkd(t, binary, "2.0.0-new")
	out, code := f.forkctl("restart", "--wait")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "2.0.0-new")
	out, code = f.forkctl("version")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "server: forkd 2.0.0-new")
	after := f.waitFor("the old workers gone", func(st control.Status) bool { return len(st.WorkerList) == 2 })
	assert.Equal(t, st.MasterPID, after.MasterPID)
	ok, failed := l.stop()
	assert.Zero(t, failed, "failed requests (%d ok): %v", ok, l.errs())
}

func TestHotRestartRefusedWhenTheNewBinaryCannotTakeOver(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	binary := filepath.Join(dir, "forkd")
	buildForkd(t, binary, "1.0.0")
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n", forkdPath: binary})
	st := f.waitReady(2)

	// A broken install: the file is not a program forkd can run.
	require.NoError(t, os.WriteFile(binary+".new", []byte("#!/bin/sh\necho broken; exit 1\n"), 0o755))
	require.NoError(t, os.Rename(binary+".new", binary))
	out, code := f.forkctl("restart", "--wait")
	assert.Equal(t, 1, code, out)
	assert.Contains(t, out, "cannot take over")
	after := f.status()
	assert.Equal(t, control.PhaseRunning, after.Phase)
	for i, w := range after.WorkerList {
		assert.Equal(t, st.WorkerList[i].PID, w.PID, "the old image keeps serving with its workers")
	}
	get(t, "http://"+f.addr())

	// A working binary again: the next restart goes through.
	buildForkd(t, binary, "1.0.1")
	out, code = f.forkctl("restart", "--wait")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "1.0.1")
}

func TestHotRestartBySIGUSR2(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n"})
	st := f.waitReady(2)
	f.signal(syscall.SIGUSR2)
	after := f.waitFor("the restart done", func(s control.Status) bool {
		return s.Generation == 2 && len(s.WorkerList) == 2 && s.Ready == 2 && s.Phase == control.PhaseRunning
	})
	assert.Equal(t, st.MasterPID, after.MasterPID)
	assert.Contains(t, f.output.String(), "taking over 2 workers after a hot restart")
}

func TestHooks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	record := filepath.Join(dir, "hooks.log")
	hook := func(name string) string {
		script := fmt.Sprintf(`echo "%s gen=$FORKD_GENERATION result=$FORKD_RESULT worker=$FORKD_WORKER exit=$FORKD_EXIT name=$FORKD_NAME" >> %s`, name, record)
		return fmt.Sprintf(`["/bin/sh", "-c", %q]`, script)
	}
	vetoFile := filepath.Join(dir, "veto")
	f := startForkd(t, options{config: worker() + fmt.Sprintf(`
name    = "hooked"
workers = 2
hooks {
  before_reload   = ["/bin/sh", "-c", "test ! -e %s && echo before_reload gen=$FORKD_GENERATION >> %s"]
  after_reload    = %s
  before_restart  = %s
  on_worker_crash = %s
}
`, vetoFile, record, hook("after_reload"), hook("before_restart"), hook("on_worker_crash"))})
	st := f.waitReady(2)
	lines := func(n int) []string {
		t.Helper()
		var got []string
		f.waitFor(fmt.Sprintf("%d hook runs", n), func(control.Status) bool {
			b, _ := os.ReadFile(record)
			got = strings.Split(strings.TrimSpace(string(b)), "\n")
			return len(b) > 0 && len(got) >= n
		})
		return got
	}

	out, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	got := lines(2)
	assert.Equal(t, "before_reload gen=2", got[0])
	assert.Equal(t, "after_reload gen=2 result=ok worker= exit= name=hooked", got[1])

	// A before_reload that fails vetoes the reload.
	require.NoError(t, os.WriteFile(vetoFile, nil, 0o644))
	out, code = f.forkctl("reload", "--wait")
	assert.Equal(t, 1, code, out)
	assert.Contains(t, out, "before_reload")
	assert.Equal(t, 2, f.status().Generation)

	st = f.waitReady(2)
	require.NoError(t, syscall.Kill(st.WorkerList[1].PID, syscall.SIGKILL))
	got = lines(3)
	assert.Equal(t, "on_worker_crash gen=2 result= worker=1 exit=killed by SIGKILL name=hooked", got[2])

	out, code = f.forkctl("restart", "--wait")
	require.Equal(t, 0, code, out)
	got = lines(4)
	assert.Equal(t, "before_restart gen= result= worker= exit= name=hooked", got[3])
}

// TestNewImageThatCannotStartLeavesNoWorkerBehind: the new binary passes the checks but dies as soon
// as it runs. As documented (docs/architecture.md, Hot restart), the master is then gone, and its
// workers, whose parent died, get SIGTERM from the kernel and exit: nothing is left half-dead.
func TestNewImageThatCannotStartLeavesNoWorkerBehind(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	binary := filepath.Join(dir, "forkd")
	buildForkd(t, binary, "1.0.0")
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n", forkdPath: binary})
	st := f.waitReady(2)

	// Answers the checks, then fails at once when exec'd as the master.
	script := fmt.Sprintf("#!/bin/sh\ncase \"$1\" in __forkd-handover-version) echo %d;; check) echo ok;; *) echo 'cannot start' >&2; exit 1;; esac\n",
		restart.Version)
	require.NoError(t, os.WriteFile(binary+".new", []byte(script), 0o755))
	require.NoError(t, os.Rename(binary+".new", binary))
	f.forkctl("restart")
	assert.Equal(t, 1, f.waitExit())
	waitGone(t, workerPIDs(st)...)
	assert.Contains(t, f.output.String(), "cannot start")
}
