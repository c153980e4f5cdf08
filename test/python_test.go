package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// The Python SDK (sdk/python) under a real forkd: forkd.gunicorn, gunicorn's own workers (sync,
// gthread, uvicorn's) with forkd in the place of gunicorn's arbiter, read by third-party clients
// that never retry (Node's http client, wrk).

var (
	pythonOnce    sync.Once
	pythonMissing map[string]string
)

// requirePython skips the test unless debianPython, which sees Debian's python3-gunicorn,
// python3-uvicorn and python3-flask, can import gunicorn and modules.
func requirePython(t testing.TB, modules ...string) {
	t.Helper()
	pythonOnce.Do(func() {
		pythonMissing = map[string]string{}
		for _, m := range []string{"gunicorn", "uvicorn.workers", "flask"} {
			if out, err := exec.Command(debianPython, "-c", "import "+m).CombinedOutput(); err != nil {
				pythonMissing[m] = strings.TrimSpace(string(out))
			}
		}
	})
	packages := map[string]string{"gunicorn": "python3-gunicorn", "uvicorn.workers": "python3-uvicorn", "flask": "python3-flask"}
	for _, m := range append([]string{"gunicorn"}, modules...) {
		if why, missing := pythonMissing[m]; missing {
			t.Skipf("%s cannot import %s (%s): apt-get install -y %s", debianPython, m, why, packages[m])
		}
	}
}

// gunicornConfig is the config body running `forkd.gunicorn ARGS...` in test/testapp with the SDK
// on PYTHONPATH. extra is more HCL (a fork_worker block, timeouts); env adds to the app's
// environment.
func gunicornConfig(t *testing.T, workers int, env map[string]string, extra string, args ...string) string {
	t.Helper()
	requirePython(t)
	sdk, err := filepath.Abs("../sdk/python")
	require.NoError(t, err)
	appDir, err := filepath.Abs("testapp")
	require.NoError(t, err)
	vars := []string{fmt.Sprintf("PYTHONPATH = %q", sdk)}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		vars = append(vars, fmt.Sprintf("%s = %q", k, env[k]))
	}
	argv := append([]string{debianPython, "-m", "forkd.gunicorn"}, args...)
	return fmt.Sprintf(`
command   = [%s]
directory = %q
env       = { %s }
workers   = %d
%s
`, quoteAll(argv), appDir, strings.Join(vars, ", "), workers, extra)
}

// pythonApp is the config body running test/testapp/app.py on gunicorn's threaded worker (4
// threads) under forkd.gunicorn.
func pythonApp(t *testing.T, workers int, env map[string]string, extra string) string {
	t.Helper()
	return gunicornConfig(t, workers, env, extra, "-k", "gthread", "--threads", "4", "app:app")
}

// startPython starts forkd and makes sure no Python worker outlives the test.
func startPython(t *testing.T, o options) *forkd {
	t.Helper()
	return startForkdOf(t, o, "forkd.gunicorn")
}

// TestPythonExample runs examples/python/forkd.hcl as `make run` does (the README's first
// command), on a free port: the demo's gunicorn.conf.py is read, its post_fork hook runs in every
// worker with that worker's PID, as under gunicorn's arbiter, and the workers are forked.
func TestPythonExample(t *testing.T) {
	t.Parallel()
	requirePython(t)
	example, err := filepath.Abs("../examples/python")
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(example, "forkd.hcl"))
	require.NoError(t, err)
	cfg := string(b)
	for old, repl := range map[string]string{
		`"tcp://127.0.0.1:8080"`: `"tcp://127.0.0.1:0"`,
		`directory = "."`:        fmt.Sprintf("directory = %q", example),
	} {
		require.Contains(t, cfg, old, "examples/python/forkd.hcl changed: update this test")
		cfg = strings.Replace(cfg, old, repl, 1)
	}
	f := startPython(t, options{config: cfg})
	st := f.waitReady(4)
	assertForkTree(t, f, st)
	assert.Contains(t, get(t, "http://"+f.addr()+"/"), "hello from worker ")
	for _, w := range st.WorkerList {
		assert.Contains(t, f.output.String(), fmt.Sprintf("worker %d is ready to serve", w.PID),
			"gunicorn.conf.py's post_fork hook ran in worker %d with its PID", w.Index)
	}
	assert.NotContains(t, f.output.String(), "[booting] is ready")
}

func TestGunicornFlaskAppServesNodeAndWrk(t *testing.T) {
	t.Parallel()
	requirePython(t, "flask")
	for _, mode := range []struct{ name, extra string }{{"exec", ""}, {"fork", forkWorkerBlock}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			f := startPython(t, options{config: gunicornConfig(t, 2, nil, mode.extra, "-k", "gthread", "--threads", "4", "flaskapp:app")})
			st := f.waitReady(2)
			if mode.name == "fork" {
				assertForkTree(t, f, st)
			}
			url := "http://" + f.addr() + "/"
			assert.Contains(t, get(t, url), "flask worker=")

			node := nodeRequests(t, url, 8, 2000)
			assert.Zero(t, node.failed(), "Node's http client: %+v", node)
			assert.Equal(t, 2000, node.OK)

			stop := startWrk(t, url, 16)
			time.Sleep(2 * time.Second)
			w := stop()
			assert.Zero(t, w.socketErrors+w.non2xx, "wrk:\n%s", w.output)
			assert.Greater(t, w.requests, 100, "wrk:\n%s", w.output)
			t.Logf("%s mode: node %d ok; wrk %d requests, %d socket errors, %d non-2xx", mode.name, node.OK, w.requests, w.socketErrors, w.non2xx)

			// Every request counted (X_FORKD_REQUESTS), as refork_after needs.
			f.waitFor("the request counts", func(st control.Status) bool {
				total := 0
				for _, w := range st.WorkerList {
					total += int(w.Requests)
				}
				return total >= 2001+w.requests
			})
		})
	}
}

func TestGunicornHungWorkerIsKilledAndReplaced(t *testing.T) {
	t.Parallel()
	// No timeouts.worker in forkd.hcl: gunicorn's --timeout 2 is the heartbeat deadline. The sync
	// worker serves one request at a time in its main loop, so a request that hangs stops its
	// heartbeats, as under gunicorn's arbiter.
	f := startPython(t, options{config: gunicornConfig(t, 2, nil, "", "-k", "sync", "--timeout", "2", "app:app")})
	st := f.waitReady(2)
	hung := make(chan error, 1)
	url := "http://" + f.addr() + "/slow?ms=600000"
	go func() {
		c := *httpClient
		c.Timeout = deadline
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
		}
		hung <- err
	}()
	var victim, other control.Worker
	after := f.waitFor("the hung worker replaced", func(now control.Status) bool {
		for i, w := range now.WorkerList {
			if w.PID != st.WorkerList[i].PID && w.State == "ready" {
				victim, other = st.WorkerList[i], st.WorkerList[1-i]
				return true
			}
		}
		return false
	})
	assert.Error(t, <-hung, "the hung request's connection died with its worker")
	killed := false
	for _, line := range strings.Split(f.output.String(), "\n") {
		if strings.Contains(line, "worker sent no heartbeat (WATCHDOG=1) for 2s") && strings.Contains(line, fmt.Sprintf("pid=%d ", victim.PID)) {
			killed = true
		}
	}
	assert.True(t, killed, "forkd says it killed worker %d (pid %d) for its missing heartbeat", victim.Index, victim.PID)
	assert.Equal(t, other.PID, after.WorkerList[other.Index].PID, "the idle worker kept beating")
	get(t, "http://"+f.addr()+"/")
}

func TestGunicornRefusesForkdOptions(t *testing.T) {
	t.Parallel()
	f := startPython(t, options{config: gunicornConfig(t, 1, nil, "", "-w", "4", "app:app")})
	st := f.waitFor("the refusal", func(control.Status) bool {
		out := f.output.String()
		return strings.Contains(out, "forkd-gunicorn: -w/--workers on the command line is forkd's: set workers = N in forkd.hcl") &&
			strings.Contains(out, "worker exited: exit status 2")
	})
	assert.Zero(t, st.Ready)
}

func TestGunicornASGIOnUvicornWorker(t *testing.T) {
	t.Parallel()
	requirePython(t, "uvicorn.workers")
	// fork_worker asked for, but uvicorn's worker runs an asyncio loop forkd.gunicorn does not
	// fork: worker 0 says it cannot be the template, and forkd execs every worker.
	apps, err := filepath.Abs("../sdk/python/tests/apps")
	require.NoError(t, err)
	f := startPython(t, options{config: gunicornConfig(t, 2, nil, forkWorkerBlock, "-k", "uvicorn.workers.UvicornWorker", "--pythonpath", apps, "asgiapp:app")})
	st := f.waitReady(2)
	assert.Equal(t, control.ModeExec, st.Mode)
	assert.Contains(t, f.output.String(), "running in exec mode: worker 0 cannot be the template")
	url := "http://" + f.addr() + "/asgi"
	assert.Contains(t, get(t, url), "asgi pid=")
	node := nodeRequests(t, url, 8, 1000)
	assert.Zero(t, node.failed(), "Node's http client: %+v", node)
	f.waitFor("the requests counted", func(st control.Status) bool {
		return st.WorkerList[0].Requests+st.WorkerList[1].Requests >= 1001
	})
	out, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	f.waitReady(2)
}

func TestTemplateSurvivesRepeatedForks(t *testing.T) {
	t.Parallel()
	// A short heartbeat timeout and forks that come more often than it: the template is busy
	// forking, or has just forked, most of the time, and must never miss a heartbeat.
	f := startPython(t, options{config: pythonApp(t, 3, nil, forkWorkerBlock+"\ntimeouts {\n  worker = \"3s\"\n}\n")})
	st := f.waitReady(3)
	template := st.WorkerList[0].PID
	for i := range 6 {
		out, code := f.forkctl("refork", "--wait")
		require.Equal(t, 0, code, "refork %d: %s", i+1, out)
		time.Sleep(time.Second)
	}
	for i := range 5 {
		out, code := f.forkctl("scale", "+1")
		require.Equal(t, 0, code, "scale %d: %s", i+1, out)
		time.Sleep(time.Second)
	}
	st = f.waitReady(8)
	assert.Equal(t, template, st.WorkerList[0].PID, "worker 0 is still the first template")
	assert.NotContains(t, f.output.String(), "no heartbeat")
	assertForkTree(t, f, st)
	out, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
}

func TestGunicornNoFailedRequestDuringRollouts(t *testing.T) {
	t.Parallel()
	// Keep-alive clients that never retry, during reforks, phased restarts and a hot restart: each
	// idle connection of a draining worker gets its next request answered (Connection: close).
	gunicornRolloutsUnderNode(t, "flaskapp:app", "refork", "reload", "refork", "restart", "reload", "refork")
}

func TestGunicornStopDuringFinishRequestLosesNoRequest(t *testing.T) {
	t.Parallel()
	// A stop that lands between gunicorn's taking a keep-alive answer and its deciding to keep the
	// connection, made frequent (flaskslowfinish.py): no connection answered keep-alive is closed
	// under Node's client, which sends its next request on it at once.
	gunicornRolloutsUnderNode(t, "flaskslowfinish:app", "refork", "refork", "reload", "refork", "refork", "reload")
}

// gunicornRolloutsUnderNode runs app on 3 gthread workers in fork-worker mode and does each of ops
// (forkctl refork, reload, restart) in turn, waiting for the old workers to be gone after each,
// while Node's keep-alive client sends on 12 connections: not one of its requests may fail.
func gunicornRolloutsUnderNode(t *testing.T, app string, ops ...string) {
	t.Helper()
	requirePython(t, "flask")
	f := startPython(t, options{config: gunicornConfig(t, 3, nil, forkWorkerBlock, "-k", "gthread", "--threads", "4", app)})
	f.waitReady(3)
	node := startNode(t, "http://"+f.addr()+"/", 12)
	for i, op := range ops {
		out, code := f.forkctl(op, "--wait")
		require.Equal(t, 0, code, "%s (%d): %s", op, i+1, out)
		f.waitFor("the old workers gone", func(st control.Status) bool {
			return len(st.WorkerList) == 3 && st.Ready == 3 && st.Phase == control.PhaseRunning
		})
	}
	r := node.stop()
	assert.Zero(t, r.failed(), "Node's http client during %v: %+v", ops, r)
	assert.Greater(t, r.OK, 100)
	t.Logf("node: %d ok, %d failed", r.OK, r.failed())
}

func TestGunicornMaxRequestsReplacesWorkersCleanly(t *testing.T) {
	t.Parallel()
	requirePython(t, "flask")
	f := startPython(t, options{config: gunicornConfig(t, 2, nil, forkWorkerBlock, "-k", "gthread", "--max-requests", "100", "--max-requests-jitter", "20", "flaskapp:app")})
	before := f.waitReady(2)
	url := "http://" + f.addr() + "/"
	r := nodeRequests(t, url, 4, 1200)
	assert.Zero(t, r.failed(), "Node's http client across max_requests replacements: %+v", r)
	st := f.waitReady(2)
	restarts := 0
	for i, w := range st.WorkerList {
		assert.NotEqual(t, before.WorkerList[i].PID, w.PID, "worker %d was replaced after --max-requests", i)
		restarts += w.Restarts
	}
	assert.GreaterOrEqual(t, restarts, 6, "1200 requests over 2 workers recycled at 100..120")
	out := f.output.String()
	assert.Contains(t, out, "worker is stopping on its own (STOPPING=1)")
	// An exit after STOPPING=1 with status 0 is expected: no crash, no backoff, no warning.
	assert.NotContains(t, out, "crash-looping")
	assert.NotContains(t, out, `level=WARN msg="worker exited`)
}
