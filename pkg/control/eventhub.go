package control

import (
	"context"
	"fmt"
	"sync"
	"time"
)

const (
	// EventHistory is how many of its latest events an EventHub remembers, for clients that ask
	// for a replay (EventsRequest.Replay): one that reconnects after a hot restart or after it
	// lagged, `forkctl top` showing the recent events at once.
	EventHistory = 256
	// EventBuffer is how many events an EventHub holds for one client that does not read them
	// yet (more for one that asked for a longer replay, up to EventHistory). A client that falls
	// further behind is dropped (EventLagged) rather than make the master hold events without
	// bound or wait for it.
	EventBuffer = 256
)

// EventHub hands the master's events to the clients of GET /v1/events: a Backend publishes into
// it and returns Subscribe from its Events method. Publish never blocks, whatever the clients
// do. It is safe for concurrent use.
type EventHub struct {
	// history and buffer are EventHistory and EventBuffer, unless a test lowers them.
	history, buffer int

	mu     sync.Mutex
	seq    uint64
	recent []Event // the latest events, oldest first, at most history
	subs   map[*subscriber]struct{}
	closed bool
}

// subscriber is one client's stream. Its channel has room for limit events and one more, kept for
// the EventLagged that ends it.
type subscriber struct {
	ch    chan Event
	limit int
}

// NewEventHub returns an empty hub; its first event gets Seq 1.
func NewEventHub() *EventHub {
	return newEventHub(EventHistory, EventBuffer)
}

func newEventHub(history, buffer int) *EventHub {
	return &EventHub{history: history, buffer: buffer, subs: make(map[*subscriber]struct{})}
}

// Publish numbers ev (Seq), stamps it (Time, unless set), remembers it and hands it to every
// subscriber, and returns it as published. A subscriber whose buffer is full gets an EventLagged
// instead, and its stream ends. After Close, Publish only numbers and remembers.
func (h *EventHub) Publish(ev Event) Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	ev.Seq = h.seq
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	h.recent = append(h.recent, ev)
	if len(h.recent) > h.history {
		h.recent = h.recent[len(h.recent)-h.history:]
	}
	for s := range h.subs {
		if len(s.ch) < s.limit {
			s.ch <- ev
			continue
		}
		// Only Publish sends, under the lock, and it left the last place free for this.
		s.ch <- Event{Seq: ev.Seq, Time: ev.Time, Type: EventLagged,
			Message: fmt.Sprintf("this client fell %d events behind and was dropped: reconnect to go on", s.limit)}
		h.removeLocked(s)
	}
	return ev
}

// Subscribe returns a stream of the events published from now on, after, with req.Replay, the
// remembered ones whose Seq is above req.Since (all of them when Since is above every Seq: the
// client saw another master). The channel is closed when ctx ends, after an EventLagged, or at
// Close. After Close, Subscribe fails with ErrUnavailable. Its signature is Backend.Events'.
func (h *EventHub) Subscribe(ctx context.Context, req EventsRequest) (<-chan Event, error) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrUnavailable
	}
	var replay []Event
	if req.Replay {
		since := req.Since
		if since > h.seq {
			since = 0
		}
		replay = h.recent
		for len(replay) > 0 && replay[0].Seq <= since {
			replay = replay[1:]
		}
	}
	// A client catching up may be owed more than the buffer: the replay fits, whatever its length
	// (at most the history), and the buffer is that large for this client.
	s := &subscriber{limit: max(h.buffer, len(replay))}
	s.ch = make(chan Event, s.limit+1)
	for _, ev := range replay {
		s.ch <- ev
	}
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	context.AfterFunc(ctx, func() {
		h.mu.Lock()
		h.removeLocked(s)
		h.mu.Unlock()
	})
	return s.ch, nil
}

// removeLocked ends s's stream, once.
func (h *EventHub) removeLocked(s *subscriber) {
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.ch)
	}
}

// Recent returns the events the hub remembers, oldest first: what a master hands its new image
// in a hot restart, for Restore.
func (h *EventHub) Recent() []Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Event(nil), h.recent...)
}

// Restore makes an empty hub remember events, the Recent of another (the previous image of the
// master), and go on numbering after the last of them.
func (h *EventHub) Restore(events []Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recent = append(h.recent[:0], events[max(0, len(events)-h.history):]...)
	for _, ev := range events {
		h.seq = max(h.seq, ev.Seq)
	}
}

// Close ends every stream and refuses new ones: the master is going away.
func (h *EventHub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for s := range h.subs {
		h.removeLocked(s)
	}
}

// subscribers counts the open streams, for tests.
func (h *EventHub) subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}
