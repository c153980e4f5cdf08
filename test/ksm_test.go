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

	"github.com/forkd/forkd/internal/memsample"
	"github.com/forkd/forkd/pkg/control"
)

// ksmd sets the kernel's ksmd (/sys/kernel/mm/ksm) for one test: run ("1" or "0") and, when it
// runs, a fast scan, so that merging shows within seconds. Every value is restored when the test
// ends. It skips the test, saying why, where the files cannot be written (no KSM, not root, a
// read-only /sys).
func ksmd(t *testing.T, run string) {
	t.Helper()
	if _, err := os.Stat(memsample.KSMDir); err != nil {
		t.Skipf("this kernel has no KSM (%v)", err)
	}
	set := map[string]string{"run": run}
	if run == "1" {
		set["pages_to_scan"], set["sleep_millisecs"] = "4000", "10"
	}
	for _, name := range []string{"pages_to_scan", "sleep_millisecs", "run"} {
		value, ok := set[name]
		if !ok {
			continue
		}
		path := filepath.Join(memsample.KSMDir, name)
		saved, err := os.ReadFile(path)
		require.NoError(t, err)
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			t.Skipf("cannot set ksmd's %s, which this test needs: %v", path, err)
		}
		t.Cleanup(func() {
			if err := os.WriteFile(path, []byte(strings.TrimSpace(string(saved))), 0o644); err != nil {
				t.Errorf("restoring %s to %s: %v", path, saved, err)
			}
		})
	}
}

// ksmMerged sums what ksmd merged of the forked workers' pages in st.
func ksmMerged(st control.Status) (pages uint64) {
	for _, w := range st.WorkerList {
		if w.Forked && w.Memory != nil && w.Memory.KSM != nil {
			pages += w.Memory.KSM.MergingPages
		}
	}
	return pages
}

const ksmConfig = `
memory {
  sample_interval = "1s"
  ksm             = true
}
fork_worker {
  refork_after = []
}
`

// TestKSMMergesWorkersIdenticalPages: with memory.ksm and ksmd running, the workers' ballast,
// pages alike within each process and across them (GET /dirty writes one byte in each page, the
// same in every worker, so copy-on-write gives each worker its own copy of identical pages), is
// merged by ksmd, and forkctl status, its JSON and the metrics show it. Without memory.ksm the same
// workers merge nothing (the test's check that the merging is forkd's doing).
func TestKSMMergesWorkersIdenticalPages(t *testing.T) {
	requirePython(t)
	ksmd(t, "1")
	for _, ksm := range []bool{true, false} {
		t.Run(fmt.Sprintf("ksm=%t", ksm), func(t *testing.T) { ksmMergesWorkers(t, ksm) })
	}
}

func ksmMergesWorkers(t *testing.T, ksm bool) {
	{
		config := ksmConfig
		if !ksm {
			config = strings.Replace(config, "ksm             = true", "ksm             = false", 1)
		}
		f := startPython(t, options{config: pythonApp(t, 3, map[string]string{"TESTAPP_ALLOC_MB": "16"}, config)})
		f.waitReady(3)
		url := "http://" + f.addr()
		// New connections, so each worker gets its share; each writes its whole ballast.
		for range 12 {
			get(t, url+"/dirty?mb=16")
		}
		if !ksm {
			time.Sleep(3 * time.Second) // ksmd scans 4000 pages per 10 ms: ample for 3 x 16 MiB
			st := f.status()
			assert.Empty(t, st.KSM)
			assert.Zero(t, ksmMerged(st), "without memory.ksm nothing is merged")
			out, code := f.forkctl("status")
			require.Zero(t, code, out)
			assert.NotContains(t, out, "KSM")
			return
		}
		st := f.waitFor("merged pages in the forked workers", func(st control.Status) bool { return ksmMerged(st) > 1000 })
		assert.Equal(t, "on", st.KSM)
		for _, w := range st.WorkerList {
			require.NotNil(t, w.Memory, "worker %d", w.Index)
			require.NotNil(t, w.Memory.KSM, "worker %d", w.Index)
			assert.True(t, w.Memory.KSM.MergeAny, "worker %d is opted in whole (ksm_merge_any)", w.Index)
		}
		t.Logf("forked workers' merged pages: %d", ksmMerged(st))

		out, code := f.forkctl("status")
		require.Zero(t, code, out)
		t.Logf("forkctl status:\n%s", out)
		assert.Contains(t, out, "ksm:")
		assert.Contains(t, out, "KSM")
		assert.NotContains(t, out, "merging nothing")
		metrics := f.scrapeControlSocket()
		assert.Contains(t, metrics, "forkd_worker_ksm_merging_pages{")
		assert.Contains(t, metrics, "forkd_worker_ksm_profit_bytes{")
		assert.NotContains(t, f.output.String(), "ksmd is not running")
	}
}

// TestKSMWithKsmdOff: with memory.ksm but ksmd stopped, forkd says so once, with the command
// that starts it, and the workers run (opted in, merging nothing until ksmd runs).
func TestKSMWithKsmdOff(t *testing.T) {
	requirePython(t)
	ksmd(t, "0")
	f := startPython(t, options{config: pythonApp(t, 2, nil, ksmConfig)})
	f.waitReady(2)
	get(t, "http://"+f.addr())
	assert.Equal(t, 1, strings.Count(f.output.String(), memsample.KSMDaemonOff), "said once:\n%s", f.output.String())
	assert.Contains(t, f.output.String(), "echo 1 > /sys/kernel/mm/ksm/run")
	st := f.status()
	assert.Equal(t, "on, merging nothing: "+memsample.KSMDaemonOff, st.KSM)
	out, code := f.forkctl("status")
	require.Zero(t, code, out)
	assert.Contains(t, out, "merging nothing")
}

// TestKSMSurvivesAHotRestart: a hot restart that keeps the workers hands the way they are started
// to the new image, memory.ksm included, so a worker that respawns afterwards is opted in too
// (FORKD_KSM=1, which makes the shim call prctl(PR_SET_MEMORY_MERGE) before it execs the app).
// The handover once dropped it: the template that replaced a crashed one ran without KSM.
func TestKSMSurvivesAHotRestart(t *testing.T) {
	requirePython(t)
	f := startPython(t, options{config: pythonApp(t, 2, nil, ksmConfig)})
	st := f.waitReady(2)
	require.Equal(t, "FORKD_KSM=1", envEntry(t, st.WorkerList[0].PID, "FORKD_KSM"), "before the restart")

	out, code := f.forkctl("restart", "--keep-workers", "--wait")
	require.Equal(t, 0, code, out)
	old := st.WorkerList[0].PID
	require.NoError(t, syscall.Kill(old, syscall.SIGKILL))
	st = f.waitFor("worker 0 respawned", func(st control.Status) bool {
		return st.Ready == 2 && len(st.WorkerList) == 2 && st.WorkerList[0].PID != old && st.WorkerList[0].PID != 0
	})
	assert.Equal(t, "FORKD_KSM=1", envEntry(t, st.WorkerList[0].PID, "FORKD_KSM"),
		"the template exec'd after a hot restart keeps memory.ksm\n%s", f.output.String())
}
