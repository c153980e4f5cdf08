package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func sampleStatus() Status {
	started := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return Status{
		Name:                 "demo",
		Version:              "forkd 1.2.3",
		MasterPID:            4242,
		StartedAt:            started,
		Uptime:               Duration(90 * time.Second),
		Phase:                PhaseRunning,
		Generation:           3,
		Workers:              2,
		Ready:                1,
		Mode:                 ModeExec,
		SocketActivated:      true,
		Listeners:            []Listener{{Name: "http", Address: "tcp://0.0.0.0:8080"}},
		DroppedNotifications: 7,
		StatusLine:           "1/2 workers ready",
		WorkerList: []Worker{
			{Index: 0, PID: 4300, Generation: 3, State: WorkerReady, StartedAt: started.Add(time.Second),
				Uptime: Duration(89 * time.Second), StatusLine: "serving", Requests: 1523},
			{Index: 1, Generation: 3, State: WorkerBackoff, Restarts: 5, LastExit: "exit status 1",
				NextRestart: started.Add(2 * time.Minute)},
		},
	}
}

func TestStatusRoundTrip(t *testing.T) {
	want := sampleStatus()
	s := startServer(t, &fakeBackend{status: func(context.Context) (Status, error) { return want, nil }})

	got, err := s.client.Status(context.Background())
	require.NoError(t, err)
	require.Equal(t, want, got)
}

// The wire format is an API of its own: operators' scripts read these names.
func TestStatusWireFormat(t *testing.T) {
	s := startServer(t, &fakeBackend{status: func(context.Context) (Status, error) { return sampleStatus(), nil }})

	reply := s.do(t, http.MethodGet, "/v1/status", "")
	require.Equal(t, http.StatusOK, reply.code)
	var wire map[string]any
	require.NoError(t, json.Unmarshal([]byte(reply.body), &wire))

	require.Equal(t, "1m30s", wire["uptime"])
	require.Equal(t, "2026-03-01T12:00:00Z", wire["started_at"])
	require.Equal(t, float64(4242), wire["master_pid"])
	require.Equal(t, true, wire["socket_activated"])
	require.Equal(t, float64(7), wire["dropped_notifications"])
	require.Equal(t, "1/2 workers ready", wire["status_line"])
	require.Equal(t, []any{map[string]any{"name": "http", "address": "tcp://0.0.0.0:8080"}}, wire["listeners"])

	workers := wire["worker_list"].([]any)
	ready := workers[0].(map[string]any)
	require.Equal(t, "1m29s", ready["uptime"])
	require.NotContains(t, ready, "last_exit")
	require.NotContains(t, ready, "next_restart")
	backoff := workers[1].(map[string]any)
	require.Equal(t, "exit status 1", backoff["last_exit"])
	require.Equal(t, "2026-03-01T12:02:00Z", backoff["next_restart"])
	require.NotContains(t, backoff, "started_at", "a slot with no process has no start time")
	require.Equal(t, float64(0), backoff["pid"])
}

func TestStatusListsAreNeverNull(t *testing.T) {
	s := startServer(t, &fakeBackend{})

	reply := s.do(t, http.MethodGet, "/v1/status", "")
	require.Equal(t, http.StatusOK, reply.code)
	require.Contains(t, reply.body, `"listeners":[]`)
	require.Contains(t, reply.body, `"worker_list":[]`)
}

func TestStop(t *testing.T) {
	got := make(chan StopRequest, 1)
	s := startServer(t, &fakeBackend{stop: func(_ context.Context, req StopRequest) error {
		got <- req
		return nil
	}})

	require.NoError(t, s.client.Stop(context.Background(), StopRequest{Immediate: true, Wait: true}))
	require.Equal(t, StopRequest{Immediate: true, Wait: true}, <-got)
}

func TestStopWithEmptyBodyIsTheZeroRequest(t *testing.T) {
	got := make(chan StopRequest, 1)
	s := startServer(t, &fakeBackend{stop: func(_ context.Context, req StopRequest) error {
		got <- req
		return nil
	}})

	reply := s.do(t, http.MethodPost, "/v1/stop", "")
	require.Equal(t, http.StatusOK, reply.code, reply.body)
	require.JSONEq(t, `{}`, reply.body)
	require.Equal(t, StopRequest{}, <-got)
}

func TestScale(t *testing.T) {
	current := 4
	s := startServer(t, &fakeBackend{scale: func(_ context.Context, req ScaleRequest) (ScaleResponse, error) {
		previous := current
		if req.Workers != 0 {
			current = req.Workers
		} else {
			current += req.Delta
		}
		return ScaleResponse{Workers: current, Previous: previous}, nil
	}})
	ctx := context.Background()

	resp, err := s.client.Scale(ctx, ScaleRequest{Workers: 8})
	require.NoError(t, err)
	require.Equal(t, ScaleResponse{Workers: 8, Previous: 4}, resp)

	resp, err = s.client.Scale(ctx, ScaleRequest{Delta: -3})
	require.NoError(t, err)
	require.Equal(t, ScaleResponse{Workers: 5, Previous: 8}, resp)

	reply := s.do(t, http.MethodPost, "/v1/scale", `{"delta": 2}`)
	require.Equal(t, http.StatusOK, reply.code, reply.body)
	require.JSONEq(t, `{"workers": 7, "previous": 5}`, reply.body)
}

// Requests the server rejects before the backend sees them.
func TestInvalidRequests(t *testing.T) {
	invalid := errors.New("the backend must not see an invalid request")
	s := startServer(t, &fakeBackend{
		stop: func(context.Context, StopRequest) error { return invalid },
		scale: func(context.Context, ScaleRequest) (ScaleResponse, error) {
			return ScaleResponse{}, invalid
		},
		refork:  func(context.Context, ReforkRequest) (ReforkResponse, error) { return ReforkResponse{}, invalid },
		reload:  func(context.Context, ReloadRequest) (ReloadResponse, error) { return ReloadResponse{}, invalid },
		restart: func(context.Context, RestartRequest) (RestartResponse, error) { return RestartResponse{}, invalid },
	})

	tests := []struct {
		name, method, path, body string
		code                     int
		message                  string
	}{
		{"bad json", "POST", "/v1/scale", `{"workers": `, 400, "invalid request body"},
		{"wrong type", "POST", "/v1/scale", `{"workers": "4"}`, 400, "invalid request body"},
		{"not an object", "POST", "/v1/stop", `[true]`, 400, "invalid request body"},
		{"unknown field", "POST", "/v1/stop", `{"immediat": true}`, 400, `unknown field "immediat"`},
		{"two values", "POST", "/v1/stop", `{} {}`, 400, "more than one JSON value"},
		{"scale both", "POST", "/v1/scale", `{"workers": 4, "delta": 1}`, 400, "not both"},
		{"scale neither", "POST", "/v1/scale", `{}`, 400, "set workers"},
		{"scale empty body", "POST", "/v1/scale", ``, 400, "set workers"},
		{"scale negative", "POST", "/v1/scale", `{"workers": -2}`, 400, "must be positive"},
		{"refork bad json", "POST", "/v1/refork", `{"wait": tru`, 400, "invalid request body"},
		{"refork wrong type", "POST", "/v1/refork", `{"wait": "yes"}`, 400, "invalid request body"},
		{"reload bad json", "POST", "/v1/reload", `{wait: true}`, 400, "invalid request body"},
		{"reload unknown field", "POST", "/v1/reload", `{"wiat": true}`, 400, `unknown field "wiat"`},
		{"restart bad json", "POST", "/v1/restart", `{"wait": true}}`, 400, "invalid request body"},
		{"restart not an object", "POST", "/v1/restart", `true`, 400, "invalid request body"},
		{"unknown route", "GET", "/v1/nope", ``, 404, "no such route: GET /v1/nope"},
		{"unknown version", "GET", "/v2/status", ``, 404, "no such route"},
		{"trailing slash", "GET", "/v1/status/", ``, 404, "no such route"},
		{"too large", "POST", "/v1/stop", `{"wait": true, "x": "` + strings.Repeat("x", 64<<10) + `"}`, 413, "larger than 65536 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply := s.do(t, tt.method, tt.path, tt.body)
			require.Equal(t, tt.code, reply.code, reply.body)
			require.Contains(t, reply.errorMessage(t), tt.message)
		})
	}
}

func TestWrongMethod(t *testing.T) {
	s := startServer(t, &fakeBackend{})

	tests := []struct{ method, path, allow string }{
		{"POST", "/v1/status", "GET"},
		{"DELETE", "/v1/status", "GET"},
		{"GET", "/v1/stop", "POST"},
		{"PUT", "/v1/scale", "POST"},
		{"GET", "/v1/refork", "POST"},
		{"PUT", "/v1/reload", "POST"},
		{"GET", "/v1/restart", "POST"},
		{"DELETE", "/v1/restart", "POST"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			reply := s.do(t, tt.method, tt.path, "")
			require.Equal(t, http.StatusMethodNotAllowed, reply.code)
			require.Equal(t, tt.allow, reply.header.Get("Allow"))
			require.Equal(t, fmt.Sprintf("%s does not accept %s (use %s)", tt.path, tt.method, tt.allow), reply.errorMessage(t))
		})
	}
}

// A Backend chooses the status code with a *Error; anything else is a 500.
func TestBackendErrors(t *testing.T) {
	tests := []struct {
		name    string
		err     error
		code    int
		message string
	}{
		{"stopping", ErrStopping, 409, "forkd is stopping"},
		{"busy, wrapped", fmt.Errorf("scale to 9: %w", ErrBusy), 409, "scale to 9: forkd is busy with another command"},
		{"gone", ErrUnavailable, 503, ErrUnavailable.Message},
		{"own error", &Error{Code: http.StatusBadRequest, Message: "at most 1024 workers"}, 400, "at most 1024 workers"},
		{"plain error", errors.New("cluster: something broke"), 500, "cluster: something broke"},
		{"nonsense code", &Error{Code: 200, Message: "not an error code"}, 500, "not an error code"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServer(t, &fakeBackend{
				status: func(context.Context) (Status, error) { return Status{}, tt.err },
				stop:   func(context.Context, StopRequest) error { return tt.err },
				scale: func(context.Context, ScaleRequest) (ScaleResponse, error) {
					return ScaleResponse{}, tt.err
				},
				refork:  func(context.Context, ReforkRequest) (ReforkResponse, error) { return ReforkResponse{}, tt.err },
				reload:  func(context.Context, ReloadRequest) (ReloadResponse, error) { return ReloadResponse{}, tt.err },
				restart: func(context.Context, RestartRequest) (RestartResponse, error) { return RestartResponse{}, tt.err },
			})
			for _, route := range []struct{ method, path, body string }{
				{"GET", "/v1/status", ""},
				{"POST", "/v1/stop", `{"wait": true}`},
				{"POST", "/v1/scale", `{"workers": 9}`},
				{"POST", "/v1/refork", `{"wait": true}`},
				{"POST", "/v1/reload", `{}`},
				{"POST", "/v1/restart", `{"wait": false}`},
			} {
				reply := s.do(t, route.method, route.path, route.body)
				require.Equal(t, tt.code, reply.code, "%s %s", route.method, route.path)
				require.Equal(t, tt.message, reply.errorMessage(t))
			}
		})
	}
}

// The client hands back the server's error as a *Error, and sentinels survive the trip.
func TestClientErrors(t *testing.T) {
	s := startServer(t, &fakeBackend{
		stop: func(context.Context, StopRequest) error { return ErrStopping },
		scale: func(context.Context, ScaleRequest) (ScaleResponse, error) {
			return ScaleResponse{}, errors.New("cluster: no")
		},
	})
	ctx := context.Background()

	err := s.client.Stop(ctx, StopRequest{})
	require.ErrorIs(t, err, ErrStopping)
	require.NotErrorIs(t, err, ErrBusy)
	var e *Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusConflict, e.Code)
	require.Equal(t, "forkd is stopping", err.Error())

	_, err = s.client.Scale(ctx, ScaleRequest{Workers: 3})
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusInternalServerError, e.Code)
	require.Equal(t, "cluster: no", err.Error())

	_, err = s.client.Scale(ctx, ScaleRequest{Workers: 3, Delta: 1})
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusBadRequest, e.Code)
}

func TestClientNotRunning(t *testing.T) {
	dir := t.TempDir()

	missing := filepath.Join(dir, "missing.sock")
	_, err := NewClient(missing).Status(context.Background())
	require.ErrorIs(t, err, ErrNotRunning)
	require.Equal(t, "forkd is not running (no control socket at "+missing+")", err.Error())

	stale := filepath.Join(dir, "stale.sock")
	makeStaleSocket(t, stale)
	err = NewClient(stale).Stop(context.Background(), StopRequest{})
	require.ErrorIs(t, err, ErrNotRunning)
	require.Equal(t, "forkd is not running (nothing listening on "+stale+")", err.Error())
}

// A client that gives up (here: cancels its context) cancels the context the backend waits on.
func TestClientCancellationReachesBackend(t *testing.T) {
	entered := make(chan struct{})
	backendSaw := make(chan error, 1)
	s := startServer(t, &fakeBackend{stop: func(ctx context.Context, req StopRequest) error {
		close(entered)
		<-ctx.Done()
		backendSaw <- ctx.Err()
		return ctx.Err()
	}})

	ctx, cancel := context.WithCancel(context.Background())
	clientGot := make(chan error, 1)
	go func() { clientGot <- s.client.Stop(ctx, StopRequest{Wait: true}) }()
	receive(t, entered, "the backend to receive the stop")
	cancel()

	require.ErrorIs(t, receive(t, clientGot, "the client to return"), context.Canceled)
	require.ErrorIs(t, receive(t, backendSaw, "the backend's context to be cancelled"), context.Canceled)
}

// Shutdown waits for a waiting request only as long as its ctx allows, then cuts it off, which
// cancels the backend's context.
func TestShutdownCancelsWaitingRequests(t *testing.T) {
	entered := make(chan struct{})
	backendSaw := make(chan error, 1)
	b := &fakeBackend{stop: func(ctx context.Context, req StopRequest) error {
		close(entered)
		<-ctx.Done()
		backendSaw <- ctx.Err()
		return ctx.Err()
	}}
	socket := filepath.Join(t.TempDir(), "control.sock")
	l, err := Listen(socket)
	require.NoError(t, err)
	srv := NewServer(b, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	clientGot := make(chan error, 1)
	go func() { clientGot <- NewClient(socket).Stop(context.Background(), StopRequest{Wait: true}) }()
	receive(t, entered, "the backend to receive the stop")

	expired, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, srv.Shutdown(expired), context.Canceled)
	require.ErrorIs(t, receive(t, backendSaw, "the backend's context to be cancelled"), context.Canceled)
	require.Error(t, receive(t, clientGot, "the client to return"))
	require.NoError(t, receive(t, served, "Serve to return"))
	require.NoFileExists(t, socket, "closing the listener removes the socket file")
}

func TestAuthorize(t *testing.T) {
	asRoot := &Server{euid: 0}
	require.NoError(t, asRoot.authorize(peerCred{uid: 0}))
	require.EqualError(t, asRoot.authorize(peerCred{uid: 1000}),
		"uid 1000 may not use forkd's control API (allowed: root)")

	asUser := &Server{euid: 1000}
	require.NoError(t, asUser.authorize(peerCred{uid: 0}))
	require.NoError(t, asUser.authorize(peerCred{uid: 1000}))
	err := asUser.authorize(peerCred{uid: 1001})
	require.EqualError(t, err, "uid 1001 may not use forkd's control API (allowed: root and uid 1000)")
	var e *Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusForbidden, e.Code)

	err = asRoot.authorize(peerCred{uid: -1, err: errors.New("control: SO_PEERCRED: bad file descriptor")})
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusForbidden, e.Code)
}

func TestDurationJSON(t *testing.T) {
	b, err := json.Marshal(Duration(90*time.Second + 500*time.Millisecond))
	require.NoError(t, err)
	require.Equal(t, `"1m30.5s"`, string(b))

	var d Duration
	require.NoError(t, json.Unmarshal([]byte(`"2h3m"`), &d))
	require.Equal(t, 2*time.Hour+3*time.Minute, time.Duration(d))
	require.Equal(t, "2h3m0s", d.String())

	require.Error(t, json.Unmarshal([]byte(`90`), &d))
	require.Error(t, json.Unmarshal([]byte(`"ninety"`), &d))
}
