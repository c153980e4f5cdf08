package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/forkd/forkd/pkg/control"
	"github.com/spf13/cobra"
)

func (c *cli) eventsCommand() *cobra.Command {
	var output string
	var replay bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Follow forkd's events as they happen",
		Long: `Print what happens in forkd as it happens: workers spawned, ready and exited (with why: a
crash, a boot or heartbeat timeout, a stop), rollouts (refork, reload, restart) started and ended
with their result and duration, scaling, dropped notifications, a hot restart's steps.

One line per event, with its local time; -o json prints the API's events instead, one JSON object
per line. --recent first prints the events forkd still remembers (its last 256). forkctl follows
forkd through a hot restart (and says so if it missed events), and ends when forkd stops or on
Ctrl-C. --timeout does not apply: the stream lasts as long as forkd runs.`,
		Example: "  forkctl events\n  forkctl events -o json | jq 'select(.type == \"worker-exited\")'",
		Args:    noArgs,
		RunE: c.action(func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usagef("unknown output format %q: want text or json", output)
			}
			client, err := c.client()
			if err != nil {
				return err
			}
			print := func(ev control.Event) error { return writeEventLine(c.stdout, ev) }
			if output == "json" {
				enc := json.NewEncoder(c.stdout)
				print = func(ev control.Event) error { return enc.Encode(ev) }
			}
			return c.followEvents(cmd.Context(), client, replay, print)
		}),
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json (one object per line)")
	cmd.Flags().BoolVar(&replay, "recent", false, "begin with the events forkd still remembers")
	_ = cmd.RegisterFlagCompletionFunc("output",
		cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// followEvents hands each event of client's stream to handle until forkd stops or ctx ends (which
// is no error: Ctrl-C is how one stops following). It follows forkd through a hot restart, and
// says when it missed events.
func (c *cli) followEvents(ctx context.Context, client *control.Client, replay bool, handle func(control.Event) error) error {
	var last uint64
	err := client.FollowEvents(ctx, control.EventsRequest{Replay: replay}, func(ev control.Event) error {
		switch {
		case ev.Type == control.EventLagged:
			return handle(ev)
		case last != 0 && ev.Seq <= last:
			fmt.Fprintf(c.stderr, "forkctl: forkd was started afresh: its events begin again\n")
		case last != 0 && ev.Seq > last+1:
			fmt.Fprintf(c.stderr, "forkctl: missed %d events (forkd no longer remembers them)\n", ev.Seq-last-1)
		}
		last = ev.Seq
		return handle(ev)
	})
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// eventTimeLayout is how events show their time: local, to the millisecond.
const eventTimeLayout = "2006-01-02 15:04:05.000"

// writeEventLine prints ev for a human: its time, its type, and what happened.
func writeEventLine(w io.Writer, ev control.Event) error {
	_, err := fmt.Fprintf(w, "%s  %-16s  %s\n", ev.Time.Local().Format(eventTimeLayout), printable(ev.Type), describeEvent(ev))
	return err
}

// describeEvent says what ev reports, in a sentence made of its fields; a type forkctl does not
// know shows forkd's own message.
func describeEvent(ev control.Event) string {
	var s string
	switch ev.Type {
	case control.EventWorkerSpawned:
		s = fmt.Sprintf("%s spawned%s", workerName(ev.Worker), pathNote(ev.Path))
	case control.EventWorkerReady:
		s = fmt.Sprintf("%s ready after %s%s", workerName(ev.Worker), seconds(ev.BootSeconds), pathNote(ev.Path))
	case control.EventWorkerExited:
		s = fmt.Sprintf("%s exited: %s", workerName(ev.Worker), ev.Reason)
		if ev.Status != "" {
			s += " (" + ev.Status + ")"
		}
	case control.EventSpawnFailed:
		s = fmt.Sprintf("%s could not be spawned: %s", workerName(ev.Worker), ev.Error)
	case control.EventCrashLoop:
		s = fmt.Sprintf("worker %d crashed %d times in a row: restarting in %s", workerIndex(ev.Worker), ev.Crashes, seconds(ev.DelaySeconds))
	case control.EventRolloutQueued:
		s = ev.Kind + " queued behind the operation in progress"
	case control.EventRolloutStarted:
		s = ev.Kind + " started"
		if ev.Generation != 0 {
			s += fmt.Sprintf(": generation %d", ev.Generation)
		}
	case control.EventRolloutEnded:
		s = ev.Kind + " " + ev.Result
		if ev.Generation != 0 {
			s += fmt.Sprintf(", generation %d", ev.Generation)
		}
		if ev.DurationSeconds != 0 {
			s += ", after " + seconds(ev.DurationSeconds)
		}
		if ev.Error != "" {
			s += ": " + ev.Error
		}
	case control.EventMasterRestart:
		switch ev.Stage {
		case control.MasterRestartExec:
			s = fmt.Sprintf("the master (pid %d) execs its new image", ev.PID)
		case control.MasterRestartAdopted:
			s = "the new master image took the cluster over"
		default:
			s = ev.Message
		}
	case control.EventScale:
		s = fmt.Sprintf("scaled from %d to %d workers", ev.Previous, ev.Workers)
	case control.EventNotifyDropped:
		s = fmt.Sprintf("%d sd_notify datagrams dropped so far; the last from pid %d: %s", ev.Dropped, ev.PID, ev.Reason)
	case control.EventClusterReady:
		s = fmt.Sprintf("all %d workers ready, generation %d", ev.Workers, ev.Generation)
	case control.EventClusterStopping:
		s = "forkd is stopping: draining the workers"
		if ev.Immediate {
			s = "forkd is stopping immediately: SIGKILL to every worker"
		}
	case control.EventClusterStopped:
		s = "every worker has exited: forkd exits"
	case control.EventLagged:
		s = "forkctl fell behind and was dropped: reconnecting for what it missed"
	default:
		s = ev.Message
	}
	return printable(s)
}

// workerName names the worker of an event: "worker 2 (pid 4242, generation 3)".
func workerName(w *control.EventWorker) string {
	if w == nil {
		return "a worker"
	}
	if w.PID == 0 {
		return fmt.Sprintf("worker %d (generation %d)", w.Index, w.Generation)
	}
	return fmt.Sprintf("worker %d (pid %d, generation %d)", w.Index, w.PID, w.Generation)
}

func workerIndex(w *control.EventWorker) int {
	if w == nil {
		return 0
	}
	return w.Index
}

func pathNote(path string) string {
	switch path {
	case control.PathFork:
		return ", forked"
	case control.PathExec:
		return ", exec'd"
	}
	return ""
}

// seconds formats a number of seconds as a duration: "0.412s", "1m3.2s".
func seconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d >= time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// eventSummary is ev on one line without its date, for top's list of recent events.
func eventSummary(ev control.Event) string {
	return ev.Time.Local().Format("15:04:05.000") + "  " + fmt.Sprintf("%-16s", printable(ev.Type)) + "  " + describeEvent(ev)
}
