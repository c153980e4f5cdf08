package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
