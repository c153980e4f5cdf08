package control

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// withLimits shortens the server's bounds for a test.
func withLimits(l limits) Option {
	return func(s *Server) { s.limits = l }
}

// stalledBody connects and sends a request whose body never comes in full, as the clients that
// took a master to its descriptor limit did.
func stalledBody(t *testing.T, socket string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", socket)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_, err = io.WriteString(c, "POST /v1/scale HTTP/1.1\r\nHost: forkd\r\nContent-Length: 100\r\n\r\n{")
	require.NoError(t, err)
	return c
}

// closedByServer waits for the server to close c, reading (and discarding) what it sends.
func closedByServer(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(within)))
	_, err := io.Copy(io.Discard, c)
	if !errors.Is(err, syscall.ECONNRESET) { // closed with the request unread
		require.NoError(t, err, "the server kept the stalled connection open")
	}
}

// TestStalledBodyIsBounded: a body that never arrives in full held its connection for ever; the
// whole request, body included, must arrive within the read timeout.
func TestStalledBodyIsBounded(t *testing.T) {
	s := startServer(t, &fakeBackend{}, withLimits(limits{readTimeout: 200 * time.Millisecond,
		writeTimeout: time.Second, idleTimeout: time.Minute, maxConnections: 64, fdReserve: 0}))
	closedByServer(t, stalledBody(t, s.socket), 30*time.Second)
}

// TestStalledClientsCannotLockTheOperatorOut: at the connection limit, a new connection takes the
// place of the oldest one that is not being answered.
func TestStalledClientsCannotLockTheOperatorOut(t *testing.T) {
	s := startServer(t, &fakeBackend{}, withLimits(limits{readTimeout: time.Hour,
		writeTimeout: time.Second, idleTimeout: time.Hour, maxConnections: 4, fdReserve: 0}))
	var stalled []net.Conn
	for range 4 {
		stalled = append(stalled, stalledBody(t, s.socket))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := s.client.Status(ctx)
	require.NoError(t, err, "the operator's status at the connection limit")
	closedByServer(t, stalled[0], 30*time.Second)
}

// TestConnectionsBeingAnsweredAreKept: when every connection waits for its answer, a new one is
// closed, not one of them.
func TestConnectionsBeingAnsweredAreKept(t *testing.T) {
	release := make(chan struct{})
	waiting := make(chan struct{}, 2)
	s := startServer(t, &fakeBackend{reload: func(ctx context.Context, _ ReloadRequest) (ReloadResponse, error) {
		waiting <- struct{}{}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return ReloadResponse{Generation: 2}, nil
	}}, withLimits(limits{readTimeout: time.Hour, writeTimeout: time.Second, idleTimeout: time.Hour,
		maxConnections: 2, fdReserve: 0}))

	answers := make(chan error, 2)
	for range 2 {
		client := NewClient(s.socket)
		go func() {
			_, err := client.Reload(context.Background(), ReloadRequest{Wait: true})
			answers <- err
		}()
		receive(t, waiting, "the reload to reach the backend")
	}
	c, err := net.Dial("unix", s.socket)
	require.NoError(t, err)
	defer c.Close()
	closedByServer(t, c, 30*time.Second)

	close(release)
	for range 2 {
		require.NoError(t, receive(t, answers, "a waiting reload's answer"))
	}
}

// TestWaitOutlastsTheReadTimeout: the read timeout bounds reading a request, not the wait for its
// answer.
func TestWaitOutlastsTheReadTimeout(t *testing.T) {
	s := startServer(t, &fakeBackend{reload: func(ctx context.Context, _ ReloadRequest) (ReloadResponse, error) {
		select {
		case <-time.After(time.Second):
			return ReloadResponse{Generation: 7}, nil
		case <-ctx.Done():
			return ReloadResponse{}, ctx.Err()
		}
	}}, withLimits(limits{readTimeout: 100 * time.Millisecond, writeTimeout: time.Second,
		idleTimeout: time.Minute, maxConnections: 64, fdReserve: 0}))

	resp, err := s.client.Reload(context.Background(), ReloadRequest{Wait: true})
	require.NoError(t, err)
	require.Equal(t, 7, resp.Generation)
}

// TestDescriptorReserve: a connection that would take one of the master's last descriptors is
// closed at once.
func TestDescriptorReserve(t *testing.T) {
	s := startServer(t, &fakeBackend{}, withLimits(limits{readTimeout: time.Minute, writeTimeout: time.Second,
		idleTimeout: time.Minute, maxConnections: 64, fdReserve: 1 << 30}))
	c, err := net.Dial("unix", s.socket)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, "GET /v1/status HTTP/1.1\r\nHost: forkd\r\n\r\n")
	if err == nil {
		require.NoError(t, c.SetReadDeadline(time.Now().Add(30*time.Second)))
		_, err = http.ReadResponse(bufio.NewReader(c), nil)
	}
	require.Error(t, err, "a connection in the descriptor reserve was answered")
}
