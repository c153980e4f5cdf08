package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/cluster"
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

// The events the log makes do not depend on its level: a log that shows warnings only still lets
// the stream see a scale.
func TestEventsSeeWhatTheLogLeavesOut(t *testing.T) {
	logger, out, hub, _ := eventsOf(slog.LevelWarn)
	logger.Info("scaling from 2 to 3 workers", "event", "scale", "workers", 3, "previous", 2)
	logger.Debug("reaped a child that is not a worker", "event", "orphan-reaped", "pid", 9)
	require.Empty(t, out.String(), "the log keeps to its level")

	events := hub.Recent()
	require.Equal(t, []string{control.EventScale}, types(events))
	require.Equal(t, 3, events[0].Workers)
	require.Equal(t, 2, events[0].Previous)
	require.Equal(t, "scaling from 2 to 3 workers", events[0].Message)

	logger.Warn("worker 1 is crash-looping", "event", "crash-loop", "worker", 1, "crashes", 3, "delay", 4*time.Second)
	require.Contains(t, out.String(), "worker 1 is crash-looping", "what the log shows, it still shows")
	require.Equal(t, 4.0, hub.Recent()[1].DelaySeconds)
}

// The machine's records of workers are the worker events, at the time the driver gives them.
func TestEventsOfWorkerRecords(t *testing.T) {
	_, _, hub, tr := eventsOf(slog.LevelInfo)
	at := time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)
	tr.Observe(at, cluster.WorkerSpawned{Slot: 1, Generation: 2, PID: 4301, Forked: true})
	tr.Observe(at.Add(1500*time.Millisecond), cluster.WorkerReady{Slot: 1, Generation: 2, PID: 4301, Forked: true, Boot: 1500 * time.Millisecond})
	tr.Observe(at.Add(2*time.Second), cluster.WorkerExited{Slot: 1, Generation: 2, PID: 4301, Reason: cluster.ExitHeartbeatTimeout,
		Status: "killed by SIGKILL (heartbeat timeout)"})
	tr.Observe(at.Add(3*time.Second), cluster.WorkerExited{Slot: 2, Generation: 2, Reason: cluster.ExitCrash,
		Status: "spawn failed: fork/exec /srv/app: no such file or directory"})
	tr.Observe(at.Add(4*time.Second), cluster.NotifyDropped{Reason: cluster.DropUnknownSender, Count: 1})

	events := hub.Recent()
	require.Equal(t, []string{control.EventWorkerSpawned, control.EventWorkerReady, control.EventWorkerExited, control.EventSpawnFailed},
		types(events), "a dropped datagram is the log's event (its record has the sender)")
	worker := &control.EventWorker{Index: 1, PID: 4301, Generation: 2}
	require.Equal(t, control.Event{Seq: 1, Time: at, Type: control.EventWorkerSpawned, Worker: worker, Path: control.PathFork}, events[0])
	require.Equal(t, control.Event{Seq: 2, Time: at.Add(1500 * time.Millisecond), Type: control.EventWorkerReady, Worker: worker,
		Path: control.PathFork, BootSeconds: 1.5}, events[1])
	require.Equal(t, control.ExitHeartbeatTimeout, events[2].Reason)
	require.Equal(t, "killed by SIGKILL (heartbeat timeout)", events[2].Status)
	require.Equal(t, control.Event{Seq: 4, Time: at.Add(3 * time.Second), Type: control.EventSpawnFailed,
		Worker: &control.EventWorker{Index: 2, Generation: 2}, Error: "fork/exec /srv/app: no such file or directory"}, events[3],
		"a worker whose process never started")
}

// Every reason the machine gives has its name in the API.
func TestEventsExitReasons(t *testing.T) {
	for reason, want := range map[cluster.ExitReason]string{
		cluster.ExitStopped:          control.ExitStopped,
		cluster.ExitRecycled:         control.ExitStoppedItself,
		cluster.ExitCrash:            control.ExitCrash,
		cluster.ExitBootTimeout:      control.ExitBootTimeout,
		cluster.ExitHeartbeatTimeout: control.ExitHeartbeatTimeout,
		cluster.ExitShutdownTimeout:  control.ExitShutdownTimeout,
		cluster.ExitWatchdogTrigger:  control.ExitWatchdog,
		"cgroup-oom":                 "cgroup_oom", // one newer than this build's list
	} {
		_, _, hub, tr := eventsOf(slog.LevelInfo)
		tr.Observe(time.Now(), cluster.WorkerExited{Slot: 0, Generation: 1, PID: 10, Reason: reason, Status: "exit status 1"})
		require.Equal(t, want, hub.Recent()[0].Reason, "reason %q", reason)
	}
}

func TestEventsRollouts(t *testing.T) {
	logger, _, hub, tr := eventsOf(slog.LevelInfo)
	at := time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)
	tr.Observe(at, cluster.RolloutStarted{Kind: cluster.KindRefork, Generation: 2})
	tr.Observe(at.Add(2*time.Second), cluster.RolloutEnded{Kind: cluster.KindRefork, Generation: 2,
		Err: errors.New("cluster: rollout failed: worker 0, the template, went away"), Duration: 2 * time.Second})
	logger.Info("reload: queued behind the refork in progress", "event", "reload-queued")
	tr.Observe(at.Add(3*time.Second), cluster.RolloutEnded{Kind: cluster.KindReload, Generation: 1,
		Err: errors.New("the config does not load")})
	tr.Observe(at.Add(4*time.Second), cluster.RolloutStarted{Kind: cluster.KindReload, Generation: 2})
	tr.Observe(at.Add(9*time.Second), cluster.RolloutEnded{Kind: cluster.KindReload, Generation: 1,
		Err: fmt.Errorf("reload: %w", cluster.ErrStopping), Duration: 5 * time.Second})
	tr.Observe(at.Add(9*time.Second), cluster.RolloutEnded{Kind: cluster.KindRefork, Generation: 1, Err: cluster.ErrStopping})

	events := hub.Recent()
	require.Equal(t, []string{control.EventRolloutStarted, control.EventRolloutEnded, control.EventRolloutQueued,
		control.EventRolloutEnded, control.EventRolloutStarted, control.EventRolloutEnded, control.EventRolloutEnded}, types(events))
	require.Equal(t, control.Event{Seq: 1, Time: at, Type: control.EventRolloutStarted, Kind: control.RolloutRefork, Generation: 2}, events[0])
	require.Equal(t, control.Event{Seq: 2, Time: at.Add(2 * time.Second), Type: control.EventRolloutEnded, Kind: control.RolloutRefork,
		Generation: 2, Result: control.ResultFailed, DurationSeconds: 2,
		Error: "rollout failed: worker 0, the template, went away"}, events[1], "the error as the status's last_rollout says it")
	require.Equal(t, control.RolloutReload, events[2].Kind)
	notBegun := events[3]
	require.Equal(t, control.ResultFailed, notBegun.Result)
	require.Equal(t, "the config does not load", notBegun.Error)
	require.Zero(t, notBegun.DurationSeconds, "it never began")
	aborted := events[5]
	require.Equal(t, control.RolloutReload, aborted.Kind)
	require.Equal(t, control.ResultAborted, aborted.Result, "a stop abandons the rollout")
	require.Equal(t, 5.0, aborted.DurationSeconds)
	require.Equal(t, control.ResultAborted, events[6].Result, "and what was queued")
	require.Zero(t, events[6].DurationSeconds)
}

// A hot restart hands the events and the open rollout to the new image. Keeping the workers, the
// machine ends the restart as it adopts them; replacing them, the phased restart that follows
// ends it. Either way the restart is timed from its start in the old image, and the adoption
// comes before the end.
func TestEventsHandover(t *testing.T) {
	for _, keepWorkers := range []bool{true, false} {
		t.Run(fmt.Sprintf("keep-workers=%v", keepWorkers), func(t *testing.T) {
			logger, _, hub, old := eventsOf(slog.LevelInfo)
			logger.Info("hot restart (keeping the workers): checking the new binary", "event", "restart-start")
			h := old.handover(4242)
			logger.Info("hot restart: exec /usr/bin/forkd in place", "event", "restart-exec")
			require.Equal(t, []string{control.EventRolloutStarted, control.EventMasterRestart}, types(hub.Recent()))

			newLogger, _, newHub, renewed := eventsOf(slog.LevelInfo)
			renewed.restore(h)
			at := time.Now().Add(3 * time.Second)
			if keepWorkers {
				renewed.Observe(at, cluster.RolloutEnded{Kind: cluster.KindRestart, Generation: 1})
				newLogger.Info("hot restart: took over the cluster; keeping the workers as they are", "event", "restart-adopted")
			} else {
				newLogger.Info("hot restart: took over the cluster; replacing the workers by a phased restart", "event", "restart-adopted")
				renewed.Observe(at, cluster.RolloutStarted{Kind: cluster.KindRestart, Generation: 2})
				renewed.Observe(at, cluster.RolloutEnded{Kind: cluster.KindRestart, Generation: 2, Duration: time.Millisecond})
			}
			events := newHub.Recent()
			require.Equal(t, []string{control.EventRolloutStarted, control.EventMasterRestart, control.EventMasterRestart,
				control.EventRolloutEnded}, types(events), "one start, one adoption")
			require.Equal(t, []uint64{1, 2, 3, 4}, []uint64{events[0].Seq, events[1].Seq, events[2].Seq, events[3].Seq})
			require.Equal(t, control.MasterRestartAdopted, events[2].Stage)
			require.Equal(t, control.ResultSucceeded, events[3].Result)
			require.GreaterOrEqual(t, events[3].DurationSeconds, 3.0, "timed from the old image's start")
		})
	}
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
