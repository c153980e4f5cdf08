package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// peerClientEnv makes the test binary act as a control client instead of running tests: it calls
// Status on the socket named by the variable and prints the outcome as JSON (see peerOutcome). The
// peer-credential test runs it under another uid.
const peerClientEnv = "FORKD_CONTROL_TEST_PEER_SOCKET"

type peerOutcome struct {
	UID     int    `json:"uid"`
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func TestMain(m *testing.M) {
	if socket := os.Getenv(peerClientEnv); socket != "" {
		os.Exit(runPeerClient(socket))
	}
	os.Exit(m.Run())
}

func runPeerClient(socket string) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out := peerOutcome{UID: os.Getuid()}
	_, err := NewClient(socket).Status(ctx)
	var e *Error
	switch {
	case err == nil:
		out.Code = http.StatusOK
	case errors.As(err, &e):
		out.Code, out.Message = e.Code, e.Message
	default:
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		return 1
	}
	return 0
}

// fakeBackend answers with its function fields; a nil field gives a plain success.
type fakeBackend struct {
	status  func(context.Context) (Status, error)
	stop    func(context.Context, StopRequest) error
	scale   func(context.Context, ScaleRequest) (ScaleResponse, error)
	refork  func(context.Context, ReforkRequest) (ReforkResponse, error)
	reload  func(context.Context, ReloadRequest) (ReloadResponse, error)
	restart func(context.Context, RestartRequest) (RestartResponse, error)
	// hub, when set, is where Events subscribes; without it, Events streams nothing.
	hub *EventHub
}

func (b *fakeBackend) Status(ctx context.Context) (Status, error) {
	if b.status == nil {
		return Status{Name: "fake"}, nil
	}
	return b.status(ctx)
}

func (b *fakeBackend) Stop(ctx context.Context, req StopRequest) error {
	if b.stop == nil {
		return nil
	}
	return b.stop(ctx, req)
}

func (b *fakeBackend) Scale(ctx context.Context, req ScaleRequest) (ScaleResponse, error) {
	if b.scale == nil {
		return ScaleResponse{Workers: req.Workers}, nil
	}
	return b.scale(ctx, req)
}

func (b *fakeBackend) Refork(ctx context.Context, req ReforkRequest) (ReforkResponse, error) {
	if b.refork == nil {
		return ReforkResponse{Generation: 2}, nil
	}
	return b.refork(ctx, req)
}

func (b *fakeBackend) Reload(ctx context.Context, req ReloadRequest) (ReloadResponse, error) {
	if b.reload == nil {
		return ReloadResponse{Generation: 2}, nil
	}
	return b.reload(ctx, req)
}

func (b *fakeBackend) Restart(ctx context.Context, req RestartRequest) (RestartResponse, error) {
	if b.restart == nil {
		return RestartResponse{Generation: 2}, nil
	}
	return b.restart(ctx, req)
}

func (b *fakeBackend) Events(ctx context.Context, req EventsRequest) (<-chan Event, error) {
	if b.hub == nil {
		return NewEventHub().Subscribe(ctx, req)
	}
	return b.hub.Subscribe(ctx, req)
}

// testServer is a Server for b on a real socket in a temporary directory.
type testServer struct {
	socket string
	server *Server
	client *Client
}

func startServer(t *testing.T, b Backend, opts ...Option) *testServer {
	t.Helper()
	return startServerAt(t, b, filepath.Join(t.TempDir(), "control.sock"), opts...)
}

func startServerAt(t *testing.T, b Backend, socket string, opts ...Option) *testServer {
	t.Helper()
	l, err := Listen(socket)
	require.NoError(t, err)
	logger := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := NewServer(b, logger, opts...)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
		require.NoError(t, <-served)
	})
	return &testServer{socket: socket, server: srv, client: NewClient(socket)}
}

// rawReply is what the server sent back to a hand-made request.
type rawReply struct {
	code   int
	header http.Header
	body   string
	// close: the server said it closes the connection after this reply.
	close bool
}

// errorMessage decodes the reply's {"error": ...}, failing the test if it is not one.
func (r rawReply) errorMessage(t *testing.T) string {
	t.Helper()
	var eb map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.body), &eb), "body %q", r.body)
	require.Len(t, eb, 1, "an error reply has exactly one field: %q", r.body)
	msg, ok := eb["error"].(string)
	require.True(t, ok, "body %q", r.body)
	return msg
}

// do sends a request as written, bypassing Client, so that malformed ones can be sent too.
func (s *testServer) do(t *testing.T, method, path, body string) rawReply {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.socket)
		},
	}}
	defer hc.CloseIdleConnections()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://forkd"+path, r)
	require.NoError(t, err)
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if _, own := s.server.handlers[path]; !own || resp.StatusCode != http.StatusOK {
		require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	}
	return rawReply{code: resp.StatusCode, header: resp.Header, body: string(data), close: resp.Close}
}

// receive waits for a value from ch. The long limit only turns a hang into a readable failure; it
// times nothing.
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
