package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/forkd/forkd/pkg/control"
	"github.com/spf13/cobra"
)

func (c *cli) statusCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show forkd and its workers",
		Long: `Show forkd and its workers: a summary of the master, then one row per worker slot.

The STATUS column is the worker's last STATUS= line; for a worker in crash-loop backoff it says
how the last process ended and when the next one starts. -o json prints the API's status object.`,
		Args: noArgs,
		RunE: c.action(func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usagef("unknown output format %q: want table or json", output)
			}
			client, err := c.client()
			if err != nil {
				return err
			}
			ctx, cancel := c.context(cmd.Context(), false)
			defer cancel()
			st, err := client.Status(ctx)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeStatusJSON(c.stdout, st)
			}
			return writeStatusTable(c.stdout, st, time.Now())
		}),
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	_ = cmd.RegisterFlagCompletionFunc("output",
		cobra.FixedCompletions([]string{"table", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func writeStatusJSON(w io.Writer, st control.Status) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// writeStatusTable prints st for a human: the master as "key: value" lines, then a table of
// worker slots. now is the reference for "restarting in".
func writeStatusTable(w io.Writer, st control.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }

	row("name:", printable(st.Name))
	row("version:", printable(st.Version))
	row("master pid:", strconv.Itoa(st.MasterPID))
	row("uptime:", humanDuration(time.Duration(st.Uptime)))
	row("phase:", fmt.Sprintf("%s (generation %d)", printable(st.Phase), st.Generation))
	row("workers:", fmt.Sprintf("%d/%d ready (%s mode)", st.Ready, st.Workers, printable(st.Mode)))
	row("listeners:", listenersSummary(st))
	row("dropped notifications:", strconv.FormatUint(st.DroppedNotifications, 10))
	if st.StatusLine != "" {
		row("status:", printable(st.StatusLine))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)

	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row("INDEX", "PID", "GEN", "STATE", "UPTIME", "RESTARTS", "REQUESTS", "STATUS")
	for _, wk := range st.WorkerList {
		pid, uptime := "-", "-"
		if wk.PID != 0 {
			pid = strconv.Itoa(wk.PID)
			uptime = humanDuration(time.Duration(wk.Uptime))
		}
		row(strconv.Itoa(wk.Index), pid, strconv.Itoa(wk.Generation), printable(wk.State), uptime,
			strconv.Itoa(wk.Restarts), strconv.FormatUint(wk.Requests, 10), workerStatus(wk, now))
	}
	return tw.Flush()
}

func listenersSummary(st control.Status) string {
	if len(st.Listeners) == 0 {
		return "none"
	}
	names := make([]string, len(st.Listeners))
	for i, l := range st.Listeners {
		names[i] = printable(l.Name + " " + l.Address)
	}
	origin := "bound by forkd"
	if st.SocketActivated {
		origin = "socket-activated"
	}
	return strings.Join(names, ", ") + " (" + origin + ")"
}

// workerStatus is a worker's STATUS column: its last status line, or, in backoff, why it is down
// and when it comes back; "-" for nothing, like the other columns.
func workerStatus(wk control.Worker, now time.Time) string {
	if wk.State != control.WorkerBackoff {
		if wk.StatusLine == "" {
			return "-"
		}
		return printable(wk.StatusLine)
	}
	var parts []string
	if wk.LastExit != "" {
		parts = append(parts, "last exit: "+printable(wk.LastExit))
	}
	if !wk.NextRestart.IsZero() {
		if wait := wk.NextRestart.Sub(now); wait > 0 {
			parts = append(parts, "restarting in "+humanDuration(wait))
		} else {
			parts = append(parts, "restarting now")
		}
	}
	return strings.Join(parts, "; ")
}

// humanDuration rounds d to its two largest units: "45s", "12m3s", "2h5m", "3d4h".
func humanDuration(d time.Duration) string {
	if d < time.Second {
		return "0s"
	}
	s := int64(d / time.Second)
	days, hours, minutes, seconds := s/86400, s/3600%24, s/60%60, s%60
	pair := func(big int64, bigUnit string, small int64, smallUnit string) string {
		if small == 0 {
			return fmt.Sprintf("%d%s", big, bigUnit)
		}
		return fmt.Sprintf("%d%s%d%s", big, bigUnit, small, smallUnit)
	}
	switch {
	case days > 0:
		return pair(days, "d", hours, "h")
	case hours > 0:
		return pair(hours, "h", minutes, "m")
	case minutes > 0:
		return pair(minutes, "m", seconds, "s")
	}
	return fmt.Sprintf("%ds", seconds)
}

// printable makes text that workers chose (status lines, exit reasons) safe for a terminal and a
// table: a worker could send escape sequences or tabs in STATUS=, which would rewrite the screen or
// shift the columns.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case unicode.IsSpace(r):
			return ' '
		case !unicode.IsPrint(r):
			return '?'
		}
		return r
	}, s)
}
