package test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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

// serveScript is the tree tests' server, test/treeapp/serve.py: http.server on the first listener.
func serveScript(t *testing.T) string {
	t.Helper()
	path, err := filepath.Abs("treeapp/serve.py")
	require.NoError(t, err)
	return path
}

// descendants lists pid's descendants, read from /proc.
func descendants(pid int) []int {
	var out []int
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		for _, f := range strings.Fields(string(b)) {
			if child, err := strconv.Atoi(f); err == nil {
				out = append(out, child)
				out = append(out, descendants(child)...)
			}
		}
	}
	return out
}

// killOnCleanup SIGKILLs, when the test ends, those of pids that still run serve.py: a failed test
// must not leave servers behind.
func killOnCleanup(t *testing.T, pids ...int) {
	script := serveScript(t)
	t.Cleanup(func() {
		for _, pid := range pids {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), script) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
}

// waitTrees waits until every worker of st has a serve.py child, and returns every process of the
// workers' trees.
func waitTrees(t *testing.T, f *forkd, st control.Status) []int {
	t.Helper()
	var tree []int
	f.waitFor("each worker's server child", func(control.Status) bool {
		tree = tree[:0]
		for _, w := range st.WorkerList {
			children := descendants(w.PID)
			if len(children) == 0 {
				return false
			}
			tree = append(append(tree, w.PID), children...)
		}
		return true
	})
	killOnCleanup(t, tree...)
	return slices.Clone(tree)
}

// assertGone checks, without waiting, that none of pids runs any more.
func assertGone(t *testing.T, what string, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		if !processGone(pid) {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			t.Errorf("%s: pid %d still runs: %q", what, pid, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
}

// TestShellWorkerTreeStopsOnReloadAndStop: each worker is a shell script whose child serves. A
// reload stops the whole old tree (no request reaches the old code), and after a stop no process
// of it remains and the port is free once forkd has exited.
func TestShellWorkerTreeStopsOnReloadAndStop(t *testing.T) {
	t.Parallel()
	script := fmt.Sprintf("/usr/bin/python3 %s; echo 'serve.py exited' >&2", serveScript(t))
	f := startForkd(t, options{config: fmt.Sprintf(`
command   = ["/bin/sh", "-c", %q]
workers   = 2
readiness = "started"
`, script)})
	old := waitTrees(t, f, f.waitReady(2))
	addr := f.addr()
	url := "http://" + addr
	for range 10 {
		body := get(t, url)
		assert.Contains(t, body, "generation=1", "the shell script's child serves")
	}

	out, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	st := f.waitFor("generation 2 alone", func(st control.Status) bool {
		return st.Generation == 2 && len(st.WorkerList) == 2 && st.Ready == 2
	})
	waitGone(t, old...)
	for range 40 {
		assert.Contains(t, get(t, url), "generation=2", "after the reload, only the new code serves")
	}

	current := waitTrees(t, f, st)
	out, code = f.forkctl("stop", "--wait")
	require.Equal(t, 0, code, out)
	require.Equal(t, 0, f.waitExit())
	// forkd has exited: nothing it started may be left, and nothing may hold its port.
	assertGone(t, "after stop", current...)
	l, err := net.Listen("tcp", addr)
	require.NoError(t, err, "the port is free once forkd has exited")
	l.Close()
}

// TestOrphansLeftServingAreStopped: a worker leaves two servers behind, detached from it (their
// parent, a subshell, exits at once), so the master inherits them as a subreaper. Both serve on
// the worker's socket; the master stops them while the worker serves on, the one that ignores
// SIGTERM with SIGKILL after the shutdown timeout.
func TestOrphansLeftServingAreStopped(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	serve := serveScript(t)
	script := fmt.Sprintf(`(/usr/bin/python3 %[1]s --pidfile %[2]s/plain &); (/usr/bin/python3 %[1]s --ignore-term --pidfile %[2]s/stubborn &); exec %[3]s`,
		serve, dir, filepath.Join(bin, "testworker"))
	f := startForkd(t, options{config: fmt.Sprintf(`
command = ["/bin/sh", "-c", %q]
workers = 1
timeouts {
  shutdown = "2s"
}
`, script)})
	st := f.waitReady(1)
	var orphans []int
	for _, name := range []string{"plain", "stubborn"} {
		var pid int
		f.waitFor("the "+name+" orphan's pid file", func(control.Status) bool {
			b, err := os.ReadFile(filepath.Join(dir, name))
			pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil && pid > 0
		})
		orphans = append(orphans, pid)
	}
	killOnCleanup(t, orphans...)
	// The stubborn one is a stray for the shutdown timeout at least: the status counts it.
	f.waitFor("the strays in the status", func(st control.Status) bool { return st.Strays > 0 })
	waitGone(t, orphans...)
	f.waitFor("no stray left in the status", func(st control.Status) bool { return st.Strays == 0 })
	out := f.output.String()
	for _, pid := range orphans {
		assert.Contains(t, out, fmt.Sprintf("pid %d, a child forkd inherited", pid))
	}
	assert.Contains(t, out, fmt.Sprintf("stray orphan pid %d did not exit within 2s of SIGTERM: SIGKILL", orphans[1]))
	after := f.status()
	assert.Equal(t, workerPIDs(st), workerPIDs(after), "the worker serves on")
	assert.Equal(t, "ready", after.WorkerList[0].State)
	for range 10 {
		assert.Contains(t, get(t, "http://"+f.addr()), "worker=0", "only the worker serves")
	}
}

// TestForkedWorkersLeadTheirOwnProcessGroups: in fork-worker mode a forked worker gets a process
// group of its own from the SDK, so that signalling a worker's group never reaches the template or
// a sibling; a refork, which stops every forked worker's group, leaves the template serving.
func TestForkedWorkersLeadTheirOwnProcessGroups(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: pythonApp(t, 3, nil, forkWorkerBlock)})
	st := f.waitReady(3)
	for _, w := range st.WorkerList {
		pgid, err := syscall.Getpgid(w.PID)
		require.NoError(t, err)
		assert.Equal(t, w.PID, pgid, "worker %d leads its own process group", w.Index)
	}
	out, code := f.forkctl("refork", "--wait")
	require.Equal(t, 0, code, out)
	after := f.waitFor("the refork settled", func(st control.Status) bool {
		return st.Generation == 2 && len(st.WorkerList) == 3 && st.Ready == 3
	})
	assert.Equal(t, st.WorkerList[0].PID, after.WorkerList[0].PID, "the template serves on")
	assert.NotContains(t, f.output.String(), "worker exited: killed", "no worker was killed")
}

// TestMasterStallKillsNoHealthyWorker: the master is stopped (SIGSTOP) for longer than the
// heartbeat timeout while its workers keep sending heartbeats, which wait in the notify socket. On
// SIGCONT no worker is killed: the master reads what arrived before it judges a deadline, and
// extends by the stall the deadlines that wait for workers.
func TestMasterStallKillsNoHealthyWorker(t *testing.T) {
	t.Parallel()
	const heartbeat = 2 * time.Second
	f := startForkd(t, options{config: worker() + fmt.Sprintf("\nworkers = 3\ntimeouts {\n  worker = %q\n}\n", heartbeat)})
	before := workerPIDs(f.waitReady(3))
	f.signal(syscall.SIGSTOP)
	time.Sleep(2*heartbeat + heartbeat/2) // the fault: a stall well past the heartbeat timeout
	f.signal(syscall.SIGCONT)
	// Watch for twice the heartbeat timeout: a worker the stall made look dead would be killed at
	// once, and one that really stopped sending would be by then.
	for end := time.Now().Add(2 * heartbeat); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		st := f.status()
		require.Equal(t, before, workerPIDs(st), "a worker was replaced after the stall")
		require.Equal(t, 3, st.Ready)
	}
	out := f.output.String()
	assert.NotContains(t, out, "heartbeat-timeout")
	assert.Contains(t, out, "forkd itself did not run for")
}

// TestMasterStallRightAfterAdoptionKillsNoWorker: the same stall, struck the moment a hot
// restart's new image has taken the workers over, before its loop first woke. The stall counts
// from the new image's first instant: on SIGCONT no adopted worker is killed for want of a
// heartbeat (before, every one was: the gap was not noticed while the loop had never run).
func TestMasterStallRightAfterAdoptionKillsNoWorker(t *testing.T) {
	t.Parallel()
	const heartbeat = 2 * time.Second
	f := startForkd(t, options{config: worker() + fmt.Sprintf("\nworkers = 2\ntimeouts {\n  worker = %q\n}\n", heartbeat)})
	before := workerPIDs(f.waitReady(2))
	restarted := make(chan string, 1)
	go func() {
		out, code := f.forkctl("restart", "--keep-workers")
		restarted <- fmt.Sprintf("exit %d %s", code, out)
	}()
	// The loop first wakes at the first heartbeat or a second after the exec: stop it well before.
	for end := time.Now().Add(deadline); !strings.Contains(f.output.String(), "hot restart: took over the cluster"); {
		require.True(t, time.Now().Before(end), "no adoption in forkd's output:\n%s", f.output.String())
		time.Sleep(time.Millisecond)
	}
	f.signal(syscall.SIGSTOP)
	time.Sleep(2*heartbeat + heartbeat/2)
	f.signal(syscall.SIGCONT)
	out := <-restarted
	require.True(t, strings.HasPrefix(out, "exit 0 "), "forkctl restart --keep-workers: %s", out)
	for end := time.Now().Add(2 * heartbeat); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		st := f.status()
		require.Equal(t, before, workerPIDs(st), "an adopted worker was replaced after the stall")
		require.Equal(t, 2, st.Ready)
	}
	out = f.output.String()
	assert.NotContains(t, out, "heartbeat-timeout")
	assert.Contains(t, out[strings.Index(out, "hot restart: took over the cluster"):], "forkd itself did not run for")
}

// asUserWithProcessLimit prepares forkd to run as uid (a user of its own, so that no other process
// counts against its limit) under RLIMIT_NPROC nproc: a directory the user can use, with copies
// of forkd and testworker and a config running workers of testworker. It returns the command and
// the control socket's path.
func asUserWithProcessLimit(t *testing.T, uid, nproc, workers int) (*exec.Cmd, string) {
	t.Helper()
	// t.TempDir is private to root; the user needs to read, run and create its socket there.
	dir, err := os.MkdirTemp("", "forkd-nproc-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o777))
	for _, name := range []string{"forkd", "testworker"} {
		b, err := os.ReadFile(filepath.Join(bin, name))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o755))
	}
	socket := filepath.Join(dir, "control.sock")
	cfg := fmt.Sprintf("command = [%q]\nworkers = %d\nlisten \"http\" {\n  address = \"tcp://127.0.0.1:0\"\n}\ncontrol {\n  socket = %q\n}\n",
		filepath.Join(dir, "testworker"), workers, socket)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "forkd.hcl"), []byte(cfg), 0o644))
	cmd := exec.Command("prlimit", fmt.Sprintf("--nproc=%d", nproc), "setpriv", fmt.Sprintf("--reuid=%d", uid),
		fmt.Sprintf("--regid=%d", uid), "--clear-groups", filepath.Join(dir, "forkd"), "--config", filepath.Join(dir, "forkd.hcl"))
	// Its own process group, so that cleanup can end what it started, by that group's ID.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	t.Cleanup(func() {
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		}
	})
	return cmd, socket
}

// TestProcessLimitTooLowIsOneClearLine: under an RLIMIT_NPROC that leaves the master no room for
// its own threads, forkd says so in one line and exits 1, instead of a Go runtime dump.
func TestProcessLimitTooLowIsOneClearLine(t *testing.T) {
	t.Parallel()
	requireProgram(t, "prlimit", "setpriv")
	cmd, _ := asUserWithProcessLimit(t, 64101, 6, 2)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	assert.Equal(t, 1, ee.ExitCode(), "%s", out)
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.Len(t, lines, 1, "one line, not a runtime dump:\n%s", out)
	assert.Regexp(t, `^forkd: the process limit of forkd's user \(uid 64101\) is 6 \(RLIMIT_NPROC\) .*raise it \(LimitNPROC= in the unit, ulimit -u in a shell\)$`, lines[0])
}

// TestMasterSurvivesWorkersReachingTheProcessLimit: the limit leaves room for the master's own
// threads and hardly more, not for its workers (each a Go program with threads of its own). Spawns
// fail, or workers die for want of a thread; the master says why, backs off, answers, and stops
// cleanly.
func TestMasterSurvivesWorkersReachingTheProcessLimit(t *testing.T) {
	t.Parallel()
	requireProgram(t, "prlimit", "setpriv")
	cmd, socket := asUserWithProcessLimit(t, 64102, 17, 4)
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	f := &forkd{t: t, socket: socket, cmd: cmd, output: out, done: make(chan struct{}), client: control.NewClient(socket),
		seen: map[int]bool{}}
	go func() { f.err = <-exited; close(f.done) }()
	f.waitFor("a worker crash-looping", func(st control.Status) bool {
		for _, w := range st.WorkerList {
			if w.Restarts >= 3 {
				return true
			}
		}
		return false
	})
	assert.Contains(t, out.String(), "forkd's user has reached its process limit (RLIMIT_NPROC 17")
	st := f.status()
	assert.Equal(t, control.PhaseStarting, st.Phase, "the master runs on with the workers it could start")
	stop, code := f.forkctl("stop", "--wait")
	require.Equal(t, 0, code, stop)
	assert.Equal(t, 0, f.waitExit(), "%s", out.String())
}

// requireProgram skips the test without the given programs.
func requireProgram(t *testing.T, names ...string) {
	t.Helper()
	for _, name := range names {
		if _, err := exec.LookPath(name); err != nil {
			t.Skipf("%s is not installed (util-linux)", name)
		}
	}
}
