package main

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
	"github.com/stretchr/testify/require"
)

// receive waits for a value from ch. The long limit only turns a hang into a readable failure.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(2 * time.Minute):
		t.Fatalf("gave up waiting for %s", what)
		panic("unreachable")
	}
}

// serveCuttable runs a control server for b on socket, and returns cut, which does to it what the
// master's exec does: it closes the listener (removing the socket file) and every connection, so
// that no reply in progress gets out.
func serveCuttable(t *testing.T, b control.Backend, socket string) (cut func()) {
	t.Helper()
	l, err := control.Listen(socket)
	require.NoError(t, err)
	srv := control.NewServer(b, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	var once sync.Once
	cut = func() {
		once.Do(func() {
			gone, cancel := context.WithCancel(context.Background())
			cancel()
			_ = srv.Shutdown(gone)
			require.NoError(t, receive(t, served, "Serve to return"))
		})
	}
	t.Cleanup(cut)
	return cut
}

func TestRollouts(t *testing.T) {
	b := newFakeBackend()
	socket := serve(t, b)

	tests := []struct {
		args []string
		says string
		got  func() any
		want any
	}{
		{[]string{"refork"}, "refork started (generation 4)\n",
			func() any { return <-b.reforks }, control.ReforkRequest{}},
		{[]string{"refork", "--wait"}, "refork done: generation 4\n",
			func() any { return <-b.reforks }, control.ReforkRequest{Wait: true}},
		{[]string{"reload"}, "reload started (generation 4)\n",
			func() any { return <-b.reloads }, control.ReloadRequest{}},
		{[]string{"reload", "--wait"}, "reload done: generation 4\n",
			func() any { return <-b.reloads }, control.ReloadRequest{Wait: true}},
		{[]string{"phased-restart", "--wait", "--timeout", "1m"}, "reload done: generation 4\n",
			func() any { return <-b.reloads }, control.ReloadRequest{Wait: true}},
		{[]string{"restart"}, "restart started\n",
			func() any { return <-b.restarts }, control.RestartRequest{}},
		// A restart whose reply got out before the exec.
		{[]string{"restart", "--wait"}, "restart done: forkd 9.9.9 (abcdef123456, go1.26.8) (pid 4242), generation 4, workers replaced\n",
			func() any { return <-b.restarts }, control.RestartRequest{Wait: true}},
		{[]string{"restart", "--keep-workers"}, "restart started\n",
			func() any { return <-b.restarts }, control.RestartRequest{KeepWorkers: true}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := forkctl(t, nil, append([]string{"--socket", socket}, tt.args...)...)
			require.Equal(t, 0, r.code, r.stderr)
			require.Equal(t, tt.says, r.stdout)
			require.Empty(t, r.stderr)
			require.Equal(t, tt.want, tt.got())
		})
	}
}

// A reload asked for during another rollout waits for it, and forkctl says so.
func TestReloadQueued(t *testing.T) {
	b := newFakeBackend()
	b.queuedBehind = control.RolloutRefork
	socket := serve(t, b)
	r := forkctl(t, nil, "--socket", socket, "reload")
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, "reload queued: it begins when the refork in progress has ended\n", r.stdout)
}

// A rollout that cannot begin (409) or that failed (500) is exit status 1 with forkd's message, so
// that `systemctl reload` fails with it.
func TestRolloutFailures(t *testing.T) {
	tests := []struct {
		name string
		err  error
		args []string
	}{
		{"not fork mode", &control.Error{Code: http.StatusConflict, Message: "refork needs fork-worker mode"},
			[]string{"refork"}},
		{"busy", control.ErrBusy, []string{"reload"}},
		{"stopping", control.ErrStopping, []string{"restart", "--wait"}},
		{"failed", &control.Error{Code: http.StatusInternalServerError,
			Message: "worker 2 did not become ready within 1m0s; the old workers keep serving"},
			[]string{"reload", "--wait"}},
		{"failed refork", &control.Error{Code: http.StatusInternalServerError,
			Message: "the template did not pause within 10s"},
			[]string{"refork", "--wait"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newFakeBackend()
			b.rolloutErr = tt.err
			socket := serve(t, b)
			r := forkctl(t, nil, append([]string{"--socket", socket}, tt.args...)...)
			require.Equal(t, exitFailure, r.code)
			require.Empty(t, r.stdout)
			require.Equal(t, "forkctl: "+tt.err.Error()+"\n", r.stderr)
		})
	}
}

// --wait waits without limit unless --timeout is given (see TestContextTimeout); when it is, it
// bounds the wait.
func TestRolloutWaitTimeout(t *testing.T) {
	b := newFakeBackend()
	b.rolloutBlocks = true
	socket := serve(t, b)

	for _, name := range []string{"refork", "reload", "restart"} {
		r := forkctl(t, nil, "--socket", socket, "--timeout", "200ms", name, "--wait")
		require.Equal(t, exitFailure, r.code, name)
		require.Contains(t, r.stderr, "forkctl: no answer from forkd within 200ms (see --timeout)", name)
	}
}

// forkd going away in the middle of a reload --wait is a failure, said plainly.
func TestReloadWaitConnectionLost(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	b := newFakeBackend()
	b.rolloutBlocks = true
	cut := serveCuttable(t, b, socket)

	wait := startForkctl(t, nil, "--socket", socket, "reload", "--wait")
	require.Equal(t, control.ReloadRequest{Wait: true}, receive(t, b.reloads, "the reload request"))
	cut()
	r := wait()
	require.Equal(t, exitFailure, r.code)
	require.Empty(t, r.stdout)
	require.Equal(t, "forkctl: forkd closed the connection before answering the reload: control: POST /v1/reload: EOF\n", r.stderr)
}

// restartWaitCutByExec runs `forkctl restart --wait` against an old master whose exec cuts the
// connection once the request has arrived; the caller serves the new image on socket.
func restartWaitCutByExec(t *testing.T) (socket string, wait func() result) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "control.sock")
	old := newFakeBackend()
	old.rolloutBlocks = true
	cut := serveCuttable(t, old, socket)
	wait = startForkctl(t, nil, "--socket", socket, "restart", "--wait")
	require.Equal(t, control.RestartRequest{Wait: true}, receive(t, old.restarts, "the restart request"))
	cut()
	return socket, wait
}

// restart --wait across the exec: the old master's socket and connection go away, and the new
// image comes up on the same socket with the same PID.
func TestRestartWaitAcrossExec(t *testing.T) {
	socket, wait := restartWaitCutByExec(t)
	time.Sleep(100 * time.Millisecond)
	upgraded := newFakeBackend()
	upgraded.status.Version = "forkd 10.0.0 (fedcba987654, go1.26.9)"
	upgraded.status.Generation = 4
	upgraded.status.LastRollout = &control.RolloutResult{Seq: 1, Kind: control.RolloutRestart, Generation: 4}
	serveAt(t, upgraded, socket)

	r := wait()
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, "restart done: forkd 10.0.0 (fedcba987654, go1.26.9) (pid 4242), generation 4, workers replaced\n", r.stdout)
	require.Empty(t, r.stderr)
}

// restart --wait onto a broken release: the new master runs, but its phased restart failed; the
// command fails with the reason, as reload --wait does.
func TestRestartWaitBrokenRelease(t *testing.T) {
	socket, wait := restartWaitCutByExec(t)
	upgraded := newFakeBackend()
	upgraded.status.LastRollout = &control.RolloutResult{Seq: 1, Kind: control.RolloutRestart, Generation: 3,
		Error: "rollout failed: worker 0 of generation 4 did not become ready: exit status 1"}
	serveAt(t, upgraded, socket)

	r := wait()
	require.Equal(t, exitFailure, r.code)
	require.Empty(t, r.stdout)
	require.Equal(t, "forkctl: the new master runs, but the restart failed: rollout failed: worker 0 of generation 4 did not become ready: exit status 1\n", r.stderr)
}

func TestRestartWaitNewProcess(t *testing.T) {
	socket, wait := restartWaitCutByExec(t)
	afresh := newFakeBackend()
	afresh.status.MasterPID = 5151
	serveAt(t, afresh, socket)

	r := wait()
	require.Equal(t, exitFailure, r.code)
	require.Empty(t, r.stdout)
	require.Equal(t, "forkctl: forkd restarted as a new process (pid 5151, was 4242): the hot restart failed and forkd was started afresh\n",
		r.stderr)
}

// Without --wait, the exec cutting the connection before the reply is the restart under way.
func TestRestartConnectionCut(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	old := newFakeBackend()
	old.rolloutBlocks = true
	cut := serveCuttable(t, old, socket)

	wait := startForkctl(t, nil, "--socket", socket, "restart")
	require.Equal(t, control.RestartRequest{}, receive(t, old.restarts, "the restart request"))
	cut()
	r := wait()
	require.Equal(t, exitOK, r.code, r.stderr)
	require.Equal(t, "restart started\n", r.stdout)
}
