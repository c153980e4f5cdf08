package cluster

import (
	"fmt"
	"log/slog"
	"math/bits"
	"time"
)

// This file holds what a worker says over sd_notify.

func (m *Machine) notified(e Notified) {
	w, ok := m.workers[e.Worker]
	if !ok {
		// Sent before the worker exited, read after: not a stranger's, and too late to matter.
		m.late++
		m.log(slog.LevelDebug, "ignored a notification from a worker that has exited", slog.String("event", "notify-late"),
			slog.Uint64("worker_id", uint64(e.Worker)), slog.Uint64("late", m.late))
		return
	}
	msg := e.Message
	if msg.HasStatus {
		w.statusLine = msg.Status
	}
	if msg.HasRequests {
		m.countRequests(w, msg.Requests)
	}
	if msg.HasBusy {
		busy := msg.Busy
		w.busy = &busy
	}
	if msg.HasHeapSize {
		m.heapReported(w, msg.HeapSize)
	}
	if msg.WatchdogTimeout > 0 {
		w.heartbeat = msg.WatchdogTimeout
	}
	if msg.Ready && w.state == Booting {
		m.becomeReady(w)
	}
	if (msg.Watchdog || msg.WatchdogTimeout > 0) && w.state == Ready && w.heartbeat > 0 {
		w.deadline = m.now.Add(w.heartbeat)
	}
	if ext := msg.ExtendTimeout; ext > 0 && (w.state == Booting || w.state == Stopping) {
		if t := m.now.Add(ext); t.After(w.deadline) {
			w.deadline = t
		}
	}
	if msg.Stopping && (w.state == Booting || w.state == Ready) {
		m.log(slog.LevelInfo, "worker is stopping on its own (STOPPING=1)", m.workerAttrs(w, "worker-stopping")...)
		if m.template == w {
			m.loseTemplate()
		}
		w.state = Stopping
		w.stopAsked = "STOPPING=1"
		w.stopReason = "stopped on its own"
		w.deadline = m.now.Add(m.cfg.ShutdownTimeout)
	}
	if msg.WatchdogTrigger && w.state != Killing && w.state != Spawning {
		m.log(slog.LevelError, "worker triggered its watchdog (WATCHDOG=trigger)", m.workerAttrs(w, "watchdog-trigger")...)
		w.killReason = ExitWatchdogTrigger
		m.kill(w, "watchdog triggered")
	}
	if msg.HasRequests {
		m.maybeAutoRefork()
	}
}

// maxRequestRate bounds how fast a worker's X_FORKD_REQUESTS may grow: ten million requests a
// second is beyond any one process; a count that grows faster is a bug, not traffic.
const maxRequestRate = 10_000_000

// countRequests takes a worker's cumulative request count, unless it makes no sense: a count that
// goes back (a process's cumulative count never does; a forked worker starts its own at 0), or
// grows faster than maxRequestRate since the last one (or since the worker spawned, with a second
// of slack). Such a count is ignored, and said once per worker; the rest of the message applies.
func (m *Machine) countRequests(w *worker, n uint64) {
	since := w.requestsAt
	if since.IsZero() {
		since = w.spawnedAt
	}
	elapsed := max(m.now.Sub(since), 0) + time.Second
	limit := w.requests + uint64(elapsed.Seconds()*maxRequestRate)
	var why string
	switch {
	case n < w.requests:
		why = fmt.Sprintf("X_FORKD_REQUESTS=%d after %d: a cumulative count never goes back", n, w.requests)
	case n > limit:
		why = fmt.Sprintf("X_FORKD_REQUESTS=%d after %d in %s: more than %d requests a second", n, w.requests,
			elapsed-time.Second, maxRequestRate)
	default:
		if n > w.requests {
			m.trafficAt = m.now
		}
		w.requests, w.requestsAt = n, m.now
		return
	}
	if !w.badRequests {
		w.badRequests = true
		m.log(slog.LevelWarn, "ignoring the worker's request count: "+why+" (said once per worker)",
			m.workerAttrs(w, "requests-ignored")...)
	}
}

func (m *Machine) notifyRejected(e NotifyRejected) {
	before := m.dropped
	m.dropped += max(e.Count, 1)
	m.record(NotifyDropped{Reason: e.Reason, Count: max(e.Count, 1)})
	// At every power of two passed: a process flooding the socket cannot flood the log.
	if bits.Len64(m.dropped) > bits.Len64(before) {
		why := e.Detail
		if why == "" {
			why = e.Reason.String()
		}
		m.log(slog.LevelWarn, "dropped a notification: "+why, slog.String("event", "notify-dropped"),
			slog.String("reason", e.Reason.String()), slog.Int("pid", e.PID), slog.Uint64("dropped", m.dropped))
	}
}
