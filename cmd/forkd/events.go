package main

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// The control API's event stream (GET /v1/events), made from the master's log records.
//
// Until issue 13's executor hands the machine's typed records to an observer, the records that
// say what happened are the log's: the machine and the driver log each worker's spawn, readiness
// and exit, each rollout's start and end, with an "event" attribute (FORKD_EVENT in the journal)
// and the worker's index, PID and generation. eventHandler sits in front of the log's handler,
// sees every such record, whatever the log level, and publishes the ones the API reports. Where a
// record does not say all an event needs, the translator remembers it from an earlier one: how a
// worker was started (its spawn record), why forkd killed it (the timeout record before its exit),
// when a rollout began. When the observer exists, it replaces this file; the events stay the same.

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

// eventTranslator turns log records into events and publishes them. It is called from whichever
// goroutine logs, mostly the driver's loop, and never blocks it.
type eventTranslator struct {
	hub *control.EventHub
	// keepWorkers: this image took the cluster over in a hot restart that keeps the workers, so
	// the adoption ends the restart.
	keepWorkers bool

	mu sync.Mutex
	// paths holds how each booting worker was started, by PID, until it exits.
	paths map[int]string
	// kills holds why forkd killed a worker, by PID, until it exits.
	kills map[int]string
	// rollout is the rollout in progress, once it has begun.
	rollout *openRollout
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
	return &eventTranslator{hub: hub, paths: map[int]string{}, kills: map[int]string{}}
}

// restore takes over a previous image's events.
func (t *eventTranslator) restore(h *eventsHandover, keepWorkers bool) {
	if h == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.hub.Restore(h.Recent)
	t.rollout, t.keepWorkers = h.Rollout, keepWorkers
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

// Kinds of rollout as the log's event names spell them ("refork-start", "reload-done").
var rolloutKinds = []string{control.RolloutRefork, control.RolloutReload, control.RolloutRestart}

// record publishes the events that r reports, if any; attrs are the logger's own.
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
	rec := logRecord{msg: r.Message, level: r.Level, time: r.Time, attrs: make(map[string]slog.Value, len(attrs)+r.NumAttrs())}
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

// translate makes the events of a record named name, in order: usually one, none for a record
// that reports none.
func (t *eventTranslator) translate(name string, rec logRecord) []control.Event {
	switch name {
	case "worker-spawned":
		path := control.PathExec
		if strings.HasSuffix(rec.msg, "(forked)") {
			path = control.PathFork
		}
		t.paths[rec.int("pid")] = path
		return one(control.Event{Type: control.EventWorkerSpawned, Worker: rec.worker(), Path: path})
	case "worker-ready":
		return one(control.Event{Type: control.EventWorkerReady, Worker: rec.worker(), Path: t.paths[rec.int("pid")],
			BootSeconds: rec.duration("boot").Seconds()})
	case "boot-timeout", "heartbeat-timeout", "shutdown-timeout", "watchdog-trigger", "worker-stopping":
		t.kills[rec.int("pid")] = exitReasons[name]
		return nil
	case "worker-exited":
		return one(t.exited(rec))
	case "spawn-failed":
		w := rec.worker()
		w.PID = 0
		return one(control.Event{Type: control.EventSpawnFailed, Worker: w, Error: strings.TrimPrefix(rec.msg, "cannot spawn worker: ")})
	case "crash-loop":
		return one(control.Event{Type: control.EventCrashLoop, Worker: &control.EventWorker{Index: rec.int("worker")},
			Crashes: rec.int("crashes"), DelaySeconds: rec.duration("delay").Seconds()})
	case "restart-exec":
		return nil // published by handover, before the new image is given the events
	case "restart-adopted":
		return t.adopted(rec)
	case "scale":
		return one(control.Event{Type: control.EventScale, Workers: rec.int("workers"), Previous: rec.int("previous")})
	case "notify-dropped":
		return one(control.Event{Type: control.EventNotifyDropped, PID: rec.int("pid"),
			Reason: strings.TrimPrefix(rec.msg, "dropped a notification: "), Dropped: uint64(rec.int("dropped"))})
	case "cluster-ready":
		return one(control.Event{Type: control.EventClusterReady, Workers: rec.int("workers"), Generation: rec.int("generation")})
	case "cluster-stopping":
		events := one(control.Event{Type: control.EventClusterStopping, Immediate: strings.Contains(rec.msg, "immediately")})
		if r := t.rollout; r != nil {
			// The machine abandons the rollout without a record of its own.
			t.rollout = nil
			events = append(events, control.Event{Type: control.EventRolloutEnded, Kind: r.Kind, Result: control.ResultAborted,
				DurationSeconds: rec.time.Sub(r.Started).Seconds(), Error: "forkd is stopping",
				Message: r.Kind + " abandoned: forkd is stopping"})
		}
		return events
	case "cluster-stopped":
		return one(control.Event{Type: control.EventClusterStopped})
	}
	for _, kind := range rolloutKinds {
		switch name {
		case kind + "-queued":
			return one(control.Event{Type: control.EventRolloutQueued, Kind: kind})
		case kind + "-start":
			return t.rolloutStarted(kind, rec)
		case kind + "-done", kind + "-failed":
			return one(t.rolloutEnded(kind, rec))
		}
	}
	return nil
}

// exitReasons are the reasons of an exit that a record before it gave, by that record's name.
var exitReasons = map[string]string{
	"boot-timeout":      control.ExitBootTimeout,
	"heartbeat-timeout": control.ExitHeartbeatTimeout,
	"shutdown-timeout":  control.ExitShutdownTimeout,
	"watchdog-trigger":  control.ExitWatchdog,
	"worker-stopping":   control.ExitStoppedItself,
}

// exited makes a worker's exit event. The record says how the process ended, and with its level
// whether forkd expected it (info) or not (warning); why forkd killed it, or that it stopped on
// its own, was said before.
func (t *eventTranslator) exited(rec logRecord) control.Event {
	pid := rec.int("pid")
	reason, known := t.kills[pid]
	delete(t.kills, pid)
	delete(t.paths, pid)
	switch {
	case known && reason == control.ExitStoppedItself && rec.level > slog.LevelInfo:
		reason = control.ExitCrash // it said it was stopping, then failed: the machine counts a crash
	case known:
	case rec.level <= slog.LevelInfo:
		reason = control.ExitStopped
	default:
		reason = control.ExitCrash
	}
	return control.Event{Type: control.EventWorkerExited, Worker: rec.worker(), Reason: reason, Status: rec.str("status")}
}

// rolloutStarted opens a rollout. A hot restart has two records of its start: the old image's
// (the checks before the exec, without a generation), then the new image's (the phased restart
// that completes it), which continues the rollout the handover brought.
func (t *eventTranslator) rolloutStarted(kind string, rec logRecord) []control.Event {
	if r := t.rollout; kind == control.RolloutRestart && r != nil && r.Kind == kind {
		return nil
	}
	t.rollout = &openRollout{Kind: kind, Started: rec.time}
	return one(control.Event{Type: control.EventRolloutStarted, Kind: kind, Generation: rec.int("generation")})
}

// rolloutEnded closes the rollout; one that ends without having begun (a reload whose config
// does not load) has no duration.
func (t *eventTranslator) rolloutEnded(kind string, rec logRecord) control.Event {
	ev := control.Event{Type: control.EventRolloutEnded, Kind: kind, Generation: rec.int("generation"), Result: control.ResultSucceeded}
	if strings.HasSuffix(rec.str("event"), "-failed") {
		ev.Result = control.ResultFailed
		ev.Error = rec.msg
		for _, prefix := range []string{kind + " stopped: ", kind + " did not begin: ", "hot restart refused: "} {
			ev.Error = strings.TrimPrefix(ev.Error, prefix)
		}
		ev.Error = strings.TrimPrefix(ev.Error, "cluster: ")
	}
	if r := t.rollout; r != nil && r.Kind == kind {
		ev.DurationSeconds = rec.time.Sub(r.Started).Seconds()
		t.rollout = nil
	}
	return ev
}

// adopted makes the event of the new image taking the cluster over; with the workers kept, that
// ends the restart.
func (t *eventTranslator) adopted(rec logRecord) []control.Event {
	events := one(control.Event{Type: control.EventMasterRestart, Stage: control.MasterRestartAdopted})
	if t.keepWorkers {
		ended := control.Event{Type: control.EventRolloutEnded, Kind: control.RolloutRestart, Result: control.ResultSucceeded,
			Message: "restart done: the new master keeps the workers"}
		if r := t.rollout; r != nil {
			ended.DurationSeconds = rec.time.Sub(r.Started).Seconds()
		}
		t.rollout = nil
		events = append(events, ended)
	}
	return events
}

// logRecord is a log record's message, level, time and attributes, by key.
type logRecord struct {
	msg   string
	level slog.Level
	time  time.Time
	attrs map[string]slog.Value
}

func (r logRecord) str(key string) string {
	if v, ok := r.attrs[key]; ok && v.Kind() == slog.KindString {
		return v.String()
	}
	return ""
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

func (r logRecord) worker() *control.EventWorker {
	return &control.EventWorker{Index: r.int("worker"), PID: r.int("pid"), Generation: r.int("generation")}
}
