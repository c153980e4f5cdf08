package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/control"
)

// The control API's event stream (GET /v1/events): what the machine records, and what only its
// log says.
//
// The worker and rollout events come from the machine's records (cluster.Record), which the driver
// hands to its observer (supervisor.Observer): the eventTranslator is that observer. The machine
// records no step of a hot restart, no scale, crash loop, queued operation, or the cluster ready,
// stopping or stopped; those events come from the log's records, which the machine and the driver
// emit with an "event" attribute (FORKD_EVENT in the journal): eventHandler sits in front of the
// log's handler and sees every such record, whatever the log level. So do dropped notifications,
// whose log record has their sender and is already limited to a few in a flood (the total passing
// a power of two), where the machine records every drop. Both sources come from the driver's loop,
// in the order of the machine's actions, so the events keep the order of what happened.

// eventHandler is a slog.Handler that passes every record on to the log's handler (at the log's
// level) and turns those that report an event into control events.
type eventHandler struct {
	next slog.Handler
	t    *eventTranslator
	// attrs are the logger's own attributes (slog.Logger.With), looked at with each record's.
	attrs []slog.Attr
}

func newEventHandler(next slog.Handler, t *eventTranslator) *eventHandler {
	return &eventHandler{next: next, t: t}
}

// Enabled lets through every record from info up, for the events, even when the log shows less.
func (h *eventHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= slog.LevelInfo || h.next.Enabled(ctx, level)
}

func (h *eventHandler) Handle(ctx context.Context, r slog.Record) error {
	h.t.record(r, h.attrs)
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

func (h *eventHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &eventHandler{next: h.next.WithAttrs(attrs), t: h.t, attrs: append(h.attrs[:len(h.attrs):len(h.attrs)], attrs...)}
}

// WithGroup leaves the events behind: no record that reports one is logged in a group.
func (h *eventHandler) WithGroup(name string) slog.Handler {
	return h.next.WithGroup(name)
}

// eventTranslator turns the machine's records and the log's into events and publishes them. It is
// called from whichever goroutine logs or observes, mostly the driver's loop, and never blocks it.
type eventTranslator struct {
	hub *control.EventHub

	mu sync.Mutex
	// rollout is the rollout in progress, once it has begun.
	rollout *openRollout
	// adopting: this image took the cluster over in a hot restart and has not said so yet.
	adopting bool
}

// openRollout is a rollout that has begun and not ended.
type openRollout struct {
	Kind    string    `json:"kind"`
	Started time.Time `json:"started"`
}

// eventsHandover is what a master hands its new image of the event stream in a hot restart.
type eventsHandover struct {
	Recent  []control.Event `json:"recent"`
	Rollout *openRollout    `json:"rollout,omitempty"`
}

func newEventTranslator(hub *control.EventHub) *eventTranslator {
	return &eventTranslator{hub: hub}
}

// restore takes over a previous image's events, in a hot restart.
func (t *eventTranslator) restore(h *eventsHandover) {
	if h == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.hub.Restore(h.Recent)
	t.rollout, t.adopting = h.Rollout, true
}

// handover publishes the hot restart's exec and returns what the new image needs: it is called
// just before the exec (from the driver's HandoverExtra). If the exec fails, the restart's
// failure follows as an event of its own.
func (t *eventTranslator) handover(pid int) *eventsHandover {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.hub.Publish(control.Event{Type: control.EventMasterRestart, Stage: control.MasterRestartExec, PID: pid,
		Message: "hot restart: the master execs its new image"})
	return &eventsHandover{Recent: t.hub.Recent(), Rollout: t.rollout}
}

// Observe publishes the events of what the machine recorded, at the time of the event that led
// to it: the translator is the driver's Observer.
func (t *eventTranslator) Observe(at time.Time, what cluster.Happening) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ev := range t.happened(at, what) {
		ev.Time = at
		t.hub.Publish(ev)
	}
}

// happened makes the events of a record of the machine.
func (t *eventTranslator) happened(at time.Time, what cluster.Happening) []control.Event {
	switch h := what.(type) {
	case cluster.WorkerSpawned:
		return one(control.Event{Type: control.EventWorkerSpawned, Worker: eventWorker(h.Slot, h.PID, h.Generation),
			Path: spawnPath(h.Forked)})
	case cluster.WorkerReady:
		return one(control.Event{Type: control.EventWorkerReady, Worker: eventWorker(h.Slot, h.PID, h.Generation),
			Path: spawnPath(h.Forked), BootSeconds: h.Boot.Seconds()})
	case cluster.WorkerExited:
		if h.PID == 0 {
			// The process never started.
			return one(control.Event{Type: control.EventSpawnFailed, Worker: eventWorker(h.Slot, 0, h.Generation),
				Error: strings.TrimPrefix(h.Status, "spawn failed: ")})
		}
		return one(control.Event{Type: control.EventWorkerExited, Worker: eventWorker(h.Slot, h.PID, h.Generation),
			Reason: exitReason(h.Reason), Status: h.Status})
	case cluster.RolloutStarted:
		return t.rolloutStarted(rolloutKind(h.Kind), h.Generation, at)
	case cluster.RolloutEnded:
		return t.rolloutEnded(h, at)
	}
	return nil // NotifyDropped: the log's record says it (see the top of this file)
}

func eventWorker(slot, pid, generation int) *control.EventWorker {
	return &control.EventWorker{Index: slot, PID: pid, Generation: generation}
}

func spawnPath(forked bool) string {
	if forked {
		return control.PathFork
	}
	return control.PathExec
}

// exitReasons are the control API's names for why a worker exited.
var exitReasons = map[cluster.ExitReason]string{
	cluster.ExitStopped:          control.ExitStopped,
	cluster.ExitRecycled:         control.ExitStoppedItself,
	cluster.ExitCrash:            control.ExitCrash,
	cluster.ExitBootTimeout:      control.ExitBootTimeout,
	cluster.ExitHeartbeatTimeout: control.ExitHeartbeatTimeout,
	cluster.ExitShutdownTimeout:  control.ExitShutdownTimeout,
	cluster.ExitWatchdogTrigger:  control.ExitWatchdog,
	cluster.ExitOOM:              control.ExitOOM,
	cluster.ExitMaxRequests:      control.ExitMaxRequests,
	cluster.ExitMemoryLimit:      control.ExitMemoryLimit,
}

func exitReason(r cluster.ExitReason) string {
	if name, ok := exitReasons[r]; ok {
		return name
	}
	return strings.ReplaceAll(string(r), "-", "_") // a reason newer than this list, as the API spells them
}

// record publishes the events that the log record r reports, if any; attrs are the logger's own.
func (t *eventTranslator) record(r slog.Record, attrs []slog.Attr) {
	// Most records report nothing: look for the name before reading the rest.
	name := ""
	find := func(a slog.Attr) bool {
		if a.Key == "event" && a.Value.Kind() == slog.KindString {
			name = a.Value.String()
		}
		return true
	}
	for _, a := range attrs {
		find(a)
	}
	r.Attrs(find)
	if name == "" {
		return
	}
	rec := logRecord{msg: r.Message, time: r.Time, attrs: make(map[string]slog.Value, len(attrs)+r.NumAttrs())}
	for _, a := range attrs {
		rec.attrs[a.Key] = a.Value.Resolve()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.Resolve()
		return true
	})
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, ev := range t.translate(name, rec) {
		if ev.Time.IsZero() {
			ev.Time = rec.time
		}
		if ev.Message == "" {
			ev.Message = rec.msg
		}
		t.hub.Publish(ev)
	}
}

// one is the event of a record that reports one event.
func one(ev control.Event) []control.Event { return []control.Event{ev} }

// translate makes the events of a log record named name: those the machine does not record.
func (t *eventTranslator) translate(name string, rec logRecord) []control.Event {
	switch name {
	case "crash-loop":
		return one(control.Event{Type: control.EventCrashLoop, Worker: &control.EventWorker{Index: rec.int("worker")},
			Crashes: rec.int("crashes"), DelaySeconds: rec.duration("delay").Seconds()})
	case "restart-start":
		// The machine records the start of a hot restart's phased restart, after the exec; the
		// restart begins here, in the old image, with the checks of the new binary.
		return t.rolloutStarted(control.RolloutRestart, 0, rec.time)
	case "restart-exec":
		return nil // published by handover, before the new image is given the events
	case "restart-adopted":
		return t.adopted()
	case "scale":
		return one(control.Event{Type: control.EventScale, Workers: rec.int("workers"), Previous: rec.int("previous")})
	case "notify-dropped":
		return one(control.Event{Type: control.EventNotifyDropped, PID: rec.int("pid"),
			Reason: strings.TrimPrefix(rec.msg, "dropped a notification: "), Dropped: uint64(rec.int("dropped"))})
	case "cluster-ready":
		return one(control.Event{Type: control.EventClusterReady, Workers: rec.int("workers"), Generation: rec.int("generation")})
	case "cluster-stopping":
		return one(control.Event{Type: control.EventClusterStopping, Immediate: strings.Contains(rec.msg, "immediately")})
	case "cluster-stopped":
		return one(control.Event{Type: control.EventClusterStopped})
	}
	for _, kind := range rolloutKinds {
		if name == kind+"-queued" {
			return one(control.Event{Type: control.EventRolloutQueued, Kind: kind})
		}
	}
	return nil
}

// Kinds of rollout as the log's event names spell them ("refork-queued").
var rolloutKinds = []string{control.RolloutRefork, control.RolloutReload, control.RolloutRestart}

// rolloutStarted opens a rollout. A hot restart has two starts: the old image's (the checks before
// the exec, without a generation), then the new image's (the phased restart that completes it),
// which continues the rollout the handover brought.
func (t *eventTranslator) rolloutStarted(kind string, generation int, at time.Time) []control.Event {
	if r := t.rollout; kind == control.RolloutRestart && r != nil && r.Kind == kind {
		return nil
	}
	t.rollout = &openRollout{Kind: kind, Started: at}
	return one(control.Event{Type: control.EventRolloutStarted, Kind: kind, Generation: generation})
}

// rolloutEnded closes the rollout. Its duration runs from its start as this stream saw it, which
// for a hot restart is the old image's; one that ends without having begun (a reload whose config
// does not load, an operation still queued when forkd stops) has none. In the image that took the
// cluster over keeping the workers, the machine ends the restart as it adopts them: the adoption
// is said first.
func (t *eventTranslator) rolloutEnded(h cluster.RolloutEnded, at time.Time) []control.Event {
	kind := rolloutKind(h.Kind)
	ev := control.Event{Type: control.EventRolloutEnded, Kind: kind, Generation: h.Generation, Result: control.ResultSucceeded,
		DurationSeconds: h.Duration.Seconds()}
	switch {
	case errors.Is(h.Err, cluster.ErrStopping):
		ev.Result, ev.Error = control.ResultAborted, "forkd is stopping"
	case h.Err != nil:
		ev.Result, ev.Error = control.ResultFailed, strings.TrimPrefix(h.Err.Error(), "cluster: ")
	}
	if r := t.rollout; r != nil && r.Kind == kind {
		ev.DurationSeconds = at.Sub(r.Started).Seconds()
		t.rollout = nil
	}
	var events []control.Event
	if kind == control.RolloutRestart && t.adopting {
		events = t.adopted()
	}
	return append(events, ev)
}

// adopted makes the event of the new image taking the cluster over, once.
func (t *eventTranslator) adopted() []control.Event {
	if !t.adopting {
		return nil
	}
	t.adopting = false
	return one(control.Event{Type: control.EventMasterRestart, Stage: control.MasterRestartAdopted,
		Message: "hot restart: the new master image took the cluster over"})
}

// logRecord is a log record's message, time and attributes, by key.
type logRecord struct {
	msg   string
	time  time.Time
	attrs map[string]slog.Value
}

func (r logRecord) int(key string) int {
	v, ok := r.attrs[key]
	switch {
	case !ok:
		return 0
	case v.Kind() == slog.KindInt64:
		return int(v.Int64())
	case v.Kind() == slog.KindUint64:
		return int(v.Uint64())
	}
	return 0
}

func (r logRecord) duration(key string) time.Duration {
	if v, ok := r.attrs[key]; ok && v.Kind() == slog.KindDuration {
		return v.Duration()
	}
	return 0
}
