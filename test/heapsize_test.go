package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// TestRubyHeapSizeCarriedToTheNextTemplate: forkd-rack's template reports the heap its app loaded
// (Ruby < 3.3: RUBY_GC_HEAP_INIT_SLOTS, nine tenths of its live objects), and the next worker 0
// forkd execs boots with it, a reload's and, across the hot restart's handover, a hot restart's:
// its process environment has the variable, and its heap, laid out before the app loaded, took far
// fewer collections to load the app than the first template's (docs/fork-safety.md, "Ruby's
// heap pages").
func TestRubyHeapSizeCarriedToTheNextTemplate(t *testing.T) {
	t.Parallel()
	requireRuby(t)
	lib, forkdRack := rubySDK(t)
	app, err := filepath.Abs("../sdk/ruby/test/apps/hookapp.ru")
	require.NoError(t, err)
	version, err := exec.Command("ruby", "-e", `print RUBY_VERSION`).Output()
	require.NoError(t, err)
	if v := string(version); v >= "3.3" {
		t.Skipf("Ruby %s sizes its heaps per size pool: forkd-rack reports nothing", v)
	}
	hookLog := filepath.Join(t.TempDir(), "hooks.log")
	f := startRuby(t, options{config: `
command = [` + quoteAll([]string{"ruby", "-I", lib, forkdRack, "--threads", "2", app}) + `]
env     = { HOOKAPP_OBJECTS = "600000", HOOK_LOG = "` + hookLog + `" }
workers = 2
` + forkWorkerBlock})
	first := f.waitReady(2)
	reported := f.waitFor("the template's heap size", func(st control.Status) bool { return st.HeapSize != nil })
	h := reported.HeapSize
	assert.Equal(t, "RUBY_GC_HEAP_INIT_SLOTS", h.Variable)
	assert.Equal(t, first.Generation, h.Generation)
	assert.True(t, h.Carried)
	assert.Greater(t, h.Value, uint64(500_000), "nine tenths of the 600,000 objects the app keeps and the rest it loads")
	assert.Less(t, h.Value, uint64(1_000_000))
	carried := h.Variable + "=" + strconv.FormatUint(h.Value, 10)

	out, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	reloaded := f.waitFor("the reload settled", func(st control.Status) bool {
		return len(st.WorkerList) == 2 && st.Ready == 2 && st.Generation == first.Generation+1
	})
	template := reloaded.WorkerList[0]
	assert.Equal(t, carried, envEntry(t, template.PID, h.Variable), "the reload's template boots with the size generation 1's reported")
	assert.Contains(t, f.output.String(), "worker 0 boots with "+carried+", carried from generation 1's template")
	firstGCs, carriedGCs := gcsBeforeFirstFork(t, hookLog, first.WorkerList[0].PID), gcsBeforeFirstFork(t, hookLog, template.PID)
	t.Logf("collections before the first fork: %d without the carried size, %d with it", firstGCs, carriedGCs)
	assert.Less(t, carriedGCs*2, firstGCs, "the carried size lays the heap out before the app loads: fewer collections")

	// It reports its own: the size follows the app from release to release.
	second := f.waitFor("generation 2's heap size", func(st control.Status) bool {
		return st.HeapSize != nil && st.HeapSize.Generation == reloaded.Generation
	}).HeapSize
	out, code = f.forkctl("restart", "--wait")
	require.Equal(t, 0, code, out)
	restarted := f.waitFor("the hot restart settled", func(st control.Status) bool {
		return st.Phase == control.PhaseRunning && len(st.WorkerList) == 2 && st.Ready == 2 && st.Generation > reloaded.Generation
	})
	assert.Equal(t, second.Variable+"="+strconv.FormatUint(second.Value, 10), envEntry(t, restarted.WorkerList[0].PID, second.Variable),
		"the hot restart's new image carries generation 2's size across the handover")
}

// envEntry is NAME=VALUE from a process's environment (/proc/PID/environ); "" when it has none.
func envEntry(t *testing.T, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	require.NoError(t, err)
	for _, kv := range strings.Split(string(b), "\x00") {
		if strings.HasPrefix(kv, name+"=") {
			return kv
		}
	}
	return ""
}

// gcsBeforeFirstFork is GC.count in the template pid when it first forked (hookapp's prepare1 hook,
// the last before the fork, after the SDK's readying): the app's load, and the readying's few.
func gcsBeforeFirstFork(t *testing.T, hookLog string, pid int) int {
	t.Helper()
	for _, e := range readHookLog(t, hookLog) {
		if e.PID == pid && e.Event == "prepare1" {
			return int(e.Data["gc"].(float64))
		}
	}
	t.Fatalf("template %d never forked", pid)
	return 0
}
