package control

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// waitUntil polls cond until it holds; the long limit only turns a hang into a failure.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("gave up waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openEvents opens s's event stream and waits until the hub has it.
func openEvents(t *testing.T, s *testServer, hub *EventHub, req EventsRequest) *EventStream {
	t.Helper()
	before := hub.subscribers()
	stream, err := s.client.Events(context.Background(), req)
	require.NoError(t, err)
	t.Cleanup(func() { stream.Close() })
	waitUntil(t, "the hub has the stream", func() bool { return hub.subscribers() > before })
	return stream
}

func next(t *testing.T, stream *EventStream) Event {
	t.Helper()
	ev, err := stream.Next()
	require.NoError(t, err)
	return ev
}

func sampleEvent() Event {
	return Event{Type: EventWorkerExited, Message: "worker exited: exit status 1",
		Worker: &EventWorker{Index: 0, PID: 4300, Generation: 2}, Reason: ExitCrash, Status: "exit status 1"}
}

func TestEventsStream(t *testing.T) {
	hub := NewEventHub()
	s := startServer(t, &fakeBackend{hub: hub})
	stream := openEvents(t, s, hub, EventsRequest{})

	sent := hub.Publish(sampleEvent())
	hub.Publish(Event{Type: EventRolloutEnded, Kind: RolloutRefork, Generation: 3, Result: ResultSucceeded, DurationSeconds: 1.5})

	got := next(t, stream)
	require.Equal(t, uint64(1), got.Seq)
	require.WithinDuration(t, sent.Time, got.Time, 0)
	got.Time = sent.Time // the round trip drops the monotonic clock reading
	require.Equal(t, sent, got)
	got = next(t, stream)
	require.Equal(t, uint64(2), got.Seq)
	require.Equal(t, ResultSucceeded, got.Result)
}

// The wire format is an API of its own: `forkctl events -o json | jq` reads these names.
func TestEventsWireFormat(t *testing.T) {
	hub := NewEventHub()
	s := startServer(t, &fakeBackend{hub: hub})
	hub.Publish(sampleEvent())

	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", s.socket)
		},
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://forkd/v1/events?since=0")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/x-ndjson", resp.Header.Get("Content-Type"))

	text, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	var line map[string]any
	require.NoError(t, json.Unmarshal([]byte(text), &line))
	require.Equal(t, float64(1), line["seq"])
	require.Equal(t, "worker-exited", line["type"])
	require.Equal(t, map[string]any{"index": float64(0), "pid": float64(4300), "generation": float64(2)}, line["worker"])
	require.Equal(t, "crash", line["reason"])
	require.Equal(t, "exit status 1", line["status"])
	for _, absent := range []string{"kind", "generation", "result", "boot_seconds", "error"} {
		require.NotContains(t, line, absent, "fields of other types are absent")
	}
}

func TestEventsReplay(t *testing.T) {
	hub := newEventHub(4, 8)
	for range 6 {
		hub.Publish(sampleEvent())
	}
	s := startServer(t, &fakeBackend{hub: hub})

	seqs := func(stream *EventStream, n int) []uint64 {
		var got []uint64
		for range n {
			got = append(got, next(t, stream).Seq)
		}
		return got
	}
	// The hub remembers the last 4: a replay from 4 gets 5 and 6, then what comes next.
	stream := openEvents(t, s, hub, EventsRequest{Replay: true, Since: 4})
	hub.Publish(sampleEvent())
	require.Equal(t, []uint64{5, 6, 7}, seqs(stream, 3))
	// From 0: what it still has, 4 to 7; a client can tell from the jump after 0 that 1 to 3 are lost.
	stream = openEvents(t, s, hub, EventsRequest{Replay: true, Since: 0})
	require.Equal(t, []uint64{4, 5, 6, 7}, seqs(stream, 4))
	// A Since above every Seq is another master's: all of them.
	stream = openEvents(t, s, hub, EventsRequest{Replay: true, Since: 100})
	require.Equal(t, []uint64{4, 5, 6, 7}, seqs(stream, 4))
}

// A hot restart hands the events over: the new image's hub numbers on.
func TestEventHubRestore(t *testing.T) {
	old := NewEventHub()
	for range 3 {
		old.Publish(sampleEvent())
	}
	restored := NewEventHub()
	restored.Restore(old.Recent())
	require.Equal(t, uint64(4), restored.Publish(sampleEvent()).Seq)
	require.Len(t, restored.Recent(), 4)
}

// A client that reads too slowly is dropped with a last "lagged" record; the master never waits
// for it.
func TestEventsSlowClientIsDroppedAsLagged(t *testing.T) {
	hub := newEventHub(16, 4)
	s := startServer(t, &fakeBackend{hub: hub}, withLimits(limits{readTimeout: time.Minute, writeTimeout: time.Minute,
		idleTimeout: time.Minute, maxConnections: 64, fdReserve: 0}))
	stream := openEvents(t, s, hub, EventsRequest{})

	// Far more than the hub holds for a client plus what the sockets buffer, published while the
	// client reads nothing: Publish returns every time.
	big := sampleEvent()
	big.Message = strings.Repeat("x", 4096)
	for range 2000 {
		hub.Publish(big)
	}
	require.Zero(t, hub.subscribers(), "the client was dropped")

	var last Event
	for want := uint64(1); ; want++ {
		ev, err := stream.Next()
		require.NoError(t, err)
		require.Equal(t, want, ev.Seq, "the client gets events in order, without a gap, until it is dropped")
		if ev.Type == EventLagged {
			last = ev
			break
		}
	}
	require.Less(t, last.Seq, uint64(2000))
	require.Contains(t, last.Message, "fell 4 events behind")
	_, err := stream.Next()
	require.ErrorIs(t, err, io.EOF, "the lagged record is the last")
}

// A client that hangs up ends its subscription.
func TestEventsClientGoesAway(t *testing.T) {
	hub := NewEventHub()
	s := startServer(t, &fakeBackend{hub: hub})
	stream := openEvents(t, s, hub, EventsRequest{})
	require.NoError(t, stream.Close())
	waitUntil(t, "the hub forgets the stream", func() bool { return hub.subscribers() == 0 })
	hub.Publish(sampleEvent()) // nothing to deliver to, nothing to block on
}

// The stream lasts longer than the bounds on reading a request and on idle connections.
func TestEventsOutliveRequestTimeouts(t *testing.T) {
	hub := NewEventHub()
	s := startServer(t, &fakeBackend{hub: hub}, withLimits(limits{readTimeout: 100 * time.Millisecond,
		writeTimeout: time.Minute, idleTimeout: 100 * time.Millisecond, maxConnections: 64, fdReserve: 0}))
	stream := openEvents(t, s, hub, EventsRequest{})
	time.Sleep(time.Second) // ten times both bounds
	hub.Publish(sampleEvent())
	require.Equal(t, EventWorkerExited, next(t, stream).Type)
}

// A client that stops reading holds its connection for the write timeout at most, as any reply's.
func TestEventsStalledReaderIsCut(t *testing.T) {
	hub := NewEventHub()
	s := startServer(t, &fakeBackend{hub: hub}, withLimits(limits{readTimeout: time.Minute,
		writeTimeout: 200 * time.Millisecond, idleTimeout: time.Minute, maxConnections: 64, fdReserve: 0}))
	conn, err := net.Dial("unix", s.socket)
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, "GET /v1/events HTTP/1.1\r\nHost: forkd\r\n\r\n")
	require.NoError(t, err)
	waitUntil(t, "the hub has the stream", func() bool { return hub.subscribers() == 1 })

	// Fewer events than the hub holds for a client (so it is not dropped as lagged), more bytes
	// than the sockets buffer: the server's write blocks, and gives up.
	big := sampleEvent()
	big.Message = strings.Repeat("x", 16<<10)
	for range EventBuffer - 1 {
		hub.Publish(big)
	}
	waitUntil(t, "the server gives up the stalled stream", func() bool { return hub.subscribers() == 0 })
}

// Streams never lock the operator out: at the connection limit, a new connection takes the place
// of the oldest stream.
func TestEventsGiveWayToNewConnections(t *testing.T) {
	hub := NewEventHub()
	s := startServer(t, &fakeBackend{hub: hub}, withLimits(limits{readTimeout: time.Minute,
		writeTimeout: time.Minute, idleTimeout: time.Minute, maxConnections: 2, fdReserve: 0}))
	first := openEvents(t, s, hub, EventsRequest{})
	openEvents(t, s, hub, EventsRequest{})

	_, err := NewClient(s.socket).Status(context.Background())
	require.NoError(t, err)
	_, err = first.Next()
	require.Error(t, err, "the oldest stream made room")
}

func TestEventsRequestErrors(t *testing.T) {
	s := startServer(t, &fakeBackend{})
	for _, tc := range []struct{ path, want string }{
		{"/v1/events?since=x", `since="x" is not a sequence number`},
		{"/v1/events?since=-1", `since="-1" is not a sequence number`},
		{"/v1/events?follow=1", `unknown parameter "follow"`},
		{"/v1/events?since=1&since=2", "since is given more than once"},
	} {
		reply := s.do(t, http.MethodGet, tc.path, "")
		require.Equal(t, http.StatusBadRequest, reply.code, tc.path)
		require.Contains(t, reply.errorMessage(t), tc.want, tc.path)
	}
	reply := s.do(t, http.MethodPost, "/v1/events", "")
	require.Equal(t, http.StatusMethodNotAllowed, reply.code)

	hub := NewEventHub()
	hub.Close()
	_, err := startServer(t, &fakeBackend{hub: hub}).client.Events(context.Background(), EventsRequest{})
	require.ErrorIs(t, err, ErrUnavailable)
}

// The stream is a read, like the status: workers may follow it with status access only.
func TestEventsWorkerAccess(t *testing.T) {
	s := startServer(t, &fakeBackend{}, WithWorkers(&fakeWorkers{worker: true}, WorkerAccessNone))
	_, err := s.client.Events(context.Background(), EventsRequest{})
	var e *Error
	require.ErrorAs(t, err, &e)
	require.Equal(t, http.StatusForbidden, e.Code)

	hub := NewEventHub()
	s = startServer(t, &fakeBackend{hub: hub}, WithWorkers(&fakeWorkers{worker: true}, WorkerAccessStatus))
	openEvents(t, s, hub, EventsRequest{})
}

// Shutdown ends the streams, after what they hold, instead of waiting for them to end.
func TestShutdownEndsEventStreams(t *testing.T) {
	hub := NewEventHub()
	socket := filepath.Join(t.TempDir(), "control.sock")
	l, err := Listen(socket)
	require.NoError(t, err)
	srv := NewServer(&fakeBackend{hub: hub}, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	stream, err := NewClient(socket).Events(context.Background(), EventsRequest{})
	require.NoError(t, err)
	defer stream.Close()
	waitUntil(t, "the hub has the stream", func() bool { return hub.subscribers() == 1 })

	hub.Publish(Event{Type: EventClusterStopped})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, srv.Shutdown(ctx))
	require.NoError(t, <-served)
	require.Equal(t, EventClusterStopped, next(t, stream).Type)
	_, err = stream.Next()
	require.ErrorIs(t, err, io.EOF)
}

// FollowEvents catches up after it lagged: it reconnects and gets the rest from the master's
// memory, every event once and in order, and ends when forkd stops.
func TestFollowEventsCatchesUpAfterLagging(t *testing.T) {
	hub := newEventHub(EventHistory, 4)
	s := startServer(t, &fakeBackend{hub: hub})
	release := make(chan struct{})
	var seqs []uint64
	lagged := 0
	done := make(chan error, 1)
	go func() {
		done <- s.client.FollowEvents(context.Background(), EventsRequest{}, func(ev Event) error {
			<-release // a client slower than the master
			if ev.Type == EventLagged {
				lagged++
			} else {
				seqs = append(seqs, ev.Seq)
			}
			return nil
		})
	}()
	waitUntil(t, "the hub has the stream", func() bool { return hub.subscribers() == 1 })
	big := sampleEvent()
	big.Message = strings.Repeat("x", 16<<10)
	for range 200 {
		hub.Publish(big)
	}
	require.Zero(t, hub.subscribers(), "dropped as lagged")
	hub.Publish(Event{Type: EventClusterStopped})
	close(release)
	waitUntil(t, "it has caught up", func() bool { return hub.subscribers() == 1 })
	hub.Close()
	require.NoError(t, receive(t, done, "FollowEvents to end"), "forkd stopped")

	require.Equal(t, 1, lagged)
	want := make([]uint64, 201)
	for i := range want {
		want[i] = uint64(i + 1)
	}
	require.Equal(t, want, seqs)
}
