package test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// This file tests fork_worker.refork_from = "warmest": worker 0 is a template that serves
// nothing, and a refork forks the new template (a mold) from the serving worker that served the
// most.

const moldBlock = `
fork_worker {
  refork_from  = "warmest"
  refork_after = []
  timeout      = "10s"
}
`

// TestMoldReforkFallsBackToTheTemplate runs an SDK that does not know the mold op (it answers
// error, as the protocol asks of any unknown op): the refork forks the serving workers from the
// template as it is, and says why once, not at every refork.
func TestMoldReforkFallsBackToTheTemplate(t *testing.T) {
	t.Parallel()
	requirePython(t)
	f := startPython(t, options{config: pythonApp(t, 2, map[string]string{"TESTAPP_NO_MOLD": "1"}, moldBlock)})
	before := f.waitFor("the template and 2 serving workers", func(st control.Status) bool {
		return st.Phase == control.PhaseRunning && st.Ready == 2 && st.Workers == 2 && len(st.WorkerList) == 3
	})
	require.True(t, before.WorkerList[0].Template && before.WorkerList[0].NonServing, "worker 0 is a template that serves nothing: %+v", before.WorkerList[0])
	assert.Equal(t, "2/2 workers ready, generation 1", before.StatusLine, "the status line counts the serving workers")
	for _, w := range before.WorkerList[1:] {
		assert.False(t, w.NonServing, "worker %d serves", w.Index)
	}

	for gen := 2; gen <= 3; gen++ {
		out, code := f.forkctl("refork", "--wait")
		require.Equal(t, 0, code, out)
		after := f.waitFor("the refork settled", func(st control.Status) bool {
			return st.Generation == gen && st.Ready == 2 && len(st.WorkerList) == 3
		})
		assert.Equal(t, before.WorkerList[0].PID, after.WorkerList[0].PID, "the template stays")
		assert.Nil(t, after.WorkerList[0].MoldOf, "no mold made it")
		for _, w := range after.WorkerList[1:] {
			assert.Equal(t, gen, w.Generation)
			assert.Equal(t, f.cmd.Process.Pid, parentOf(t, w.PID), "worker %d is the master's child", w.Index)
		}
	}
	assert.Equal(t, 1, strings.Count(f.output.String(), "cannot fork a mold"), "the fallback is said once:\n%s", f.output.String())
}
