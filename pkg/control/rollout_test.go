package control

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// rollingStatus is a fork-mode cluster in the middle of a refork: slot 1 has its current worker and
// a replacement, and an old worker of slot 2 drains beside the new one.
func rollingStatus() Status {
	st := sampleStatus()
	st.Phase, st.Rollout, st.Mode, st.Generation = PhaseRolling, RolloutRefork, ModeFork, 4
	st.WorkerList = []Worker{
		{Index: 0, PID: 4300, Generation: 3, State: WorkerReady, Template: true,
			Memory: &Memory{RSS: 200 << 20, PSS: 120 << 20, Shared: 90 << 20}},
		{Index: 1, PID: 4301, Generation: 3, State: WorkerReady, Forked: true},
		{Index: 1, PID: 4310, Generation: 4, State: WorkerBooting, Forked: true, Replacement: true},
		{Index: 2, PID: 4302, Generation: 3, State: WorkerStopping, Forked: true, Detached: true},
		{Index: 2, PID: 4311, Generation: 4, State: WorkerReady, Forked: true,
			Memory: &Memory{RSS: 150 << 20, PSS: 40 << 20, Shared: 140 << 20}},
	}
	return st
}

func TestRolloutStatusWireFormat(t *testing.T) {
	want := rollingStatus()
	s := startServer(t, &fakeBackend{status: func(context.Context) (Status, error) { return want, nil }})

	got, err := s.client.Status(context.Background())
	require.NoError(t, err)
	require.Equal(t, want, got)

	reply := s.do(t, http.MethodGet, "/v1/status", "")
	require.Equal(t, http.StatusOK, reply.code)
	var wire struct {
		Phase   string           `json:"phase"`
		Rollout string           `json:"rollout"`
		Workers []map[string]any `json:"worker_list"`
	}
	require.NoError(t, json.Unmarshal([]byte(reply.body), &wire))
	require.Equal(t, "rolling", wire.Phase)
	require.Equal(t, "refork", wire.Rollout)

	template := wire.Workers[0]
	require.Equal(t, true, template["template"])
	require.NotContains(t, template, "forked", "false flags are omitted")
	require.Equal(t, map[string]any{"rss": float64(200 << 20), "pss": float64(120 << 20), "shared": float64(90 << 20), "private_dirty": float64(0)},
		template["memory"])
	require.Equal(t, true, wire.Workers[1]["forked"])
	require.NotContains(t, wire.Workers[1], "memory", "unknown memory is omitted")
	require.Equal(t, true, wire.Workers[2]["replacement"])
	require.Equal(t, true, wire.Workers[3]["detached"])

	// A status without a rollout has none of the new names: older clients see what they always did.
	reply = startServer(t, &fakeBackend{status: func(context.Context) (Status, error) { return sampleStatus(), nil }}).
		do(t, http.MethodGet, "/v1/status", "")
	var plain map[string]any
	require.NoError(t, json.Unmarshal([]byte(reply.body), &plain))
	require.NotContains(t, plain, "rollout")
	for _, w := range plain["worker_list"].([]any) {
		for _, name := range []string{"template", "forked", "replacement", "detached", "memory"} {
			require.NotContains(t, w, name)
		}
	}
}

func TestRolloutRoutes(t *testing.T) {
	var mu sync.Mutex
	var got []any
	record := func(req any) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, req)
	}
	s := startServer(t, &fakeBackend{
		refork: func(_ context.Context, req ReforkRequest) (ReforkResponse, error) {
			record(req)
			return ReforkResponse{Generation: 4}, nil
		},
		reload: func(_ context.Context, req ReloadRequest) (ReloadResponse, error) {
			record(req)
			return ReloadResponse{Generation: 5}, nil
		},
		restart: func(_ context.Context, req RestartRequest) (RestartResponse, error) {
			record(req)
			return RestartResponse{Generation: 6}, nil
		},
	})
	ctx := context.Background()

	refork, err := s.client.Refork(ctx, ReforkRequest{Wait: true})
	require.NoError(t, err)
	require.Equal(t, ReforkResponse{Generation: 4}, refork)
	reload, err := s.client.Reload(ctx, ReloadRequest{})
	require.NoError(t, err)
	require.Equal(t, ReloadResponse{Generation: 5}, reload)
	// A restart whose reply gets out before the exec is answered like the others.
	restart, err := s.client.Restart(ctx, RestartRequest{})
	require.NoError(t, err)
	require.Equal(t, RestartResponse{Generation: 6}, restart)
	restart, err = s.client.Restart(ctx, RestartRequest{Wait: true})
	require.NoError(t, err)
	require.Equal(t, RestartResponse{Generation: 6}, restart)

	// The wire names, and the empty body as the zero request.
	for _, tt := range []struct{ path, body, reply string }{
		{"/v1/refork", `{"wait": true}`, `{"generation": 4}`},
		{"/v1/reload", ``, `{"generation": 5}`},
		{"/v1/restart", `{"wait": false}`, `{"generation": 6}`},
	} {
		reply := s.do(t, http.MethodPost, tt.path, tt.body)
		require.Equal(t, http.StatusOK, reply.code, reply.body)
		require.JSONEq(t, tt.reply, reply.body)
	}

	require.Equal(t, []any{
		ReforkRequest{Wait: true}, ReloadRequest{}, RestartRequest{}, RestartRequest{Wait: true},
		ReforkRequest{Wait: true}, ReloadRequest{}, RestartRequest{},
	}, got)
}

// A rollout that cannot begin is a 409, one that began and failed a 500 with the reason; the client
// hands both back as a *Error.
func TestRolloutErrors(t *testing.T) {
	notFork := &Error{Code: http.StatusConflict, Message: "refork needs fork-worker mode"}
	failed := &Error{Code: http.StatusInternalServerError,
		Message: "worker 0 did not become ready within 1m0s; the old workers keep serving"}
	s := startServer(t, &fakeBackend{
		refork: func(context.Context, ReforkRequest) (ReforkResponse, error) { return ReforkResponse{}, notFork },
		reload: func(_ context.Context, req ReloadRequest) (ReloadResponse, error) {
			if req.Wait {
				return ReloadResponse{}, failed
			}
			return ReloadResponse{}, ErrBusy
		},
		restart: func(context.Context, RestartRequest) (RestartResponse, error) {
			return RestartResponse{}, errors.New("cannot exec /usr/bin/forkd: no such file or directory")
		},
	})
	ctx := context.Background()
	var e *Error

	_, err := s.client.Refork(ctx, ReforkRequest{Wait: true})
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusConflict, e.Code)
	require.Equal(t, "refork needs fork-worker mode", err.Error())

	_, err = s.client.Reload(ctx, ReloadRequest{})
	require.ErrorIs(t, err, ErrBusy)

	_, err = s.client.Reload(ctx, ReloadRequest{Wait: true})
	require.ErrorIs(t, err, failed)
	require.Equal(t, failed.Message, err.Error())

	for _, wait := range []bool{false, true} {
		_, err = s.client.Restart(ctx, RestartRequest{Wait: wait})
		require.ErrorAs(t, err, &e)
		require.Equal(t, http.StatusInternalServerError, e.Code)
		require.Equal(t, "cannot exec /usr/bin/forkd: no such file or directory", err.Error())
	}
}

// oldImage is a master about to re-exec itself: its Restart waits, and cut does to its connections
// and socket what the exec does.
type oldImage struct {
	// restarts receives each restart request as the backend gets it.
	restarts chan RestartRequest
	cut      func()
}

func startOldImage(t *testing.T, socket string, st Status) *oldImage {
	t.Helper()
	img := &oldImage{restarts: make(chan RestartRequest, 1)}
	b := &fakeBackend{
		status: func(context.Context) (Status, error) { return st, nil },
		restart: func(ctx context.Context, req RestartRequest) (RestartResponse, error) {
			img.restarts <- req
			// The exec comes first: no reply gets out.
			<-ctx.Done()
			return RestartResponse{}, ctx.Err()
		},
	}
	l, err := Listen(socket)
	require.NoError(t, err)
	srv := NewServer(b, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	var once sync.Once
	img.cut = func() {
		once.Do(func() {
			// With its context already done, Shutdown closes the listener (removing the socket
			// file) and every connection at once.
			gone, cancel := context.WithCancel(context.Background())
			cancel()
			_ = srv.Shutdown(gone)
			require.NoError(t, receive(t, served, "the old image's Serve to return"))
		})
	}
	t.Cleanup(img.cut)
	return img
}

// restartCall is Client.Restart's outcome.
type restartCall struct {
	resp RestartResponse
	err  error
}

// restartAsync calls Restart on socket in a goroutine.
func restartAsync(ctx context.Context, socket string, req RestartRequest) <-chan restartCall {
	done := make(chan restartCall, 1)
	go func() {
		resp, err := NewClient(socket).Restart(ctx, req)
		done <- restartCall{resp, err}
	}()
	return done
}

// restartCutByExec calls Restart with Wait on an old image answering before, and has the exec cut
// its connection once the request has arrived.
func restartCutByExec(t *testing.T, socket string, before Status) <-chan restartCall {
	t.Helper()
	old := startOldImage(t, socket, before)
	call := restartAsync(context.Background(), socket, RestartRequest{Wait: true})
	require.Equal(t, RestartRequest{Wait: true}, receive(t, old.restarts, "the restart request"))
	old.cut()
	return call
}

// newImageStatus answers as a master that has just re-exec'd: phases[i] for the i-th status, the
// last one from then on; once running, its last rollout is the restart, ended with failure (when
// not empty). polls counts the answers.
func newImageStatus(pid, generation int, polls *atomic.Int32, phases ...string) func(context.Context) (Status, error) {
	return newImageStatusFailing(pid, generation, polls, "", phases...)
}

func newImageStatusFailing(pid, generation int, polls *atomic.Int32, failure string, phases ...string) func(context.Context) (Status, error) {
	return func(context.Context) (Status, error) {
		n := int(polls.Add(1))
		phase := phases[min(n, len(phases))-1]
		st := Status{MasterPID: pid, Phase: phase, Generation: generation,
			LastRollout: &RolloutResult{Seq: 7, Kind: RolloutReload, Generation: generation - 1}}
		switch phase {
		case PhaseRolling:
			st.Rollout = RolloutRestart
		case PhaseRunning:
			st.LastRollout = &RolloutResult{Seq: 8, Kind: RolloutRestart, Generation: generation, Error: failure}
		}
		return st, nil
	}
}

func TestRestartWaitReconnects(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	call := restartCutByExec(t, socket, Status{MasterPID: 4242, Phase: PhaseRunning, Generation: 3,
		LastRollout: &RolloutResult{Seq: 7, Kind: RolloutReload, Generation: 3}})
	// The socket is gone for a while, as when the new image binds it again: the client keeps
	// trying.
	time.Sleep(100 * time.Millisecond)

	var polls atomic.Int32
	startServerAt(t, &fakeBackend{status: newImageStatus(4242, 4, &polls,
		PhaseStarting, PhaseRolling, PhaseRolling, PhaseRunning)}, socket)
	got := receive(t, call, "Restart to return")
	require.NoError(t, got.err)
	require.Equal(t, RestartResponse{Generation: 4}, got.resp)
	require.EqualValues(t, 4, polls.Load(), "Restart returns at the first status that shows the restart ended")
}

// The new image runs, but its phased restart failed (a broken release): the restart failed, and
// says why, as a failed reload does.
func TestRestartWaitPhasedRestartFailed(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	call := restartCutByExec(t, socket, Status{MasterPID: 4242, Phase: PhaseRunning, Generation: 3,
		LastRollout: &RolloutResult{Seq: 7, Kind: RolloutReload, Generation: 3}})

	var polls atomic.Int32
	startServerAt(t, &fakeBackend{status: newImageStatusFailing(4242, 3, &polls,
		"rollout failed: worker 0 of generation 4 did not become ready: exit status 1", PhaseRolling, PhaseRunning)}, socket)
	got := receive(t, call, "Restart to return")
	var e *Error
	require.ErrorAs(t, got.err, &e)
	require.Equal(t, http.StatusInternalServerError, e.Code)
	require.EqualError(t, got.err, "the new master runs, but the restart failed: rollout failed: worker 0 of generation 4 did not become ready: exit status 1")
}

// A status that says running, from the new image, is not enough: the restart must have ended
// (its phased restart done), which LastRollout says.
func TestRestartWaitIgnoresRunningBeforeTheEnd(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	call := restartCutByExec(t, socket, Status{MasterPID: 4242, Phase: PhaseRunning, Generation: 3,
		LastRollout: &RolloutResult{Seq: 7, Kind: RolloutReload, Generation: 3}})

	var polls atomic.Int32
	statuses := []Status{
		{MasterPID: 4242, Phase: PhaseRunning, Generation: 3, LastRollout: &RolloutResult{Seq: 7, Kind: RolloutReload, Generation: 3}},
		{MasterPID: 4242, Phase: PhaseRunning, Generation: 4, LastRollout: &RolloutResult{Seq: 8, Kind: RolloutRestart, Generation: 4}},
	}
	startServerAt(t, &fakeBackend{status: func(context.Context) (Status, error) {
		return statuses[min(int(polls.Add(1)), len(statuses))-1], nil
	}}, socket)
	got := receive(t, call, "Restart to return")
	require.NoError(t, got.err)
	require.Equal(t, RestartResponse{Generation: 4}, got.resp)
	require.EqualValues(t, 2, polls.Load())
}

func TestRestartWaitNewProcess(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	call := restartCutByExec(t, socket, Status{MasterPID: 4242, Phase: PhaseRunning, Generation: 3})

	var polls atomic.Int32
	startServerAt(t, &fakeBackend{status: newImageStatus(5151, 1, &polls, PhaseRunning)}, socket)
	got := receive(t, call, "Restart to return")
	require.EqualError(t, got.err,
		"forkd restarted as a new process (pid 5151, was 4242): the hot restart failed and forkd was started afresh")
}

func TestRestartWaitStopping(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	call := restartCutByExec(t, socket, Status{MasterPID: 4242, Phase: PhaseRunning, Generation: 3})

	var polls atomic.Int32
	startServerAt(t, &fakeBackend{status: newImageStatus(4242, 4, &polls, PhaseRolling, PhaseStopping)}, socket)
	got := receive(t, call, "Restart to return")
	require.EqualError(t, got.err, "forkd is stopping: the restart did not complete")
}

// Without Wait, a connection closed before the reply is the restart under way.
func TestRestartNoWaitConnectionCut(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	old := startOldImage(t, socket, Status{MasterPID: 4242, Phase: PhaseRunning, Generation: 3})

	call := restartAsync(context.Background(), socket, RestartRequest{})
	require.Equal(t, RestartRequest{}, receive(t, old.restarts, "the restart request"))
	old.cut()
	got := receive(t, call, "Restart to return")
	require.NoError(t, got.err)
	require.Equal(t, RestartResponse{}, got.resp)
}

// A forkd that never comes back is a failure, even without a deadline.
func TestRestartWaitNeverComesBack(t *testing.T) {
	defer func(limit time.Duration) { restartGoneLimit = limit }(restartGoneLimit)
	restartGoneLimit = 300 * time.Millisecond

	socket := filepath.Join(t.TempDir(), "control.sock")
	call := restartCutByExec(t, socket, Status{MasterPID: 4242, Phase: PhaseRunning, Generation: 3})

	got := receive(t, call, "Restart to return")
	require.ErrorIs(t, got.err, ErrNotRunning)
	require.EqualError(t, got.err, "forkd did not come back from the restart: forkd is not running (no control socket at "+socket+")")
}

// A new image that never gets to running is bounded by ctx, and the error says what it last saw.
func TestRestartWaitBoundedByContext(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	old := startOldImage(t, socket, Status{MasterPID: 4242, Phase: PhaseRunning, Generation: 3})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	call := restartAsync(ctx, socket, RestartRequest{Wait: true})
	receive(t, old.restarts, "the restart request")
	old.cut()

	var polls atomic.Int32
	startServerAt(t, &fakeBackend{status: newImageStatus(4242, 4, &polls, PhaseStarting)}, socket)
	require.Eventually(t, func() bool { return polls.Load() >= 2 }, time.Minute, 10*time.Millisecond)
	cancel()
	got := receive(t, call, "Restart to return")
	require.ErrorIs(t, got.err, context.Canceled)
	require.EqualError(t, got.err, "waiting for forkd to come back from the restart (last: phase starting): context canceled")
}

// Restart with Wait needs the master's PID first; nothing to restart is ErrNotRunning.
func TestRestartNotRunning(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	for _, wait := range []bool{false, true} {
		_, err := NewClient(socket).Restart(context.Background(), RestartRequest{Wait: wait})
		require.ErrorIs(t, err, ErrNotRunning)
	}
}
