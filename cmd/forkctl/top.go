package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/forkd/forkd/pkg/control"
	"github.com/spf13/cobra"
)

func (c *cli) topCommand() *cobra.Command {
	var opts topOptions
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Show forkd and its workers, refreshing",
		Long: `Show forkd and its workers live, as top does: the master's state and the rollout in progress,
one row per worker with its requests per second and its memory (RSS, PSS, shared and private,
and the share of its RSS it shares), and the latest events (forkctl events).

Requests per second come from the difference between two status snapshots, so the first shows
"-". PSS adds up across workers to what the cluster really uses; RSS counts shared pages in
every worker that maps them.

In a terminal, top takes the whole screen and refreshes every --interval; q or Ctrl-C quits.
When its output is not a terminal, it prints one plain snapshot per interval instead, separated
by a blank line, -n times (without -n, until interrupted), so that it can be piped or logged.
--timeout bounds each status request. Each refresh is one status request, which forkd answers
from what it holds: the workers' memory comes from the samples it takes on its own schedule
(memory.sample_interval, 10s by default), so the memory columns change when a sample is taken,
not at every refresh, and a short --interval costs forkd little.`,
		Example: "  forkctl top\n  forkctl top --interval 5s\n  forkctl top -n 1 > snapshot.txt",
		Args:    noArgs,
		RunE: c.action(func(cmd *cobra.Command, _ []string) error {
			if opts.interval < 100*time.Millisecond {
				return usagef("--interval %s is too short: give at least 100ms", opts.interval)
			}
			if opts.iterations < 0 {
				return usagef("-n %d: give a number of refreshes, 1 or more (0: until interrupted)", opts.iterations)
			}
			client, err := c.client()
			if err != nil {
				return err
			}
			return c.runTop(cmd.Context(), client, opts)
		}),
	}
	cmd.Flags().DurationVarP(&opts.interval, "interval", "d", 2*time.Second, "time between refreshes")
	cmd.Flags().IntVarP(&opts.iterations, "iterations", "n", 0, "refresh this many times, then exit (0: until interrupted)")
	return cmd
}

type topOptions struct {
	interval   time.Duration
	iterations int
}

// topEvents is how many recent events top keeps.
const topEvents = 100

// snapshotEvents is how many of them a snapshot shows when the output is not a terminal.
const snapshotEvents = 10

// runTop shows the status every opts.interval, with the rates since the previous one and the
// latest events, full screen on a terminal, as plain snapshots otherwise.
func (c *cli) runTop(ctx context.Context, client *control.Client, opts topOptions) error {
	// The events first: their replay is likely in by the time the status is, for the first frame.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := newEventLog(topEvents)
	go func() {
		err := c.followEvents(ctx, client, true, func(ev control.Event) error {
			events.add(ev)
			return nil
		})
		events.fail(err)
	}()
	st, err := c.topStatus(ctx, client)
	if err != nil {
		return err
	}
	var rates rateTracker
	view := topView{interval: opts.interval}
	view.setStatus(st, time.Now(), &rates)

	screen, err := openScreen(c.stdout)
	if err != nil {
		return err
	}
	defer screen.close()
	winch := make(chan os.Signal, 1)
	if screen.live {
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
	}
	ticker := time.NewTicker(opts.interval)
	defer ticker.Stop()
	refreshes := 1
	for {
		view.events, view.eventsErr = events.snapshot()
		view.live = screen.live
		if err := screen.draw(view); err != nil {
			return err
		}
		if opts.iterations > 0 && refreshes >= opts.iterations {
			return nil
		}
		for redraw := false; !redraw; {
			select {
			case <-ctx.Done():
				return nil
			case <-ticker.C:
				st, err := c.topStatus(ctx, client)
				if ctx.Err() != nil {
					return nil
				}
				view.statusErr = err
				if err == nil {
					view.setStatus(st, time.Now(), &rates)
				}
				refreshes++
				redraw = true
			case <-winch:
				redraw = true
			case <-events.changed:
				redraw = screen.live // a snapshot shows the events when it is due
			case <-screen.quit:
				return nil
			}
		}
	}
}

// topStatus asks for the status, bounded by --timeout.
func (c *cli) topStatus(ctx context.Context, client *control.Client) (control.Status, error) {
	ctx, cancel := c.context(ctx, false)
	defer cancel()
	return client.Status(ctx)
}

// topView is what one frame of top shows.
type topView struct {
	status control.Status
	// at is when status was taken; statusErr why the latest attempt failed, if it did.
	at        time.Time
	statusErr error
	// rates are requests per second by worker PID, since the previous status; total is their
	// sum, valid when haveRates.
	rates     map[int]float64
	total     float64
	haveRates bool
	// events are the latest, oldest first; eventsErr why the stream ended, if it did.
	events    []control.Event
	eventsErr error
	interval  time.Duration
	// live: a full screen that q quits, not a snapshot.
	live bool
}

func (v *topView) setStatus(st control.Status, at time.Time, r *rateTracker) {
	v.status, v.at, v.statusErr = st, at, nil
	v.rates, v.total, v.haveRates = r.update(st, at)
}

// rateTracker turns the workers' cumulative request counts of successive statuses into rates.
type rateTracker struct {
	prev   map[int]uint64
	prevAt time.Time
}

// update returns each worker's requests per second since the previous status, by PID, and their
// sum; ok is false for the first status, which has nothing to compare with. A worker that is new
// since (or whose count went down: another process with the same PID) has no rate.
func (r *rateTracker) update(st control.Status, at time.Time) (rates map[int]float64, total float64, ok bool) {
	counts := make(map[int]uint64, len(st.WorkerList))
	for _, w := range st.WorkerList {
		if w.PID != 0 {
			counts[w.PID] = w.Requests
		}
	}
	prev, elapsed := r.prev, at.Sub(r.prevAt).Seconds()
	r.prev, r.prevAt = counts, at
	if prev == nil || elapsed <= 0 {
		return nil, 0, false
	}
	rates = make(map[int]float64)
	for pid, n := range counts {
		if before, seen := prev[pid]; seen && n >= before {
			rates[pid] = float64(n-before) / elapsed
			total += rates[pid]
		}
	}
	return rates, total, true
}

// eventLog keeps the latest events of the stream for top; the follower goroutine adds, the loop
// reads.
type eventLog struct {
	max     int
	changed chan struct{}

	mu     sync.Mutex
	events []control.Event
	err    error
}

func newEventLog(max int) *eventLog {
	return &eventLog{max: max, changed: make(chan struct{}, 1)}
}

func (l *eventLog) add(ev control.Event) {
	l.mu.Lock()
	l.events = append(l.events, ev)
	if len(l.events) > l.max {
		l.events = l.events[len(l.events)-l.max:]
	}
	l.mu.Unlock()
	l.notify()
}

// fail records why the stream ended: top goes on without events.
func (l *eventLog) fail(err error) {
	if err == nil {
		err = errors.New("forkd stopped")
	}
	l.mu.Lock()
	l.err = err
	l.mu.Unlock()
	l.notify()
}

func (l *eventLog) notify() {
	select {
	case l.changed <- struct{}{}:
	default:
	}
}

func (l *eventLog) snapshot() ([]control.Event, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]control.Event(nil), l.events...), l.err
}

// renderTop lays v out in lines at most width runes wide; with height above 0, in at most height
// lines, the worker table and then the events cut to fit.
func renderTop(v topView, width, height int) []string {
	st := v.status
	var head []string
	title := fmt.Sprintf("%s: %s, pid %d, up %s", printable(st.Name), printable(st.Version), st.MasterPID,
		humanDuration(time.Duration(st.Uptime)))
	clock := v.at.Local().Format("15:04:05") + ", every " + v.interval.String()
	if v.live {
		clock += "; q quits"
	}
	head = append(head, spread(title, clock, width))
	if v.statusErr != nil {
		head = append(head, printable(fmt.Sprintf("! no status from forkd: %v; this one is from %s",
			v.statusErr, v.at.Local().Format("15:04:05"))))
	}
	head = append(head, phaseLine(st, v.events, v.at))
	if wu := st.WarmUp; wu != nil {
		head = append(head, "warm-up: "+warmUpSummary(*wu, v.at))
	}
	if l := st.LastRollout; l != nil {
		head = append(head, "last rollout: "+printable(rolloutSummary(*l)))
	}
	head = append(head, fmt.Sprintf("workers: %d/%d ready; mode: %s", st.Ready, st.Workers, modeSummary(st)))
	head = append(head, fmt.Sprintf("listeners: %s; dropped notifications: %d", listenersSummary(st), st.DroppedNotifications))
	head = append(head, clusterLine(v))
	if st.StatusLine != "" {
		head = append(head, "status: "+printable(st.StatusLine))
	}
	head = append(head, "")

	table := formatTable(workerRows(v), width)
	var tail []string
	switch {
	case v.eventsErr != nil && len(v.events) == 0:
		tail = append(tail, "", printable(fmt.Sprintf("events: none (%v)", v.eventsErr)))
	default:
		tail = append(tail, "", "recent events:")
		for _, ev := range v.events {
			tail = append(tail, eventSummary(ev))
		}
		if len(v.events) == 0 {
			tail = append(tail, "(none yet)")
		}
	}

	if height <= 0 {
		if n := len(tail) - 2 - snapshotEvents; n > 0 && len(v.events) > 0 {
			tail = append(tail[:2], tail[2+n:]...)
		}
	} else {
		// The header first, then the table (its header row at least), then the latest events.
		room := height - len(head)
		if room < len(table) {
			keep := max(room, 1)
			if keep < len(table) && keep > 1 {
				hidden := len(table) - keep + 1
				table = append(table[:keep-1], fmt.Sprintf("... %d more", hidden))
			} else {
				table = table[:min(keep, len(table))]
			}
		}
		room -= len(table)
		switch {
		case room < 3:
			tail = nil
		case len(tail) > room:
			tail = append(tail[:2], tail[len(tail)-(room-2):]...)
		}
	}
	lines := append(append(head, table...), tail...)
	for i, l := range lines {
		lines[i] = cut(l, width)
	}
	if height > 0 && len(lines) > height {
		lines = lines[:height]
	}
	return lines
}

// phaseLine says what the master does: running, or the rollout in progress (for how long, when
// its start was among the events) and what waits behind it.
func phaseLine(st control.Status, events []control.Event, now time.Time) string {
	s := fmt.Sprintf("phase: %s, generation %d", printable(st.Phase), st.Generation)
	if st.Rollout != "" {
		s += ": " + printable(st.Rollout) + " in progress"
		if since := rolloutStart(st.Rollout, events); !since.IsZero() && now.After(since) {
			s += " for " + humanDuration(now.Sub(since))
		}
	}
	if len(st.Queued) > 0 {
		s += "; queued: " + printable(strings.Join(st.Queued, ", "))
	}
	return s
}

// rolloutStart is when the rollout of kind in progress began, from its rollout-started event;
// zero if that is not among events.
func rolloutStart(kind string, events []control.Event) time.Time {
	for i := len(events) - 1; i >= 0; i-- {
		ev := events[i]
		switch {
		case ev.Type == control.EventRolloutEnded:
			return time.Time{}
		case ev.Type == control.EventRolloutStarted && ev.Kind == kind:
			return ev.Time
		}
	}
	return time.Time{}
}

// clusterLine sums the workers: requests per second, and memory, PSS first (what the cluster
// uses).
func clusterLine(v topView) string {
	rate := "-"
	if v.haveRates {
		rate = perSecond(v.total)
	}
	var rss, pss, shared uint64
	measured := 0
	for _, w := range v.status.WorkerList {
		if m := w.Memory; m != nil {
			rss, pss, shared = rss+m.RSS, pss+m.PSS, shared+m.Shared
			measured++
		}
	}
	s := "requests: " + rate + "/s"
	if measured == 0 {
		return s + "; memory: unknown"
	}
	return s + fmt.Sprintf("; memory: PSS %s (the workers' total), RSS %s, shared %s (%s), private %s",
		mebibytes(pss), mebibytes(rss), mebibytes(shared), share(shared, rss), mebibytes(rss-min(shared, rss)))
}

// workerRows is the worker table: one row per process (or slot without one).
func workerRows(v topView) [][]string {
	rows := [][]string{{"INDEX", "PID", "GEN", "ROLE", "STATE", "UPTIME", "REQ/S", "REQUESTS", "RSS", "PSS", "SHARED",
		"PRIVATE", "SHARE", "STATUS"}}
	withBusy := reportsBusy(v.status.WorkerList)
	if withBusy {
		rows[0] = slices.Insert(rows[0], 8, "BUSY")
	}
	for _, wk := range v.status.WorkerList {
		pid, uptime, rate := "-", "-", "-"
		if wk.PID != 0 {
			pid = strconv.Itoa(wk.PID)
			uptime = humanDuration(time.Duration(wk.Uptime))
			if r, ok := v.rates[wk.PID]; ok {
				rate = perSecond(r)
			}
		}
		rss, pss, shared, private, ratio := "-", "-", "-", "-", "-"
		if m := wk.Memory; m != nil {
			rss, pss, shared = mebibytes(m.RSS), mebibytes(m.PSS), mebibytes(m.Shared)
			private, ratio = mebibytes(m.RSS-min(m.Shared, m.RSS)), share(m.Shared, m.RSS)
		}
		row := []string{strconv.Itoa(wk.Index), pid, strconv.Itoa(wk.Generation), workerRole(wk),
			printable(wk.State), uptime, rate, strconv.FormatUint(wk.Requests, 10), rss, pss, shared, private, ratio,
			workerStatus(wk, v.at)}
		if withBusy {
			row = slices.Insert(row, 8, busyThreads(wk))
		}
		rows = append(rows, row)
	}
	return rows
}

// perSecond formats a rate: "0", "3.2", "1520".
func perSecond(r float64) string {
	switch {
	case r == 0:
		return "0"
	case r < 100:
		return strconv.FormatFloat(r, 'f', 1, 64)
	}
	return strconv.FormatFloat(r, 'f', 0, 64)
}

// share is part as a percentage of whole: "68%"; "-" of nothing.
func share(part, whole uint64) string {
	if whole == 0 {
		return "-"
	}
	return fmt.Sprintf("%d%%", part*100/whole)
}

// spread puts left and right on one line of width, right-aligned; right is dropped if both do not
// fit.
func spread(left, right string, width int) string {
	gap := width - utf8.RuneCountInString(left) - utf8.RuneCountInString(right)
	if gap < 2 {
		return left + "  " + right
	}
	return left + strings.Repeat(" ", gap) + right
}

// cut shortens s to width runes, without an ellipsis: top's lines end at the screen's edge.
func cut(s string, width int) string {
	if width <= 0 || utf8.RuneCountInString(s) <= width {
		return s
	}
	return string([]rune(s)[:width])
}

// screen is where top draws: a terminal, taken over while top runs, or a plain output that gets
// one snapshot per frame.
type screen struct {
	out  io.Writer
	live bool
	// fd is the terminal's descriptor, for its size.
	fd int
	// quit is closed when the operator presses q.
	quit    chan struct{}
	restore func()
	frames  int
}

// Terminal control sequences (ECMA-48 and xterm's, which every terminal emulator in use knows).
const (
	altScreenOn  = "\x1b[?1049h"
	altScreenOff = "\x1b[?1049l"
	cursorHide   = "\x1b[?25l"
	cursorShow   = "\x1b[?25h"
	cursorHome   = "\x1b[H"
	clearLineEnd = "\x1b[K"
	clearDown    = "\x1b[J"
)

// openScreen takes over out when it is a terminal: the alternate screen, the cursor hidden, and,
// when stdin is the terminal too, keys read one at a time without echo, for q.
func openScreen(out io.Writer) (*screen, error) {
	s := &screen{out: out, quit: make(chan struct{}), restore: func() {}}
	f, ok := out.(*os.File)
	if !ok || !isTerminal(int(f.Fd())) {
		return s, nil
	}
	s.live, s.fd = true, int(f.Fd())
	if _, err := io.WriteString(out, altScreenOn+cursorHide); err != nil {
		return nil, err
	}
	restoreInput := readKeys(os.Stdin, s.quit)
	s.restore = func() {
		restoreInput()
		io.WriteString(out, cursorShow+altScreenOff)
	}
	return s, nil
}

func (s *screen) close() { s.restore() }

// draw shows v: over the previous frame on a terminal, after a blank line otherwise.
func (s *screen) draw(v topView) error {
	var b strings.Builder
	if s.live {
		width, height := terminalSize(s.fd)
		b.WriteString(cursorHome)
		for _, line := range renderTop(v, width, height-1) {
			b.WriteString(line + clearLineEnd + "\n")
		}
		b.WriteString(clearDown)
	} else {
		if s.frames > 0 {
			b.WriteString("\n")
		}
		for _, line := range renderTop(v, tableWidth, 0) {
			b.WriteString(line + "\n")
		}
	}
	s.frames++
	_, err := io.WriteString(s.out, b.String())
	return err
}
