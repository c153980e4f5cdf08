package test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/internal/proctest"
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
// template as it is, and says why once, not at every refork; a reload's warm-up forks them from
// its new template.
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

	// A reload under traffic warms a new serving worker up (the default warm_up), whose SDK cannot
	// fork the mold either: the others are forked from the new template as it is, and the reload
	// succeeds.
	stop := trickle(t, "http://"+f.addr()+"/", 0)
	f.waitFor("a request count reported", func(st control.Status) bool { return st.WorkerList[1].Requests+st.WorkerList[2].Requests > 0 })
	out, code := f.forkctl("reload", "--wait")
	stop()
	require.Equal(t, 0, code, out)
	after := f.waitFor("the reload settled", func(st control.Status) bool {
		return st.Generation == 4 && st.Ready == 2 && len(st.WorkerList) == 3
	})
	assert.Nil(t, after.WorkerList[0].MoldOf, "no mold made it")
	log := f.output.String()
	assert.Contains(t, log, "reload: the new worker 1 warms up, then forks the new template (a mold)")
	assert.Regexp(t, `reload: no mold \(worker 1 cannot fork one, its SDK answered: [^)]*\): forking the others from the new template as it is`, log)
	for _, w := range after.WorkerList[1:] {
		assert.Equal(t, 4, w.Generation)
	}
}

// moldRack is the config body running test/moldrack under forkd-rack in mold mode, with n
// serving workers.
func moldRack(t *testing.T, n int, env map[string]string) string {
	t.Helper()
	return moldrackConfig(t, n, env, moldBlock)
}

// moldrackConfig is the config body running test/moldrack under forkd-rack with n workers and
// the fork_worker block given.
func moldrackConfig(t *testing.T, n int, env map[string]string, forkWorker string) string {
	t.Helper()
	lib, forkdRack := rubySDK(t)
	dir, err := filepath.Abs("moldrack")
	require.NoError(t, err)
	vars := []string{}
	for k, v := range env {
		vars = append(vars, fmt.Sprintf("%s = %q", k, v))
	}
	sort.Strings(vars)
	return fmt.Sprintf(`
command   = [%s]
directory = %q
env       = { %s }
workers   = %d
%s
`, quoteAll([]string{"ruby", "-I", lib, forkdRack, "--threads", "4", "config.ru"}), dir, strings.Join(vars, ", "), n, forkWorker)
}

// waitMoldCluster waits for the template and n ready serving workers of generation gen, none
// draining, and checks that the template serves nothing and is the master's child.
func waitMoldCluster(t *testing.T, f *forkd, n, gen int) control.Status {
	t.Helper()
	st := f.waitFor(fmt.Sprintf("the template and %d serving workers of generation %d", n, gen), func(st control.Status) bool {
		return st.Phase == control.PhaseRunning && st.Generation == gen && st.Ready == n && st.Workers == n && len(st.WorkerList) == n+1
	})
	tmpl := st.WorkerList[0]
	require.True(t, tmpl.Template && tmpl.NonServing, "worker 0 is a template that serves nothing: %+v", tmpl)
	assert.Equal(t, f.cmd.Process.Pid, parentOf(t, tmpl.PID), "the template is the master's child")
	return st
}

// bodyOf asks url on a connection of its own (so that the kernel may give it to any worker).
func bodyOf(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: deadline, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	return strings.TrimSpace(string(b))
}

// TestMoldReforkFromTheWarmestWorker sends one keep-alive client's requests, so that one serving
// worker serves far more than the others and marks its heap (test/moldrack: on its 20th
// request), then reforks: the new template is a mold of that worker (the status says so, and it
// is the master's child), and every new worker is forked from it, since each answers with that
// worker's mark. Reforked from the template instead, they would say "warm=none". The mold stays
// the template across a hot restart that keeps the workers; a reload, and a hot restart that
// replaces them, exec a new one (without traffic, their warm-up has nothing to make a mold of:
// TestMoldReloadWarmsAServingWorkerUp has the one under traffic), and the next refork forks a mold
// again.
func TestMoldReforkFromTheWarmestWorker(t *testing.T) {
	t.Parallel()
	requireRuby(t)
	const n = 3
	f := startRuby(t, options{config: moldRack(t, n, nil)})
	tmpl := reforkFromTheWarmest(t, f, n)

	out, code := f.forkctl("restart", "--keep-workers", "--wait")
	require.Equal(t, 0, code, out)
	st := waitMoldCluster(t, f, n, 2)
	assert.Equal(t, tmpl.PID, st.WorkerList[0].PID, "the adopted mold is the template")
	assert.Equal(t, tmpl.MoldOf, st.WorkerList[0].MoldOf, "and says where it came from")

	out, code = f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	st = waitMoldCluster(t, f, n, 3)
	assert.Nil(t, st.WorkerList[0].MoldOf, "an idle reload's template is exec'd")
	assert.False(t, st.WorkerList[0].Forked)

	// A hot restart's phased restart, likewise, then a refork from the warmest again.
	out, code = f.forkctl("restart", "--wait")
	require.Equal(t, 0, code, out)
	st = waitMoldCluster(t, f, n, 4)
	assert.Nil(t, st.WorkerList[0].MoldOf, "an idle hot restart's template is exec'd")
	out, code = f.forkctl("refork", "--wait")
	require.Equal(t, 0, code, out)
	st = waitMoldCluster(t, f, n, 5)
	assert.NotNil(t, st.WorkerList[0].MoldOf, "the next refork forks a mold again")
}

// TestGunicornMoldReforkFromTheWarmestWorker is the same with forkd.gunicorn (gthread) and
// test/testapp's /warm.
func TestGunicornMoldReforkFromTheWarmestWorker(t *testing.T) {
	t.Parallel()
	requirePython(t)
	const n = 2
	f := startPython(t, options{config: pythonApp(t, n, nil, moldBlock)})
	reforkFromTheWarmest(t, f, n)
}

// reforkFromTheWarmest makes one of f's n serving workers the busiest (one keep-alive client),
// reforks, and checks that the new template is a mold of it and that the new workers were forked
// from it. It returns the new template.
func reforkFromTheWarmest(t *testing.T, f *forkd, n int) control.Worker {
	t.Helper()
	before := waitMoldCluster(t, f, n, 1)
	url := "http://" + f.addr() + "/warm"

	// One keep-alive connection: every request goes to the worker that accepted it.
	c := &http.Client{Timeout: deadline, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	var busy string
	for i := range 60 {
		resp, err := c.Get(url)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		fields := strings.Fields(string(b))
		if i == 0 {
			busy = strings.TrimPrefix(fields[0], "pid=")
		}
		require.Equal(t, "pid="+busy, fields[0], "the keep-alive connection stays with one worker")
	}
	busyPID, err := strconv.Atoi(busy)
	require.NoError(t, err)
	require.NotEqual(t, before.WorkerList[0].PID, busyPID, "the template serves nothing")
	f.waitFor("the busy worker's requests reported", func(st control.Status) bool {
		for _, w := range st.WorkerList {
			if w.PID == busyPID {
				return w.Requests >= 60
			}
		}
		return false
	})

	out, code := f.forkctl("refork", "--wait")
	require.Equal(t, 0, code, out)
	after := waitMoldCluster(t, f, n, 2)
	tmpl := after.WorkerList[0]
	assert.NotEqual(t, before.WorkerList[0].PID, tmpl.PID, "a new template")
	require.NotNil(t, tmpl.MoldOf, "the template says where it was forked from: %+v", tmpl)
	assert.Equal(t, busyPID, tmpl.MoldOf.PID, "the mold was forked from the busiest worker")
	assert.GreaterOrEqual(t, tmpl.MoldOf.Requests, uint64(60))
	statusOut, code := f.forkctl("status")
	require.Equal(t, 0, code, statusOut)
	assert.Contains(t, statusOut, fmt.Sprintf("serves nothing; forked from worker %d, pid %d", tmpl.MoldOf.Index, busyPID))

	// Every new worker answers with the busy worker's mark: they were forked from its heap.
	for pid, mark := range heapMarks(t, url, after.WorkerList[1:]) {
		assert.Equal(t, "warm=pid-"+busy, mark, "worker %s was forked from the mold of pid %s", pid, busy)
	}
	return tmpl
}

// heapMarks asks url on new connections until each of workers has answered, and returns the heap
// mark each answered with (test/moldrack: "warm=..."), by "pid=<pid>".
func heapMarks(t *testing.T, url string, workers []control.Worker) map[string]string {
	t.Helper()
	want := map[int]bool{}
	for _, w := range workers {
		want[w.PID] = true
	}
	marks := map[string]string{}
	for end := time.Now().Add(deadline); len(marks) < len(want); {
		require.True(t, time.Now().Before(end), "not every new worker answered: %v", marks)
		fields := strings.Fields(bodyOf(t, url))
		pid, err := strconv.Atoi(strings.TrimPrefix(fields[0], "pid="))
		require.NoError(t, err)
		if want[pid] {
			marks[fields[0]] = fields[1]
		}
	}
	return marks
}

// TestMoldReforkDoesNotWaitForASlowRequest holds a request in flight (curl) on a serving worker
// until the test releases it: forkctl refork --wait returns while it is held, so the refork
// waited neither for it nor for the worker that serves it to drain; then the request completes
// with 200. Meanwhile Node's http client, which never retries, sends requests throughout, and
// every status read during the refork shows every serving worker ready.
func TestMoldReforkDoesNotWaitForASlowRequest(t *testing.T) {
	t.Parallel()
	reforkPastASlowRequest(t, true)
}

// TestTemplateReforkDoesNotWaitForASlowRequest is the same in template mode (the default), with
// the request held on a worker other than worker 0, the template, which pauses for the refork and
// so waits for its own requests in flight: the old worker that holds it drains on its own, and
// the refork, which forks its replacement and then the next worker's, does not wait for it.
// Before the old workers drained detached in this mode too, max_surge counted that old worker
// until it exited, and the refork waited for the held request.
func TestTemplateReforkDoesNotWaitForASlowRequest(t *testing.T) {
	t.Parallel()
	reforkPastASlowRequest(t, false)
}

const templateBlock = `
fork_worker {
  refork_after = []
  timeout      = "10s"
}
`

func reforkPastASlowRequest(t *testing.T, mold bool) {
	requireRuby(t)
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	n, block := 2, moldBlock
	if !mold {
		n, block = 3, templateBlock // worker 0 and two others, to hold a request on
	}
	f := startRuby(t, options{config: moldrackConfig(t, n, nil, block)})
	settled := func(gen int) control.Status {
		if mold {
			return waitMoldCluster(t, f, n, gen)
		}
		return f.waitFor(fmt.Sprintf("%d workers of generation %d", n, gen), func(st control.Status) bool {
			return st.Phase == control.PhaseRunning && st.Generation == gen && st.Ready == n && len(st.WorkerList) == n
		})
	}
	template := settled(1).WorkerList[0].PID
	base := "http://" + f.addr()

	// The held request, on a worker that serves and is not the template (in template mode, the
	// template finishes its requests in flight before it forks: a request held there is one the
	// refork must wait for).
	var heldDone chan error
	var heldOut *proctest.Output
	var release string
	for try := 1; ; try++ {
		require.LessOrEqual(t, try, 20, "every held request landed on the template")
		release = filepath.Join(t.TempDir(), "release")
		heldOut = &proctest.Output{}
		held := exec.Command(curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "120", base+"/hold?until="+release)
		held.Stdout = heldOut
		require.NoError(t, held.Start())
		heldDone = make(chan error, 1)
		go func() { heldDone <- held.Wait() }()
		t.Cleanup(func() { held.Process.Kill() })
		var by string
		for end := time.Now().Add(deadline); by == ""; {
			if all := heldByRE.FindAllStringSubmatch(f.output.String(), -1); len(all) >= try {
				by = all[try-1][1]
			}
			require.True(t, time.Now().Before(end), "try %d: no request held:\n%s", try, f.output.String())
			time.Sleep(20 * time.Millisecond)
		}
		if by != strconv.Itoa(template) {
			break
		}
		require.NoError(t, os.WriteFile(release, nil, 0o644)) // on the template: let it go, try again
		<-heldDone
	}

	served := func(st control.Status) (n uint64) {
		for _, w := range st.WorkerList {
			n += w.Requests
		}
		return n
	}
	start := served(f.status())
	node := startNode(t, base+"/", 4)
	f.waitFor("node's requests served", func(st control.Status) bool { return served(st) >= start+200 })
	stopPolling := pollReady(f, n, nil)

	out, code := f.forkctl("refork", "--wait")
	polls, minReady := stopPolling()
	require.Equal(t, 0, code, out)
	select {
	case err := <-heldDone:
		t.Fatalf("the held request ended (%v, %s) before the refork returned", err, heldOut.String())
	default:
	}
	require.NoError(t, os.WriteFile(release, nil, 0o644))
	select {
	case err := <-heldDone:
		require.NoError(t, err)
	case <-time.After(deadline):
		t.Fatal("the held request did not complete once released")
	}
	assert.Equal(t, "200", heldOut.String(), "the held request completes")
	// Node goes on against the new workers while the old ones drain.
	after := served(settled(2))
	f.waitFor("node's requests to the new workers", func(st control.Status) bool { return served(st) >= after+200 })
	r := node.stop()
	t.Logf("refork: %d status polls, at least %d of %d workers ready; node %d ok, %d failed %v", polls, minReady, n, r.OK, r.failed(), r.Samples)
	assert.Greater(t, polls, 0)
	assert.Equal(t, n, minReady, "every worker ready throughout the refork (in template mode, worker 0 paused)")
	assert.Greater(t, r.OK, 0, "node ran")
	assert.Zero(t, r.failed(), "node's failed requests: %v", r.Samples)
}

var heldByRE = regexp.MustCompile(`held by pid=(\d+)`)

// TestMoldGetsACgroupOfSlotZero: with a cgroup per worker, the mold, born in its source's
// cgroup, is moved to one of slot 0's own, and the workers forked from it to their slots'.
func TestMoldGetsACgroupOfSlotZero(t *testing.T) {
	t.Parallel()
	requireRuby(t)
	_, fd := cgroupForForkd(t)
	const n = 2
	f := startRuby(t, options{cgroupFD: fd, config: moldRack(t, n, nil)})
	waitMoldCluster(t, f, n, 1)
	out, code := f.forkctl("refork", "--wait")
	require.Equal(t, 0, code, out)
	st := waitMoldCluster(t, f, n, 2)
	require.NotNil(t, st.WorkerList[0].MoldOf)
	for _, w := range st.WorkerList {
		assert.Regexp(t, fmt.Sprintf(`^worker-%d-\d+$`, w.Index), cgroupOfPID(w.PID), "worker %d (pid %d)'s cgroup", w.Index, w.PID)
	}
}

// TestMoldReloadWarmsAServingWorkerUp: with a warm_up in mold mode, a reload's cold template forks
// one serving worker first, which serves beside the old workers until it has served the warm-up's
// requests (and marked its heap, test/moldrack: on its 20th), then forks the mold that becomes the
// new template; every other new worker is forked from that mold, so each answers with the warmed
// worker's mark. Forked from the cold template, as before the warm-up came to this mode, they
// would say "warm=none" (and the template would be exec'd, no mold). Node's keep-alive client and
// new connections run throughout: none fails, and every status read shows n serving workers ready.
// A hot restart's phased restart warms up the same way.
func TestMoldReloadWarmsAServingWorkerUp(t *testing.T) {
	t.Parallel()
	requireRuby(t)
	const n = 3
	cfg := strings.Replace(moldRack(t, n, nil), moldBlock, `
fork_worker {
  refork_from  = "warmest"
  refork_after = []
  timeout      = "10s"
  warm_up {
    requests = 30
    max_wait = "120s"
  }
}
`, 1)
	f := startRuby(t, options{config: cfg})
	waitMoldCluster(t, f, n, 1)
	warmedRollout(t, f, n, 2, "reload")
	warmedRollout(t, f, n, 3, "restart")
}

// warmedRollout runs forkctl cmd --wait (reload, restart) on f's n serving workers under traffic,
// to generation gen, and checks that it warmed a new serving worker up, whose mold is the new
// template and whose heap every new worker carries, with n serving workers ready throughout.
func warmedRollout(t *testing.T, f *forkd, n, gen int, cmd string) {
	t.Helper()
	before := f.status()
	base := "http://" + f.addr()
	node := startNode(t, base+"/", 4)
	stopTrickle := trickle(t, base+"/", 20*time.Millisecond) // new connections, which the idle new worker takes
	served := before.WorkerList[1].Requests
	f.waitFor("requests reported", func(st control.Status) bool { return st.WorkerList[1].Requests > served })
	log0 := len(f.output.String())

	var moldWarmUps atomic.Int64 // status reads that showed the warm-up of a worker that forks the mold
	stopPolling := pollReady(f, n, func(st control.Status) {
		if wu := st.WarmUp; wu != nil && wu.Mold && wu.Index != 0 {
			moldWarmUps.Add(1)
		}
	})
	out, code := f.forkctl(cmd, "--wait")
	polls, minReady := stopPolling()
	require.Equal(t, 0, code, out)
	stopTrickle()
	r := node.stop()

	st := waitMoldCluster(t, f, n, gen)
	tmpl := st.WorkerList[0]
	assert.NotEqual(t, before.WorkerList[0].PID, tmpl.PID, "a new template")
	require.NotNil(t, tmpl.MoldOf, "the %s's template is a mold of the warmed worker: %+v\n%s", cmd, tmpl, f.output.String()[log0:])
	assert.GreaterOrEqual(t, tmpl.MoldOf.Requests, uint64(30), "the warmed worker served the warm-up's requests before the mold")
	warmed := tmpl.MoldOf.PID
	var warmedSlot control.Worker
	for _, w := range st.WorkerList[1:] {
		if w.PID == warmed {
			warmedSlot = w
		}
	}
	require.Equal(t, warmed, warmedSlot.PID, "the warmed worker serves on: %+v", st.WorkerList)
	log := f.output.String()[log0:]
	assert.Contains(t, log, fmt.Sprintf("%s: the new worker %d warms up, then forks the new template (a mold) the others are forked from (30 requests, or 2m0s at most)", cmd, warmedSlot.Index))
	assert.Regexp(t, fmt.Sprintf(`%s: the new worker %d served \d+ requests while it warmed up: it forks the mold`, cmd, warmedSlot.Index), log)

	// Every new worker answers with the warmed worker's mark: the others were forked from its heap.
	for pid, mark := range heapMarks(t, base+"/", st.WorkerList[1:]) {
		assert.Equal(t, fmt.Sprintf("warm=pid-%d", warmed), mark, "worker %s carries the warmed worker's heap", pid)
	}
	t.Logf("%s: %d status polls, at least %d of %d serving workers ready; node %d ok, %d failed %v", cmd, polls, minReady, n, r.OK, r.failed(), r.Samples)
	assert.Greater(t, polls, 0)
	assert.Equal(t, n, minReady, "every serving worker ready throughout the %s", cmd)
	assert.Positive(t, moldWarmUps.Load(), "a status read during the %s showed a serving worker's warm-up that forks the mold", cmd)
	assert.Greater(t, r.OK, 0, "node ran")
	assert.Zero(t, r.failed(), "node's failed requests: %v", r.Samples)
}

// pollReady reads f's status over and over until the returned func is called, which returns how
// many reads succeeded and the fewest ready serving workers one of them showed (n if fewer
// showed none). Each status read is handed to seen, if not nil.
func pollReady(f *forkd, n int, seen func(control.Status)) func() (polls, minReady int) {
	var fewest atomic.Int64
	fewest.Store(int64(n))
	stop := make(chan struct{})
	polled := make(chan int)
	go func() {
		polls := 0
		for {
			select {
			case <-stop:
				polled <- polls
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			st, err := f.client.Status(ctx)
			cancel()
			if err == nil {
				polls++
				if seen != nil {
					seen(st)
				}
				if int64(st.Ready) < fewest.Load() {
					fewest.Store(int64(st.Ready))
				}
			}
		}
	}()
	return func() (int, int) {
		close(stop)
		polls := <-polled
		return polls, int(fewest.Load())
	}
}
