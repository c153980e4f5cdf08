package test

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/control"
)

// The control API's defences: against the application's own code, and against stalled clients.

// forkctlFromWorker starts forkd with workers whose worker 0, before it starts serving, runs
// forkctl with each of the commands (in a shell, so forkctl is the worker's child) and writes what
// it printed and its exit code to a file. It returns forkd and the outputs, in order.
func forkctlFromWorker(t *testing.T, workers int, extraConfig string, commands ...string) (*forkd, []string) {
	t.Helper()
	dir := t.TempDir()
	socket := filepath.Join(dir, "control.sock")
	var script strings.Builder
	fmt.Fprintf(&script, "if [ \"$FORKD_WORKER\" = 0 ] && [ ! -e %q ]; then\n", filepath.Join(dir, "done"))
	for i, c := range commands {
		out := filepath.Join(dir, fmt.Sprintf("out%d", i))
		fmt.Fprintf(&script, "  %q --socket %q %s >%q 2>&1; echo \"exit=$?\" >>%q\n",
			filepath.Join(bin, "forkctl"), socket, c, out, out)
	}
	fmt.Fprintf(&script, "  touch %q\nfi\nexec %q\n", filepath.Join(dir, "done"), filepath.Join(bin, "testworker"))
	cfg := fmt.Sprintf("command = [\"/bin/sh\", \"-c\", %q]\nworkers = %d\ncontrol {\n  socket = %q\n%s}\n",
		script.String(), workers, socket, extraConfig)
	f := startForkd(t, options{config: cfg})
	f.socket, f.client = socket, control.NewClient(socket)

	end := time.Now().Add(deadline)
	for {
		if _, err := os.Stat(filepath.Join(dir, "done")); err == nil {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("worker 0 did not run forkctl\nforkd output:\n%s", f.output.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	var outs []string
	for i := range commands {
		b, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("out%d", i)))
		require.NoError(t, err)
		outs = append(outs, string(b))
	}
	return f, outs
}

// TestWorkerCannotControlForkd: application code runs as forkd's user, which the socket's mode and
// the uid check let in; a worker running forkctl scale 1 took a cluster from 4 workers to 1. The
// API now refuses workers and their descendants, saying which option allows them.
func TestWorkerCannotControlForkd(t *testing.T) {
	t.Parallel()
	f, outs := forkctlFromWorker(t, 4, "", "scale 1", "status")
	assert.Contains(t, outs[0], "refuses its own workers and their descendants")
	assert.Regexp(t, `pid \d+ is a descendant of worker 0 \(pid \d+\)`, outs[0])
	assert.Contains(t, outs[0], `control.worker_access = "status"`)
	assert.Contains(t, outs[0], "exit=1")
	assert.Contains(t, outs[1], "exit=1", "status too, by default")

	st := f.waitReady(4)
	assert.Equal(t, 4, st.Workers, "the worker's scale changed nothing")
	// The operator, outside the workers' tree, is not refused.
	out, code := f.forkctl("scale", "3")
	require.Equal(t, 0, code, out)
	f.waitReady(3)
}

// TestWorkerAccessStatus: with control.worker_access = "status", a worker may read the status
// and nothing else.
func TestWorkerAccessStatus(t *testing.T) {
	t.Parallel()
	f, outs := forkctlFromWorker(t, 2, "  worker_access = \"status\"\n", "status -o json", "scale 1")
	assert.Contains(t, outs[0], `"master_pid"`)
	assert.Contains(t, outs[0], "exit=0")
	assert.Contains(t, outs[1], `may only read its status (control.worker_access = "status")`)
	assert.Contains(t, outs[1], "exit=1")
	assert.Equal(t, 2, f.waitReady(2).Workers)
}

// masterFDs counts the master's open descriptors; masterRSS reads its resident set, in bytes.
func masterFDs(t *testing.T, pid int) int {
	t.Helper()
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	require.NoError(t, err)
	return len(entries)
}

func masterRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			_, err := fmt.Sscan(rest, &kb)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// TestStalledControlClientsAreBounded: 1000 connections that send a request header and then stall
// in the body took a master from 17 to 1017 descriptors and 13 to 38 MB, and at its descriptor
// limit no worker could be respawned. Now every phase of a request is bounded, at most
// control.MaxConnections are open at once, and the last descriptors stay with supervision.
func TestStalledControlClientsAreBounded(t *testing.T) {
	t.Parallel()
	const stalled = 1000
	f := startForkd(t, options{config: worker() + "\nworkers = 4\n"})
	before := f.waitReady(4)
	master := f.cmd.Process.Pid
	fdsBefore, rssBefore := masterFDs(t, master), masterRSS(t, master)

	var closed atomic.Int32
	for range stalled {
		c, err := net.Dial("unix", f.socket)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		_, err = io.WriteString(c, "POST /v1/scale HTTP/1.1\r\nHost: forkd\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
		require.NoError(t, err)
		go func() {
			io.Copy(io.Discard, c)
			closed.Add(1)
		}()
	}
	waitUntil(t, "the master to have dealt with every stalled connection", func() bool {
		return closed.Load() >= stalled-control.MaxConnections
	})
	fdsDuring, rssDuring := masterFDs(t, master), masterRSS(t, master)
	t.Logf("master with %d stalled control connections: %d -> %d descriptors, RSS %.1f -> %.1f MB (race detector: %v)",
		stalled, fdsBefore, fdsDuring, float64(rssBefore)/(1<<20), float64(rssDuring)/(1<<20), raceEnabled)
	assert.LessOrEqual(t, fdsDuring, fdsBefore+control.MaxConnections+8, "descriptors")
	if !raceEnabled { // the race detector's shadow memory multiplies the master's RSS
		assert.Less(t, rssDuring-rssBefore, int64(12<<20), "RSS growth")
	}

	// A low limit, as under `ulimit -n 256`, which the flood must not have brought within reach:
	// a killed worker is respawned, and the operator is answered.
	lim := unix.Rlimit{Cur: 256, Max: 256}
	require.NoError(t, unix.Prlimit(master, unix.RLIMIT_NOFILE, &lim, nil))
	victim := before.WorkerList[1].PID
	require.NoError(t, syscall.Kill(victim, syscall.SIGKILL))
	f.waitFor("worker 1 respawned", func(st control.Status) bool {
		return st.Ready == 4 && !slices.Contains(workerPIDs(st), victim)
	})
	out, code := f.forkctl("status")
	require.Equal(t, 0, code, out)

	// And the stalled connections left end within the read timeout.
	waitUntil(t, "every stalled connection to be closed", func() bool { return closed.Load() == stalled })
}

// waitUntil polls cond until it holds, or fails the test after the deadline.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
