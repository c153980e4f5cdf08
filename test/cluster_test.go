package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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

func TestServesOnBoundSocket(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 3\n"})
	st := f.waitReady(3)
	assert.Equal(t, "running", st.Phase)
	assert.False(t, st.SocketActivated)
	assert.Equal(t, "3/3 workers ready, generation 1", st.StatusLine)

	url := "http://" + f.addr()
	seen := map[string]bool{}
	for i := 0; i < 60 && len(seen) < 2; i++ {
		seen[strings.Fields(get(t, url))[1]] = true
	}
	assert.GreaterOrEqual(t, len(seen), 2, "requests should spread over several workers: %v", seen)

	pids := map[int]bool{}
	for _, w := range st.WorkerList {
		assert.Equal(t, "ready", w.State)
		assert.NotZero(t, w.PID)
		pids[w.PID] = true
		// Every worker is the master's direct child.
		assert.Equal(t, f.cmd.Process.Pid, parentOf(t, w.PID))
		// Its LISTEN_PID was its own PID (testworker exits 3 otherwise), and it knows its slot.
	}
	assert.Len(t, pids, 3)
	assert.Equal(t, "1\n", get(t, url+"/env?k=FORKD_GENERATION"))
}

func TestSocketActivation(t *testing.T) {
	t.Parallel()
	l, addr := listenTCP(t)
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n", activation: true, extraFiles: []*os.File{l}, fdNames: "web"})
	st := f.waitReady(2)
	assert.True(t, st.SocketActivated)
	require.Len(t, st.Listeners, 1)
	assert.Equal(t, "web", st.Listeners[0].Name)
	assert.Contains(t, get(t, "http://"+addr), "worker=")
	assert.Equal(t, "web\n", get(t, "http://"+addr+"/env?k=LISTEN_FDNAMES"))
	assert.Equal(t, "1\n", get(t, "http://"+addr+"/env?k=LISTEN_FDS"))
}

func TestNoStrayDescriptorsInWorkers(t *testing.T) {
	t.Parallel()
	// forkd inherits a descriptor without close-on-exec and without LISTEN_FDS, as a careless
	// parent would leak it; it must not reach the workers.
	// Two of them, at fds 3 and 4: the first is hidden by the listener that takes fd 3 in a worker.
	var leaks []*os.File
	for range 2 {
		leak, err := os.CreateTemp(t.TempDir(), "leak")
		require.NoError(t, err)
		leaks = append(leaks, leak)
	}
	f := startForkd(t, options{config: worker() + "\nworkers = 1\n", extraFiles: leaks})
	f.waitReady(1)
	// fds 0, 1, 2 and the one listener at 3: nothing else.
	assert.Equal(t, "0 1 2 3\n", get(t, "http://"+f.addr()+"/fds"))
}

func TestReadyFromWorkersDescendant(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker("-ready", "child") + "\nworkers = 2\n"})
	st := f.waitReady(2)
	for _, w := range st.WorkerList {
		assert.Equal(t, "ready via helper", w.StatusLine)
	}
	assert.Zero(t, st.DroppedNotifications)
}

func TestWorkerThatNeverGetsReadyIsReplaced(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker("-ready", "never") + `
workers = 1
timeouts {
  boot = "500ms"
}
restart {
  backoff_min = "100ms"
  backoff_max = "200ms"
}
`})
	st := f.waitFor("a boot-timeout restart", func(st control.Status) bool {
		return st.WorkerList[0].Restarts >= 2
	})
	assert.Contains(t, st.WorkerList[0].LastExit, "killed by SIGKILL (boot timeout)")
	assert.Equal(t, "starting", st.Phase)
	assert.Contains(t, f.output.String(), "sends READY=1 to NOTIFY_SOCKET", "the log explains readiness")
}

func TestHungWorkerReplacedAfterHeartbeatTimeout(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + `
workers = 2
timeouts {
  worker = "1s"
}
`})
	st := f.waitReady(2)
	hung := st.WorkerList[0].PID
	require.NoError(t, syscall.Kill(hung, syscall.SIGSTOP))
	st = f.waitFor("worker 0 replaced", func(st control.Status) bool {
		w := st.WorkerList[0]
		return w.PID != hung && w.State == "ready"
	})
	assert.Contains(t, st.WorkerList[0].LastExit, "heartbeat timeout")
	waitGone(t, hung)
	// The healthy worker, which pings, was left alone.
	assert.Zero(t, st.WorkerList[1].Restarts)
}

func TestKilledWorkerUnderLoadIsReplaced(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n"})
	st := f.waitReady(2)
	url := "http://" + f.addr()

	var ok, failed atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := httpClient.Get(url)
				if err != nil {
					failed.Add(1)
					continue
				}
				resp.Body.Close()
				ok.Add(1)
			}
		}()
	}
	victim := st.WorkerList[1].PID
	require.NoError(t, syscall.Kill(victim, syscall.SIGKILL))
	st = f.waitFor("worker 1 replaced", func(st control.Status) bool {
		return st.WorkerList[1].PID != victim && st.Ready == 2
	})
	cancel()
	wg.Wait()
	assert.Equal(t, "killed by SIGKILL", st.WorkerList[1].LastExit)
	assert.Equal(t, 1, st.WorkerList[1].Restarts)
	t.Logf("requests during the kill: %d ok, %d failed (in flight on the killed worker)", ok.Load(), failed.Load())
	// After the replacement, everything is served.
	for range 20 {
		get(t, url)
	}
}

func TestCrashLoopBacksOff(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker("-crash-after", "10ms") + `
workers = 1
restart {
  backoff_min = "200ms"
  backoff_max = "400ms"
  reset_after = "1m"
}
`})
	st := f.waitFor("the crash loop", func(st control.Status) bool {
		return st.WorkerList[0].State == "backoff" && strings.Contains(st.StatusLine, "crash loop")
	})
	assert.Contains(t, st.WorkerList[0].LastExit, "exit status 1")
	assert.False(t, st.WorkerList[0].NextRestart.IsZero())
	first := st.WorkerList[0].Restarts
	f.waitFor("three more restarts", func(st control.Status) bool { return st.WorkerList[0].Restarts >= first+3 })
	assert.Contains(t, f.output.String(), "crash-looping")
	// The master's own log says when each crash and each respawn happened: after the first crash
	// (replaced at once), every respawn waits out backoff_min at least.
	var exitedAt time.Time
	exits := 0
	for _, line := range strings.Split(f.output.String(), "\n") {
		stamp, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		at, err := time.Parse(time.RFC3339Nano, stamp)
		switch {
		case err != nil:
		case strings.Contains(line, "event=worker-exited"):
			exitedAt, exits = at, exits+1
		case strings.Contains(line, "event=worker-spawned") && exits >= 2:
			assert.GreaterOrEqual(t, at.Sub(exitedAt), 199*time.Millisecond, "respawn after crash %d: %s", exits, line)
		}
	}
	assert.GreaterOrEqual(t, exits, 4, "crashes in the log")
}

func TestTTINAndTTOUScale(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n"})
	f.waitReady(2)
	f.signal(syscall.SIGTTIN)
	st := f.waitReady(3)
	third := st.WorkerList[2].PID
	// One signal at a time: two of the same kind sent at once may arrive as one.
	f.signal(syscall.SIGTTOU)
	f.waitReady(2)
	f.signal(syscall.SIGTTOU)
	st = f.waitFor("one worker", func(st control.Status) bool {
		return st.Workers == 1 && len(st.WorkerList) == 1 && st.Ready == 1
	})
	waitGone(t, third)
	// Below one worker, TTOU is refused and logged, never fatal.
	f.signal(syscall.SIGTTOU)
	f.waitFor("the refusal in the log", func(control.Status) bool {
		return strings.Contains(f.output.String(), "SIGTTOU ignored")
	})
	assert.Equal(t, 1, f.status().Workers)
}

func TestGracefulStopDrainsInFlightRequests(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n"})
	st := f.waitReady(2)
	url := "http://" + f.addr() + "/slow?ms=1500&announce=drain"
	result := make(chan error, 1)
	go func() {
		resp, err := httpClient.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != 200 {
				err = fmt.Errorf("status %s", resp.Status)
			}
		}
		result <- err
	}()
	f.waitFor("the request in a worker's hands", func(control.Status) bool {
		return strings.Contains(f.output.String(), "slow request drain received")
	})
	f.signal(syscall.SIGTERM)
	require.NoError(t, <-result, "the in-flight request completes")
	assert.Equal(t, 0, f.waitExit())
	waitGone(t, workerPIDs(st)...)
	assert.Contains(t, f.output.String(), "all workers have exited")
}

func TestShutdownTimeoutEscalatesToSIGKILL(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker("-ignore-term") + `
workers = 2
timeouts {
  shutdown = "500ms"
}
`})
	st := f.waitReady(2)
	f.signal(syscall.SIGTERM)
	assert.Equal(t, 0, f.waitExit())
	waitGone(t, workerPIDs(st)...)
	assert.Contains(t, f.output.String(), "did not exit within 500ms of SIGTERM")
}

func TestQuitStopsImmediately(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker("-ignore-term") + `
workers = 2
timeouts {
  shutdown = "1h"
}
`})
	st := f.waitReady(2)
	f.signal(syscall.SIGQUIT)
	assert.Equal(t, 0, f.waitExit())
	waitGone(t, workerPIDs(st)...)
}

func TestWorkersExitWhenMasterIsKilled(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 3\n"})
	st := f.waitReady(3)
	f.signal(syscall.SIGKILL)
	f.waitExit()
	waitGone(t, workerPIDs(st)...)
}

func TestNotificationFromStrangerIsDropped(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 1\n"})
	f.waitReady(1)
	addr := strings.TrimSpace(get(t, "http://"+f.addr()+"/env?k=NOTIFY_SOCKET"))
	require.True(t, strings.HasPrefix(addr, f.dir+"/notify-"), "NOTIFY_SOCKET=%q: a file in forkd's runtime directory", addr)
	info, err := os.Stat(addr)
	require.NoError(t, err)
	assert.Equal(t, os.ModeSocket|0o600, info.Mode(), "only forkd's user (and root) may send")
	// This test process is not a worker nor a worker's descendant (but root, so it may send).
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Write([]byte("STOPPING=1\nSTATUS=hijacked"))
	require.NoError(t, err)
	st := f.waitFor("the dropped datagram", func(st control.Status) bool { return st.DroppedNotifications == 1 })
	assert.Equal(t, "serving", st.WorkerList[0].StatusLine)
	assert.Equal(t, "ready", st.WorkerList[0].State)
	assert.Contains(t, f.scrapeControlSocket(), `forkd_notify_dropped_total{reason="unknown_sender"} 1`+"\n")
}

func TestOrphansAreReaped(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker("-spawn-orphan") + "\nworkers = 2\n"})
	f.waitReady(2)
	master := f.cmd.Process.Pid
	// Each worker left a sleep behind, re-parented to the master; once they exit, the master must
	// have reaped them: no zombie child of the master remains.
	end := time.Now().Add(deadline)
	for {
		zombies, others := childrenOf(t, master)
		if zombies == 0 && others == 2 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("master %d has %d zombie and %d live children, want 0 and its 2 workers", master, zombies, others)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestQuickMode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	socket := filepath.Join(dir, "control.sock")
	f := startQuickMode(t, dir, socket, "--workers", "2", "--listen", "tcp://127.0.0.1:0",
		"--socket", socket, "--", filepath.Join(bin, "testworker"))
	st := f.waitReady(2)
	assert.Equal(t, "listen0", st.Listeners[0].Name)
	assert.Contains(t, get(t, "http://"+f.addr()), "worker=")
}

func TestForkctlAgainstRunningForkd(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n"})
	f.waitReady(2)

	out, code := f.forkctl("status")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "2/2")
	assert.Regexp(t, `(?m)^\s*0\s+\d+\s+1\s+exec\s+ready`, out)
	// The tests run forkd wherever go test runs: without a cgroup of its own (the status says why),
	// or in a writable cgroup v2 subtree.
	assert.Regexp(t, `(?m)^cgroups:\s+(off \(.+\)|on: /.+)$`, out)

	out, code = f.forkctl("status", "-o", "json")
	require.Equal(t, 0, code, out)
	var st control.Status
	require.NoError(t, json.Unmarshal([]byte(out), &st))
	assert.Equal(t, 2, st.Workers)
	assert.Equal(t, f.cmd.Process.Pid, st.MasterPID)

	out, code = f.forkctl("scale", "3")
	require.Equal(t, 0, code, out)
	f.waitReady(3)
	out, code = f.forkctl("scale", "-2")
	require.Equal(t, 0, code, out)
	f.waitReady(1)
	out, code = f.forkctl("scale", "0")
	assert.Equal(t, 2, code, out)
	out, code = f.forkctl("scale", "5000")
	assert.NotEqual(t, 0, code, out)
	assert.Contains(t, out, "out of range")

	out, code = f.forkctl("version")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "forkd")

	out, code = f.forkctl("stop", "--wait")
	require.Equal(t, 0, code, out)
	assert.Equal(t, 0, f.waitExit())

	out, code = f.forkctl("status")
	assert.Equal(t, 3, code, out)
	assert.Contains(t, out, "not running")
}

func TestBadConfigGivesDiagnosticsAndExit78(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.hcl")
	require.NoError(t, os.WriteFile(path, []byte(worker()+"\nworkers = 2\ntimeouts {\n  boot = \"soon\"\n}\n"), 0o644))
	for _, args := range [][]string{{"--config", path}, {"check", path}} {
		cmd := exec.Command(filepath.Join(bin, "forkd"), args...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "forkd %v: %s", args, out)
		assert.Equal(t, 78, ee.ExitCode())
		assert.Contains(t, string(out), "bad.hcl:4,")
		assert.Contains(t, string(out), `boot = "soon"`)
	}
	out, code := runForkctl(t, "check", path)
	assert.Equal(t, 78, code, out)

	good := filepath.Join(dir, "good.hcl")
	require.NoError(t, os.WriteFile(good, []byte(worker()+"\nworkers = 2\n"), 0o644))
	out, code = runForkctl(t, "check", good)
	assert.Equal(t, 0, code, out)
}

// parentOf reads a process's parent PID from /proc.
func parentOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	require.NoError(t, err)
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	ppid, err := strconv.Atoi(fields[1])
	require.NoError(t, err)
	return ppid
}

// childrenOf counts pid's zombie and live children.
func childrenOf(t *testing.T, pid int) (zombies, live int) {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	require.NoError(t, err)
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 2 || fields[1] != strconv.Itoa(pid) {
			continue
		}
		if fields[0] == "Z" {
			zombies++
		} else {
			live++
		}
	}
	return zombies, live
}

// TestAsPIDOne runs forkd as the init of a new PID namespace, as in a container: it serves, reaps
// the orphans its workers leave, and stops on SIGTERM with its workers.
func TestAsPIDOne(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare(1) is not installed")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "forkd.hcl")
	socket := filepath.Join(dir, "control.sock")
	require.NoError(t, os.WriteFile(cfg, []byte(worker("-spawn-orphan")+fmt.Sprintf(`
workers = 2
listen "http" {
  address = "tcp://127.0.0.1:0"
}
control {
  socket = %q
}
`, socket)), 0o644))
	// unshare forks forkd as PID 1 of the new namespace and waits for it.
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", filepath.Join(bin, "forkd"), "--config", cfg)
	f := startCommand(t, cmd, dir, socket)

	st := f.waitReady(2)
	assert.Equal(t, 1, st.MasterPID, "forkd is PID 1 in its namespace")
	assert.Contains(t, get(t, "http://"+f.addr()), "worker=")
	// SIGTERM to forkd itself: its host PID is unshare's only child.
	master := 0
	require.Eventually(t, func() bool {
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid))
		_, err := fmt.Sscan(string(kids), &master)
		return err == nil
	}, deadline, 10*time.Millisecond)
	require.NoError(t, syscall.Kill(master, syscall.SIGTERM))
	assert.Equal(t, 0, f.waitExit())
	assert.Contains(t, f.output.String(), "all workers have exited")
}
