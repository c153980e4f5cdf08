package main

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// eventsOf logs through an eventHandler in front of a text log at level, and returns the log and
// the hub the events went to.
func eventsOf(level slog.Level) (*slog.Logger, *bytes.Buffer, *control.EventHub, *eventTranslator) {
	var out bytes.Buffer
	hub := control.NewEventHub()
	t := newEventTranslator(hub)
	next := slog.NewTextHandler(&out, &slog.HandlerOptions{Level: level})
	return slog.New(newEventHandler(next, t)), &out, hub, t
}

func types(events []control.Event) []string {
	var out []string
	for _, ev := range events {
		out = append(out, ev.Type)
	}
	return out
}

// The events do not depend on the log level: a log that shows warnings only still lets the stream
// see every worker's readiness.
func TestEventsSeeWhatTheLogLeavesOut(t *testing.T) {
	logger, out, hub, _ := eventsOf(slog.LevelWarn)
	logger.Info("worker spawned (forked)", "event", "worker-spawned", "worker", 1, "pid", 4301, "generation", 2)
	logger.Info("worker ready", "event", "worker-ready", "worker", 1, "pid", 4301, "generation", 2, "boot", 1500*time.Millisecond)
	logger.Debug("reaped a child that is not a worker", "event", "orphan-reaped", "pid", 9)
	require.Empty(t, out.String(), "the log keeps to its level")

	events := hub.Recent()
	require.Equal(t, []string{control.EventWorkerSpawned, control.EventWorkerReady}, types(events))
	ready := events[1]
	require.Equal(t, &control.EventWorker{Index: 1, PID: 4301, Generation: 2}, ready.Worker)
	require.Equal(t, control.PathFork, ready.Path, "remembered from the spawn")
	require.Equal(t, 1.5, ready.BootSeconds)
	require.Equal(t, "worker ready", ready.Message)

	logger.Warn("worker exited: exit status 1", "event", "worker-exited", "worker", 1, "pid", 4301, "generation", 2,
		"status", "exit status 1")
	require.Contains(t, out.String(), "worker exited: exit status 1", "what the log shows, it still shows")
}

func TestEventsExitReasons(t *testing.T) {
	logger, _, hub, _ := eventsOf(slog.LevelInfo)
	w := func(pid int) []any { return []any{"worker", 0, "pid", pid, "generation", 1} }
	logger.Error("worker sent no heartbeat (WATCHDOG=1) for 2s", append(w(10), "event", "heartbeat-timeout")...)
	logger.Warn("worker exited: killed by SIGKILL (heartbeat timeout)", append(w(10), "event", "worker-exited", "status", "killed by SIGKILL (heartbeat timeout)")...)
	logger.Warn("worker exited: killed by SIGSEGV", append(w(11), "event", "worker-exited", "status", "killed by SIGSEGV")...)
	logger.Info("worker exited: exit status 0 (shutdown)", append(w(12), "event", "worker-exited", "status", "exit status 0 (shutdown)")...)
	logger.Info("worker is stopping on its own (STOPPING=1)", append(w(13), "event", "worker-stopping")...)
	logger.Info("worker exited: exit status 0 (stopped on its own)", append(w(13), "event", "worker-exited", "status", "exit status 0")...)
	logger.Info("worker is stopping on its own (STOPPING=1)", append(w(14), "event", "worker-stopping")...)
	logger.Warn("worker exited: exit status 1 (stopped on its own)", append(w(14), "event", "worker-exited", "status", "exit status 1")...)

	var reasons []string
	for _, ev := range hub.Recent() {
		reasons = append(reasons, ev.Reason)
	}
	require.Equal(t, []string{control.ExitHeartbeatTimeout, control.ExitCrash, control.ExitStopped, control.ExitStoppedItself,
		control.ExitCrash}, reasons)
}

func TestEventsRollouts(t *testing.T) {
	logger, _, hub, _ := eventsOf(slog.LevelInfo)
	logger.Info("refork: re-forking workers 1..2 from worker 0 as generation 2", "event", "refork-start", "generation", 2)
	logger.Error("refork stopped: cluster: rollout failed: worker 0, the template, went away", "event", "refork-failed", "generation", 2)
	logger.Error("reload did not begin: the config does not load", "event", "reload-failed", "generation", 3)
	logger.Info("reload: replacing 3 workers with generation 3", "event", "reload-start", "generation", 3)
	logger.Info("stopping: draining the workers", "event", "cluster-stopping", "workers", 3)

	events := hub.Recent()
	require.Equal(t, []string{control.EventRolloutStarted, control.EventRolloutEnded, control.EventRolloutEnded,
		control.EventRolloutStarted, control.EventClusterStopping, control.EventRolloutEnded}, types(events))
	failed := events[1]
	require.Equal(t, control.ResultFailed, failed.Result)
	require.Equal(t, "rollout failed: worker 0, the template, went away", failed.Error, "as the status's last_rollout says it")
	require.Positive(t, failed.DurationSeconds)
	notBegun := events[2]
	require.Equal(t, "the config does not load", notBegun.Error)
	require.Zero(t, notBegun.DurationSeconds, "it never began")
	aborted := events[5]
	require.Equal(t, control.RolloutReload, aborted.Kind)
	require.Equal(t, control.ResultAborted, aborted.Result, "a stop abandons the rollout without a record of its own")
}

// A hot restart hands the events and the open rollout to the new image, which, keeping the
// workers, ends the restart when it has adopted them.
func TestEventsHandover(t *testing.T) {
	logger, _, hub, old := eventsOf(slog.LevelInfo)
	logger.Info("hot restart (keeping the workers): checking the new binary /usr/bin/forkd", "event", "restart-start")
	h := old.handover(4242)
	logger.Info("hot restart: exec /usr/bin/forkd in place", "event", "restart-exec")
	require.Equal(t, []string{control.EventRolloutStarted, control.EventMasterRestart}, types(hub.Recent()))

	newLogger, _, newHub, renewed := eventsOf(slog.LevelInfo)
	renewed.restore(h, true)
	newLogger.Info("hot restart: took over the cluster; keeping the workers as they are", "event", "restart-adopted")
	events := newHub.Recent()
	require.Equal(t, []string{control.EventRolloutStarted, control.EventMasterRestart, control.EventMasterRestart,
		control.EventRolloutEnded}, types(events))
	require.Equal(t, []uint64{1, 2, 3, 4}, []uint64{events[0].Seq, events[1].Seq, events[2].Seq, events[3].Seq})
	require.Equal(t, control.MasterRestartAdopted, events[2].Stage)
	require.Equal(t, control.ResultSucceeded, events[3].Result)
	require.Positive(t, events[3].DurationSeconds, "timed from the old image's start")
}

func TestEventHandlerWithAttrs(t *testing.T) {
	logger, _, hub, _ := eventsOf(slog.LevelInfo)
	logger.With("event", "scale").Info("scaling from 2 to 3 workers", "workers", 3, "previous", 2)
	logger.WithGroup("g").Info("grouped", "event", "scale")
	require.NoError(t, logger.Handler().Handle(context.Background(), slog.NewRecord(time.Now(), slog.LevelInfo, "no event", 0)))
	events := hub.Recent()
	require.Len(t, events, 1)
	require.Equal(t, 3, events[0].Workers)
}
