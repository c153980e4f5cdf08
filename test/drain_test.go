package test

import (
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/internal/proctest"
	"github.com/forkd/forkd/pkg/control"
)

// wrkResult is what wrk printed: how many requests it completed, and how many failed.
type wrkResult struct {
	requests int
	// socketErrors sums connect, read, write and timeout errors; non2xx counts other answers.
	socketErrors, non2xx int
	output               string
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// startWrk runs wrk against url with keep-alive connections until the returned function stops it
// (SIGINT, after which wrk prints its summary). wrk never retries: a connection closed before its
// response is a read error. flags are more of wrk's (--timeout 30s: a request unanswered for its
// default 2 s, on a busy machine, is slow, not lost).
func startWrk(t *testing.T, url string, connections int, flags ...string) func() wrkResult {
	t.Helper()
	path, err := exec.LookPath("wrk")
	if err != nil {
		t.Skip("wrk is not installed (apt-get install wrk; .ci/run installs it)")
	}
	out := &proctest.Output{}
	cmd := exec.Command(path, append(append([]string{"-t2", "-c" + strconv.Itoa(connections), "-d10m"}, flags...), url)...)
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return func() wrkResult {
		t.Helper()
		require.NoError(t, cmd.Process.Signal(syscall.SIGINT))
		<-done
		r := wrkResult{output: out.String()}
		m := wrkRequests.FindStringSubmatch(r.output)
		require.NotNil(t, m, "wrk printed no summary:\n%s", r.output)
		r.requests, _ = strconv.Atoi(m[1])
		if m := wrkSocket.FindStringSubmatch(r.output); m != nil {
			for _, n := range m[1:] {
				v, _ := strconv.Atoi(n)
				r.socketErrors += v
			}
		}
		if m := wrkNon2xx.FindStringSubmatch(r.output); m != nil {
			r.non2xx, _ = strconv.Atoi(m[1])
		}
		return r
	}
}

// TestKeepAliveClientsSeeNoErrorDuringPhasedRestarts: under wrk's keep-alive load, every phased
// restart drains old workers (the Go SDK's HTTPDrainer, in testworker) while wrk sends its next
// request on their idle connections. net/http's Shutdown closed those at once, and wrk, which does
// not retry, counted read errors; the drainer answers each with Connection: close instead.
func TestKeepAliveClientsSeeNoErrorDuringPhasedRestarts(t *testing.T) {
	t.Parallel()
	const workers, reloads = 4, 5
	f := startForkd(t, options{config: worker() + "\nworkers = 4\n"})
	f.waitReady(workers)
	stop := startWrk(t, "http://"+f.addr()+"/", 16)

	for i := range reloads {
		out, code := f.forkctl("reload", "--wait")
		require.Equal(t, 0, code, "reload %d: %s", i+1, out)
		// The old workers drain under the load before the next reload.
		f.waitFor("the old workers to be gone", func(st control.Status) bool {
			for _, w := range st.WorkerList {
				if w.Detached || w.Generation != st.Generation {
					return false
				}
			}
			return st.Ready == workers
		})
	}
	r := stop()
	t.Logf("wrk: %d requests, %d socket errors, %d non-2xx over %d phased restarts", r.requests, r.socketErrors, r.non2xx, reloads)
	assert.Greater(t, r.requests, 1000, "the load ran:\n%s", r.output)
	assert.Zero(t, r.socketErrors, "socket errors:\n%s", r.output)
	assert.Zero(t, r.non2xx, "non-2xx answers:\n%s", r.output)
}
