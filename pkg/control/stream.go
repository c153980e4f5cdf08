package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// GET /v1/events: the server streams the Backend's events as newline-delimited JSON, and the
// client reads them (Client.Events).

// eventStream is the reply of the events endpoint: serveHTTP streams it instead of encoding it.
type eventStream struct {
	events <-chan Event
}

// events is the endpoint of GET /v1/events: it checks the query and subscribes.
func (s *Server) events(ctx context.Context, q url.Values, _ []byte) (any, error) {
	req, err := parseEventsQuery(q)
	if err != nil {
		return nil, &Error{Code: http.StatusBadRequest, Message: err.Error()}
	}
	events, err := s.backend.Events(ctx, req)
	if err != nil {
		return nil, err
	}
	return eventStream{events: events}, nil
}

// parseEventsQuery reads GET /v1/events' query: nothing, or since=N. Anything else is refused,
// as unknown fields of a body are.
func parseEventsQuery(q url.Values) (EventsRequest, error) {
	var req EventsRequest
	for key, values := range q {
		if key != "since" {
			return req, fmt.Errorf("events: unknown parameter %q (the only one is since=SEQ)", key)
		}
		if len(values) != 1 {
			return req, errors.New("events: since is given more than once")
		}
		n, err := strconv.ParseUint(values[0], 10, 64)
		if err != nil {
			return req, fmt.Errorf("events: since=%q is not a sequence number (0 or more)", values[0])
		}
		req.Replay, req.Since = true, n
	}
	return req, nil
}

// maxEventBatch bounds how many events the server writes before it flushes them.
const maxEventBatch = 64

// stream writes the events of es as JSON lines until the channel closes (the hub dropped a client
// that lagged, or closed), the client goes away, the server shuts down (after what is already
// buffered), or a write does not get out within the write timeout. It returns why the stream
// ended, for the log; nil for the channel closing.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, es eventStream) error {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	// write sends batch: each write must get out within the write timeout, as any reply's, so a
	// client that stops reading holds its connection that long at most.
	write := func(batch []Event) error {
		if err := rc.SetWriteDeadline(time.Now().Add(s.limits.writeTimeout)); err != nil {
			return err
		}
		for _, ev := range batch {
			if err := enc.Encode(ev); err != nil {
				return err
			}
		}
		return rc.Flush()
	}
	// The header goes out at once: the client knows the stream is open before the first event.
	if err := write(nil); err != nil {
		return err
	}
	batch := make([]Event, 0, maxEventBatch)
	for {
		select {
		case ev, ok := <-es.events:
			if !ok {
				return nil
			}
			batch = append(batch[:0], ev)
			ok = fill(&batch, es.events)
			if err := write(batch); err != nil {
				return err
			}
			if !ok {
				return nil
			}
		case <-r.Context().Done():
			return r.Context().Err()
		case <-s.closing:
			batch = batch[:0]
			fill(&batch, es.events)
			if err := write(batch); err != nil {
				return err
			}
			return errors.New("the server shuts down")
		}
	}
}

// fill adds to batch the events that are ready, up to maxEventBatch, without waiting; it reports
// false if the channel closed.
func fill(batch *[]Event, events <-chan Event) bool {
	for len(*batch) < maxEventBatch {
		select {
		case ev, ok := <-events:
			if !ok {
				return false
			}
			*batch = append(*batch, ev)
		default:
			return true
		}
	}
	return true
}

// maxEventBytes bounds one line of the stream the client reads; an event is a few hundred bytes.
const maxEventBytes = 64 << 10

// EventStream is an open GET /v1/events, which Next reads. It is not safe for concurrent use.
type EventStream struct {
	body io.ReadCloser
	r    *bufio.Reader
	// done: the stream ended with an EventLagged.
	done bool
}

// Events opens the stream of forkd's events (see Event): with req.Replay, the remembered events
// after req.Since first. It fails as the other methods do, and with a *Error of Code 404 when
// the forkd that answers is too old to stream events. The stream lasts until ctx ends, Close,
// or the server ends it.
func (c *Client) Events(ctx context.Context, req EventsRequest) (*EventStream, error) {
	path := "/v1/events"
	if req.Replay {
		path += "?since=" + strconv.FormatUint(req.Since, 10)
	}
	resp, err := c.send(ctx, http.MethodGet, path, nil)
	if err != nil {
		return nil, err
	}
	return &EventStream{body: resp.Body, r: bufio.NewReaderSize(resp.Body, maxEventBytes)}, nil
}

// Next returns the next event, waiting for it. It returns io.EOF once the server has ended the
// stream: after an EventLagged (which Next returns first, as an event), when forkd stops, or
// when the master execs itself in a hot restart (a client that goes on reconnects with
// EventsRequest{Replay: true, Since: the last Seq it saw}). Any other error means the stream
// broke off or did not parse.
func (s *EventStream) Next() (Event, error) {
	if s.done {
		return Event{}, io.EOF
	}
	for {
		line, err := s.r.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			return Event{}, fmt.Errorf("control: events: a line longer than %d bytes", maxEventBytes)
		case errors.Is(err, io.EOF) && len(bytes.TrimSpace(line)) == 0:
			return Event{}, io.EOF
		case errors.Is(err, io.EOF):
			return Event{}, fmt.Errorf("control: events: the stream broke off in a line: %w", io.ErrUnexpectedEOF)
		case err != nil:
			return Event{}, fmt.Errorf("control: events: %w", err)
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var ev Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return Event{}, fmt.Errorf("control: events: %w", err)
		}
		s.done = ev.Type == EventLagged
		return ev, nil
	}
}

// FollowEvents hands each event of forkd's stream to handle, as it comes, until ctx ends (ctx's
// error), handle fails (its error), or forkd stops (nil: the stream ended after an
// EventClusterStopped). The stream begins as req says. When it ends otherwise, because the master
// exec'd itself in a hot restart or dropped this client as lagged (handle sees the EventLagged),
// FollowEvents reconnects and asks for the remembered events after the last one it saw, so that
// handle gets every event the master still has, once and in order. A Seq that jumps means events
// were lost (the master no longer had them); one that goes down, that forkd was started afresh.
// The first connection fails as Events does; after it, a socket on which nothing answers for a
// minute ends FollowEvents with an error matching ErrNotRunning.
func (c *Client) FollowEvents(ctx context.Context, req EventsRequest, handle func(Event) error) error {
	stream, err := c.Events(ctx, req)
	if err != nil {
		return err
	}
	var last uint64
	for {
		stopped := false
		for {
			ev, err := stream.Next()
			if err != nil {
				break // the end of the stream, or a cut connection: reconnect, and see
			}
			if err := handle(ev); err != nil {
				stream.Close()
				return err
			}
			if ev.Type != EventLagged {
				last = ev.Seq
			}
			stopped = ev.Type == EventClusterStopped
		}
		stream.Close()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case stopped:
			return nil
		}
		if stream, err = c.reconnectEvents(ctx, EventsRequest{Replay: true, Since: last}); err != nil {
			return err
		}
	}
}

// reconnectEvents opens the stream again, waiting for a master that re-execs itself.
func (c *Client) reconnectEvents(ctx context.Context, req EventsRequest) (*EventStream, error) {
	var back comeback
	for {
		stream, err := c.Events(ctx, req)
		switch {
		case err == nil:
			return stream, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		if err := back.failed(err, "the end of its event stream"); err != nil {
			return nil, err
		}
		back.wait(ctx)
	}
}

// Close ends the stream.
func (s *EventStream) Close() error {
	return s.body.Close()
}
