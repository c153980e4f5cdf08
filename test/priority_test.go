package test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/config"
	"github.com/forkd/forkd/pkg/control"
)

// This file tests fork_worker.refork_nice: while a refork runs, the serving workers it replaces
// run at a lower CPU priority, every thread of them, and get it back when the refork fails. The
// refork is held in the template's before_refork hook (test/moldrack's MOLDRACK_HOLD_REFORK)
// until the test creates a file, so that the test reads the threads' nice values from
// /proc/PID/task/*/stat while it is under way.

// niceRack is the config body running test/moldrack under forkd-rack with n serving workers,
// its refork held until hold exists; more goes into the fork_worker block.
func niceRack(t *testing.T, n int, hold, more string) string {
	t.Helper()
	lib, forkdRack := rubySDK(t)
	dir, err := filepath.Abs("moldrack")
	require.NoError(t, err)
	return fmt.Sprintf(`
command   = [%s]
directory = %q
env       = { MOLDRACK_HOLD_REFORK = %q }
workers   = %d
fork_worker {
  refork_after = []
  timeout      = "60s"
%s}
`, quoteAll([]string{"ruby", "-I", lib, forkdRack, "--threads", "4", "config.ru"}), dir, hold, n, more)
}

// threadNices reads the nice value of each of pid's threads (field 19 of /proc/PID/task/TID/stat);
// nil once the process is gone.
func threadNices(pid int) map[int]int {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	nices := map[int]int{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "stat"))
		if err != nil {
			continue // the thread ended
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		tid, _ := strconv.Atoi(e.Name())
		nices[tid], _ = strconv.Atoi(fields[16])
	}
	return nices
}

// allAt reports whether each of pids runs every thread at nice, with at least minThreads of them.
func allAt(pids []int, nice, minThreads int) bool {
	for _, pid := range pids {
		nices := threadNices(pid)
		if len(nices) < minThreads {
			return false
		}
		for _, n := range nices {
			if n != nice {
				return false
			}
		}
	}
	return true
}

// describeNices says each of pids' threads' nice values, for a failure's message.
func describeNices(pids []int) string {
	var parts []string
	for _, pid := range pids {
		nices := threadNices(pid)
		tids := make([]int, 0, len(nices))
		for tid := range nices {
			tids = append(tids, tid)
		}
		sort.Ints(tids)
		vals := make([]string, len(tids))
		for i, tid := range tids {
			vals[i] = fmt.Sprintf("%d:%d", tid, nices[tid])
		}
		parts = append(parts, fmt.Sprintf("pid %d [%s]", pid, strings.Join(vals, " ")))
	}
	return strings.Join(parts, "; ")
}

// busyThreads has every serving worker run several of Puma's threads at once (its pool grows on
// demand): concurrent slow requests, on connections of their own so that the kernel spreads them.
func busyThreads(t *testing.T, f *forkd) {
	t.Helper()
	c := &http.Client{Timeout: deadline, Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://" + f.addr() + "/slow?ms=300"
	var wg sync.WaitGroup
	for range 24 {
		wg.Go(func() {
			resp, err := c.Get(url)
			if assert.NoError(t, err) {
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
}

// servingPIDs lists the current serving workers of generation gen (the template aside).
func servingPIDs(st control.Status, gen int) []int {
	var pids []int
	for _, w := range st.WorkerList {
		if !w.Template && !w.NonServing && !w.Replacement && !w.Detached && w.Generation == gen && w.PID != 0 {
			pids = append(pids, w.PID)
		}
	}
	return pids
}

// startRefork runs forkctl refork --wait in the background; its exit code comes on the channel.
func startRefork(f *forkd) <-chan int {
	done := make(chan int, 1)
	go func() {
		out, code := f.forkctl("refork", "--wait")
		f.t.Logf("forkctl refork --wait: exit %d: %s", code, strings.TrimSpace(out))
		done <- code
	}()
	return done
}

// TestReforkNiceLowersTheReplacedWorkers holds a refork in template mode: while it waits, every
// thread of the workers it replaces runs config.DefaultReforkNice (19) nice steps lower, the template's do
// not; the new workers run at 0. Then a refork held the same way fails (the template is killed):
// the old workers, which go on serving, run every thread at 0 again.
func TestReforkNiceLowersTheReplacedWorkers(t *testing.T) {
	t.Parallel()
	requireRuby(t)
	const n = 3
	hold := filepath.Join(t.TempDir(), "release")
	f := startRuby(t, options{config: niceRack(t, n, hold, "")})
	ready := func(gen int) control.Status {
		return f.waitFor(fmt.Sprintf("%d workers of generation %d", n, gen), func(st control.Status) bool {
			return st.Phase == control.PhaseRunning && st.Generation == gen && st.Ready == n && len(st.WorkerList) == n
		})
	}
	st := ready(1)
	tmpl := st.WorkerList[0].PID
	busyThreads(t, f)
	old := servingPIDs(st, 1)
	require.Len(t, old, n-1)
	require.True(t, allAt(append(old, tmpl), 0, 2), "before the refork: %s", describeNices(append(old, tmpl)))

	done := startRefork(f)
	waitUntil(t, "the replaced workers' threads at the default refork_nice", func() bool { return allAt(old, config.DefaultReforkNice, 2) })
	assert.True(t, allAt([]int{tmpl}, 0, 1), "the template, which readies and forks, is not lowered: %s", describeNices([]int{tmpl}))
	require.NoError(t, os.WriteFile(hold, nil, 0o644))
	require.Equal(t, 0, <-done, "the refork succeeds")
	st = ready(2)
	fresh := servingPIDs(st, 2)
	require.Len(t, fresh, n-1)
	assert.True(t, allAt(append(fresh, tmpl), 0, 1), "the new workers and the template: %s", describeNices(append(fresh, tmpl)))

	// A refork that fails: the old workers keep serving, at their own priority again.
	require.NoError(t, os.Remove(hold))
	busyThreads(t, f)
	done = startRefork(f)
	waitUntil(t, "the replaced workers' threads at the default refork_nice", func() bool { return allAt(fresh, config.DefaultReforkNice, 2) })
	waitUntil(t, "the template to hold the refork", func() bool {
		return strings.Count(f.output.String(), fmt.Sprintf("refork held by pid=%d", tmpl)) == 2
	})
	require.NoError(t, syscall.Kill(tmpl, syscall.SIGKILL))
	assert.NotEqual(t, 0, <-done, "the refork fails without its template")
	waitUntil(t, "the old workers' threads back at nice 0", func() bool { return allAt(fresh, 0, 2) })
	st = f.waitFor("the old workers serving, and a new template", func(st control.Status) bool {
		return st.Ready == n && len(st.WorkerList) == n && st.WorkerList[0].PID != tmpl
	})
	assert.ElementsMatch(t, fresh, servingPIDs(st, 2), "the old workers go on serving")
	assert.NotContains(t, f.output.String(), "refork_nice is off")
}

// TestReforkNiceInMoldMode does the same with refork_from = "warmest": the workers are lowered
// once the mold exists (it inherits its source's priority at its fork, so the source is lowered
// after it), the mold is not; after a refork whose mold is killed before it is ready, the old
// workers run at 0 again.
func TestReforkNiceInMoldMode(t *testing.T) {
	t.Parallel()
	requireRuby(t)
	const n = 3
	hold := filepath.Join(t.TempDir(), "release")
	require.NoError(t, os.WriteFile(hold, nil, 0o644)) // mold mode's worker 0 readies itself at boot
	f := startRuby(t, options{config: niceRack(t, n, hold, "  refork_from = \"warmest\"\n")})
	st := waitMoldCluster(t, f, n, 1)
	busyThreads(t, f)
	old := servingPIDs(st, 1)
	require.Len(t, old, n)

	mold := func() int {
		for _, w := range f.status().WorkerList {
			if w.Index == 0 && w.Replacement && w.PID != 0 {
				return w.PID
			}
		}
		return 0
	}
	require.NoError(t, os.Remove(hold))
	done := startRefork(f)
	var m int
	waitUntil(t, "the mold, held in its before_refork", func() bool {
		m = mold()
		return m != 0 && strings.Contains(f.output.String(), fmt.Sprintf("refork held by pid=%d", m))
	})
	waitUntil(t, "the replaced workers' threads at the default refork_nice", func() bool { return allAt(old, config.DefaultReforkNice, 2) })
	assert.True(t, allAt([]int{m, st.WorkerList[0].PID}, 0, 1), "the mold and the old template are not lowered: %s",
		describeNices([]int{m, st.WorkerList[0].PID}))
	require.NoError(t, os.WriteFile(hold, nil, 0o644))
	require.Equal(t, 0, <-done, "the refork succeeds")
	st = waitMoldCluster(t, f, n, 2)
	require.Equal(t, m, st.WorkerList[0].PID, "the mold is the template")
	fresh := servingPIDs(st, 2)
	require.Len(t, fresh, n)
	assert.True(t, allAt(append(fresh, m), 0, 1), "the new workers and the template: %s", describeNices(append(fresh, m)))

	// A refork whose mold dies before it is ready fails: the old workers run at 0 again.
	require.NoError(t, os.Remove(hold))
	busyThreads(t, f)
	done = startRefork(f)
	var m2 int
	waitUntil(t, "the second mold, held", func() bool {
		m2 = mold()
		return m2 != 0 && strings.Contains(f.output.String(), fmt.Sprintf("refork held by pid=%d", m2))
	})
	waitUntil(t, "the replaced workers' threads at the default refork_nice", func() bool { return allAt(fresh, config.DefaultReforkNice, 2) })
	require.NoError(t, syscall.Kill(m2, syscall.SIGKILL))
	assert.NotEqual(t, 0, <-done, "the refork fails without its mold")
	waitUntil(t, "the old workers' threads back at nice 0", func() bool { return allAt(fresh, 0, 2) })
	st = waitMoldCluster(t, f, n, 2)
	assert.Equal(t, m, st.WorkerList[0].PID, "the template stays")
	assert.ElementsMatch(t, fresh, servingPIDs(st, 2), "the old workers go on serving")
}

// TestReforkNiceOffWithoutCapSysNice runs forkd as nobody, without CAP_SYS_NICE and with an
// RLIMIT_NICE of 0, so it could not raise a worker's priority back: it lowers nothing, and says
// why once.
func TestReforkNiceOffWithoutCapSysNice(t *testing.T) {
	t.Parallel()
	requireRuby(t)
	var lim syscall.Rlimit
	require.NoError(t, syscall.Getrlimit(0xd /* RLIMIT_NICE */, &lim))
	if lim.Cur >= 20 {
		t.Skipf("RLIMIT_NICE is %d: nobody could raise a nice value back", lim.Cur)
	}
	const n = 2
	dir := t.TempDir()
	require.NoError(t, os.Chmod(dir, 0o755))
	hold := filepath.Join(dir, "release")
	f := startRuby(t, options{config: niceRack(t, n, hold, ""), asNobody: true})
	st := f.waitFor("the workers", func(st control.Status) bool {
		return st.Phase == control.PhaseRunning && st.Ready == n && len(st.WorkerList) == n
	})
	busyThreads(t, f)
	old := servingPIDs(st, 1)
	done := startRefork(f)
	waitUntil(t, "the template to hold the refork", func() bool { return strings.Contains(f.output.String(), "refork held by pid=") })
	waitUntil(t, "forkd to say why refork_nice is off", func() bool {
		return strings.Contains(f.output.String(), "fork_worker.refork_nice is off")
	})
	assert.True(t, allAt(old, 0, 2), "nothing is lowered: %s", describeNices(old))
	require.NoError(t, os.WriteFile(hold, nil, 0o644))
	require.Equal(t, 0, <-done)
	out, code := f.forkctl("refork", "--wait")
	require.Equal(t, 0, code, out)
	assert.Equal(t, 1, strings.Count(f.output.String(), "fork_worker.refork_nice is off"), "said once:\n%s", f.output.String())
	assert.Contains(t, f.output.String(), "CAP_SYS_NICE")
}
