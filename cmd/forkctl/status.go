package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

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
how the last process ended and when the next one starts. During a reload's warm-up
(fork_worker.warm_up), the warm-up line says what the new template (with refork_from =
"warmest", the first new serving worker, which then forks the mold) served of the requests it
waits for, and when the others fork from it: at max_wait at the latest, or earlier "if idle", once
no worker has reported a request for 3 s. The heap size line (Ruby) is what the last template
reported of its heap, which the next worker 0 forkd execs boots with (fork_worker.carry_heap_size).
-o json prints the API's status object.`,
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

// tableWidth is the width the worker table keeps to, by truncating the STATUS column, its last;
// statusMinWidth is as narrow as that column gets, however wide the others are.
const (
	tableWidth     = 120
	statusMinWidth = 20
)

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
	if st.Rollout != "" {
		row("rollout:", printable(st.Rollout))
	}
	if len(st.Queued) > 0 {
		row("queued:", printable(strings.Join(st.Queued, ", ")))
	}
	if l := st.LastRollout; l != nil {
		row("last rollout:", printable(rolloutSummary(*l)))
	}
	row("mode:", modeSummary(st))
	row("workers:", fmt.Sprintf("%d/%d ready", st.Ready, st.Workers))
	row("listeners:", listenersSummary(st))
	row("dropped notifications:", strconv.FormatUint(st.DroppedNotifications, 10))
	if st.LateNotifications > 0 {
		row("late notifications:", strconv.FormatUint(st.LateNotifications, 10)+" (from workers that had exited)")
	}
	if st.Cgroups != "" {
		row("cgroups:", printable(st.Cgroups))
	}
	if st.KSM != "" {
		row("ksm:", printable(st.KSM))
	}
	if st.Strays > 0 {
		row("strays:", strconv.Itoa(st.Strays)+" (left behind by workers, being stopped)")
	}
	if d := st.ReforkOnDecay; d != nil {
		row("refork on decay:", decaySummary(*d))
	}
	if wu := st.WarmUp; wu != nil {
		row("warm-up:", warmUpSummary(*wu, now))
	}
	if h := st.HeapSize; h != nil {
		row("heap size:", heapSizeSummary(*h))
	}
	if st.StatusLine != "" {
		row("status:", printable(st.StatusLine))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)

	// With cgroups, CGROUP is each worker's memory.current: its whole tree's memory, exact.
	withCgroups := slices.ContainsFunc(st.WorkerList, func(wk control.Worker) bool { return wk.Cgroup != nil })
	// BUSY, where a runner reports its threads serving a request (X_FORKD_BUSY=).
	withBusy := reportsBusy(st.WorkerList)
	header := []string{"INDEX", "PID", "GEN", "ROLE", "STATE", "UPTIME", "RESTARTS", "REQUESTS", "PSS", "SHARED", "PRIVATE", "STATUS"}
	if withBusy {
		header = slices.Insert(header, 8, "BUSY")
	}
	if withCgroups {
		header = slices.Insert(header, len(header)-1, "CGROUP")
	}
	// With KSM (memory.ksm), KSM is what ksmd merged of each worker's pages (ksm_merging_pages).
	withKSM := slices.ContainsFunc(st.WorkerList, func(wk control.Worker) bool {
		return wk.Memory != nil && wk.Memory.KSM != nil && (wk.Memory.KSM.MergeAny || wk.Memory.KSM.MergingPages > 0)
	})
	if withKSM {
		header = slices.Insert(header, len(header)-1, "KSM")
	}
	rows := [][]string{header}
	for _, wk := range st.WorkerList {
		pid, uptime := "-", "-"
		if wk.PID != 0 {
			pid = strconv.Itoa(wk.PID)
			uptime = humanDuration(time.Duration(wk.Uptime))
		}
		// PSS is what the process costs, SHARED what it shares with the template and its siblings,
		// PRIVATE what it wrote since (Private_Dirty), which a refork wins back. RSS, which counts
		// shared pages in full in every process, is in the JSON only.
		pss, shared, private := "-", "-", "-"
		if m := wk.Memory; m != nil {
			pss, shared, private = mebibytes(m.PSS), mebibytes(m.Shared), mebibytes(m.PrivateDirty)
		}
		cells := []string{strconv.Itoa(wk.Index), pid, strconv.Itoa(wk.Generation), workerRole(wk),
			printable(wk.State), uptime, strconv.Itoa(wk.Restarts), strconv.FormatUint(wk.Requests, 10),
			pss, shared, private}
		if withBusy {
			cells = slices.Insert(cells, 8, busyThreads(wk))
		}
		if withCgroups {
			cg := "-"
			if wk.Cgroup != nil {
				cg = mebibytes(wk.Cgroup.Current)
			}
			cells = append(cells, cg)
		}
		if withKSM {
			merged := "-"
			if wk.Memory != nil && wk.Memory.KSM != nil {
				merged = mebibytes(wk.Memory.KSM.MergingPages * uint64(os.Getpagesize()))
			}
			cells = append(cells, merged)
		}
		rows = append(rows, append(cells, workerStatus(wk, now)))
	}
	return writeTable(w, rows)
}

// reportsBusy reports whether any of workers says how many of its threads are busy.
func reportsBusy(workers []control.Worker) bool {
	return slices.ContainsFunc(workers, func(wk control.Worker) bool { return wk.BusyThreads != nil })
}

// busyThreads is a worker's BUSY cell: "-" for one that does not say.
func busyThreads(wk control.Worker) string {
	if wk.BusyThreads == nil {
		return "-"
	}
	return strconv.Itoa(*wk.BusyThreads)
}

// writeTable prints rows as formatTable lays them out in tableWidth.
func writeTable(w io.Writer, rows [][]string) error {
	var b strings.Builder
	for _, line := range formatTable(rows, tableWidth) {
		b.WriteString(line)
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// formatTable lays rows out as columns two spaces apart, each as wide as its widest cell but the
// last, which is not padded and is truncated so that a row fits in width (leaving it at least
// statusMinWidth).
func formatTable(rows [][]string, width int) []string {
	if len(rows) == 0 {
		return nil
	}
	last := len(rows[0]) - 1
	widths := make([]int, last)
	for _, cells := range rows {
		for i, cell := range cells[:last] {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	lead := 0
	for _, wd := range widths {
		lead += wd + 2
	}
	limit := max(width-lead, statusMinWidth)
	lines := make([]string, 0, len(rows))
	for _, cells := range rows {
		var b strings.Builder
		for i, cell := range cells[:last] {
			b.WriteString(cell)
			b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell)+2))
		}
		b.WriteString(truncate(cells[last], limit))
		lines = append(lines, b.String())
	}
	return lines
}

// truncate shortens s to at most n runes, marking the cut with an ellipsis.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// modeSummary is the mode line: exec or fork, and in fork mode the template.
func modeSummary(st control.Status) string {
	mode := printable(st.Mode)
	for _, wk := range st.WorkerList {
		if !wk.Template {
			continue
		}
		line := fmt.Sprintf("%s, template: worker %d (pid %d", mode, wk.Index, wk.PID)
		if wk.NonServing {
			line += ", serves nothing"
		}
		if s := wk.MoldOf; s != nil {
			line += fmt.Sprintf("; forked from worker %d, pid %d, after %d requests", s.Index, s.PID, s.Requests)
		}
		return line + ")"
	}
	return mode
}

// workerRole is a worker's ROLE column: template, forked or exec, then "/new" for a rollout's
// replacement that is not ready yet and "/old" for a detached worker draining; "-" without a
// process.
func workerRole(wk control.Worker) string {
	if wk.PID == 0 {
		return "-"
	}
	role := "exec"
	switch {
	case wk.Template:
		role = "template"
	case wk.Forked:
		role = "forked"
	}
	switch {
	case wk.Replacement:
		role += "/new"
	case wk.Detached:
		role += "/old"
	}
	return role
}

// mebibytes formats a byte count in MiB with one decimal: "48.2M".
func mebibytes(n uint64) string {
	return fmt.Sprintf("%.1fM", float64(n)/(1<<20))
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

// workerStatus is a worker's STATUS column: its last status line, or, in backoff, when it comes
// back and why it is down; "-" for nothing, like the other columns.
func workerStatus(wk control.Worker, now time.Time) string {
	if wk.State != control.WorkerBackoff {
		if wk.StatusLine == "" {
			return "-"
		}
		return printable(wk.StatusLine)
	}
	// When it comes back goes first: it is short, and the column may be truncated.
	var parts []string
	if !wk.NextRestart.IsZero() {
		if wait := wk.NextRestart.Sub(now); wait > 0 {
			parts = append(parts, "restarting in "+humanDuration(wait))
		} else {
			parts = append(parts, "restarting now")
		}
	}
	if wk.LastExit != "" {
		parts = append(parts, "last exit: "+printable(wk.LastExit))
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

// rolloutSummary says how an operation ended: done, failed and rolled back to the generation that
// serves (the one it rolled out failed), or refused before it began (nothing changed).
func rolloutSummary(l control.RolloutResult) string {
	switch {
	case l.Error == "":
		return fmt.Sprintf("%s (generation %d): done", l.Kind, l.Generation)
	case l.Target == 0:
		return fmt.Sprintf("%s did not begin: %s; generation %d serves as before", l.Kind, l.Error, l.Generation)
	default:
		reason := strings.TrimPrefix(l.Error, "rollout failed: ")
		return fmt.Sprintf("%s of generation %d failed: %s; rolled back to generation %d", l.Kind, l.Target, reason, l.Generation)
	}
}

// heapSizeSummary says what the last template reported of its heap (fork_worker.carry_heap_size)
// and whether the next worker 0 forkd execs boots with it.
func heapSizeSummary(h control.HeapSize) string {
	s := fmt.Sprintf("%s=%d from generation %d", printable(h.Variable), h.Value, h.Generation)
	if h.Carried {
		return s + ", for the next worker 0"
	}
	// carry_heap_size is off, or the app's environment sets a RUBY_GC_HEAP_INIT* variable.
	return s + ", not carried (fork_worker.carry_heap_size)"
}

// warmUpSummary says how far a rollout's warm-up is (the new template's requests), and when the
// others are forked from it: at max_wait at the latest, or earlier once no worker has reported a
// request for 3 s.
func warmUpSummary(w control.WarmUp, now time.Time) string {
	s := fmt.Sprintf("worker %d (pid %d) served %d", w.Index, w.PID, w.Served)
	if w.Requests > 0 {
		s += fmt.Sprintf("/%d", w.Requests)
	}
	what := "forks"
	if w.Mold {
		what = "forks the mold"
	}
	s += " requests; " + what + " in " + countdown(w.Until.Sub(now)) + " at most (max_wait)"
	if w.IdleUntil.Before(w.Until) {
		s += ", " + countdown(w.IdleUntil.Sub(now)) + " if idle"
	}
	return s
}

// countdown is d for a deadline seconds away: to a tenth of a second, which humanDuration would
// round to 0s.
func countdown(d time.Duration) string {
	if d < time.Minute {
		return max(d, 0).Round(100 * time.Millisecond).String()
	}
	return humanDuration(d)
}

// decaySummary says what the memory refork trigger watches: the forked workers' private memory
// against its baseline (right after the last rollout), and the sum that starts a refork.
func decaySummary(d control.DecayTrigger) string {
	if !d.Measured {
		return "measuring the forked workers' private memory after the last rollout"
	}
	s := fmt.Sprintf("%.2fx: %s private in %d forked workers, baseline %s, refork at %s",
		d.Ratio, mebibytes(d.Current), d.Workers, mebibytes(d.Baseline), mebibytes(d.Threshold))
	switch {
	case d.Stopped:
		s = fmt.Sprintf("stopped by %d fruitless reforks until a reload; %s", d.Fruitless, s)
	case d.Fruitless > 0:
		s += fmt.Sprintf(", %d fruitless", d.Fruitless)
	}
	return s
}
