package test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// forkedPrivate sums the Private_Dirty of the forked workers in st.
func forkedPrivate(st control.Status) uint64 {
	var sum uint64
	for _, w := range st.WorkerList {
		if w.Forked && w.Memory != nil && !w.Detached && !w.Replacement {
			sum += w.Memory.PrivateDirty
		}
	}
	return sum
}

// TestReforkOnDecayFiresOnceOnDirtiedMemory: the app's workers write their copy-on-write ballast on
// request (GET /dirty), so their private memory grows; refork_on_decay reforks once it has grown
// by private_growth, which wins the memory back, and then not again while the workers only serve
// requests that write nothing lasting.
func TestReforkOnDecayFiresOnceOnDirtiedMemory(t *testing.T) {
	t.Parallel()
	const minInterval = 4 * time.Second
	f := startPython(t, options{config: pythonApp(t, 3, map[string]string{"TESTAPP_ALLOC_MB": "64"}, `
memory {
  sample_interval = "1s"
}
fork_worker {
  refork_after = []
  refork_on_decay {
    private_growth = "24M"
    min_interval   = "4s"
  }
}
`)})
	f.waitReady(3)
	st := f.waitFor("the trigger's baseline", func(st control.Status) bool {
		return st.ReforkOnDecay != nil && st.ReforkOnDecay.Measured
	})
	require.Equal(t, 2, st.ReforkOnDecay.Workers, "the forked workers are watched, not the template")
	baseline := st.ReforkOnDecay.Baseline

	url := "http://" + f.addr()
	client := &http.Client{Timeout: 10 * time.Second}
	end := time.Now().Add(deadline)
	var dirtied control.Status
	for st = f.status(); st.Generation == 1; st = f.status() {
		require.True(t, time.Now().Before(end), "no refork; trigger %+v", st.ReforkOnDecay)
		dirtied = st
		resp, err := client.Get(url + "/dirty?mb=4")
		require.NoError(t, err)
		resp.Body.Close()
	}
	require.Greater(t, forkedPrivate(dirtied), baseline+16<<20, "the workers' private memory had grown before the refork")
	assert.Contains(t, f.output.String(), "(refork_on_decay, threshold")
	assert.Contains(t, f.output.String(), "automatic refork to generation 2")

	after := f.waitFor("the baseline after the refork", func(st control.Status) bool {
		return st.Generation == 2 && st.Rollout == "" && st.ReforkOnDecay.Measured
	})
	assert.Less(t, after.ReforkOnDecay.Baseline, forkedPrivate(dirtied)-12<<20, "the refork won the private memory back")
	assert.Zero(t, after.ReforkOnDecay.Fruitless)
	t.Logf("forked workers' Private_Dirty: baseline %d MiB, %d MiB before the refork, %d MiB after it (threshold then %d MiB)",
		baseline>>20, forkedPrivate(dirtied)>>20, after.ReforkOnDecay.Baseline>>20, after.ReforkOnDecay.Threshold>>20)

	// Requests that write nothing lasting, for several min_intervals: no second refork.
	for quiet := time.Now().Add(3 * minInterval); time.Now().Before(quiet); {
		get(t, url)
		time.Sleep(20 * time.Millisecond)
	}
	st = f.status()
	assert.Equal(t, 2, st.Generation, "no refork without new decay; trigger %+v", st.ReforkOnDecay)
	assert.Equal(t, 1, strings.Count(f.output.String(), "(refork_on_decay, threshold"), "one refork_on_decay refork")

	out, code := f.forkctl("status")
	require.Equal(t, 0, code, out)
	assert.Regexp(t, `refork on decay: +\d+\.\d\dx: .* private in 2 forked workers, baseline .*, refork at `, out)
	assert.Contains(t, out, "PRIVATE")
}
