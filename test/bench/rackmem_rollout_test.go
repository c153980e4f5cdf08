package bench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The rollout rounds of BenchmarkRackMemory (issue 14's "how it is shown", third bullet), on the
// same servers once their memory stages are done, each under wrk -t2 -c16 keep-alive (no retries)
// whose Lua script counts the responses of each wall-clock second (wrkTimeline):
//
//   - refork under load: 5 s of steady load, then a refork (forkd: forkctl refork --wait; Puma:
//     SIGURG to the last "booted" line), the load going on for the 10 s after the refork
//     began: its duration, against the idle refork of the memory stages, and the requests/s of
//     those 10 s against the 5 s before;
//   - phased restart: 3 s of steady load, a phased restart (forkctl reload --wait; SIGUSR1), and
//     the requests/s of the 3 s after it ended against the 3 s before (target: at least 80 %), with
//     the requests/s during it; forkd's new template warms up first (fork_worker.warm_up's
//     defaults; in mold mode, its first new serving worker, which then forks the mold);
//   - without warm_up: the same phased restart of the first forkd side and of the mold side
//     again, each config given fork_worker.warm_up { max_wait = "0s" } first (the reload loads
//     it: no warm-up).
//
// Only whole seconds count: a window's first and last partial seconds are left out. Each phased
// restart's timeline is printed too, second by second: the responses, and which process served
// them (the app's "pid=" in each body), marked when the process was still building its lazy half.

// rackReforkSteady and the others are the windows of the rollout rounds.
const (
	rackReforkSteady  = 5 * time.Second
	rackReforkAfter   = 10 * time.Second
	rackPhasedSteady  = 3 * time.Second
	rackPhasedAfter   = 3 * time.Second
	rackPhasedTarget  = 0.8
	rackWarmUpOff     = "  warm_up {\n    max_wait = \"0s\"\n  }\n"
	rackTimelineLimit = 180 * time.Second
)

// wrkSeconds counts each thread's responses by wall-clock second (os.time) and prints them when
// wrk is done (also after a SIGINT, which makes wrk stop, summarize and call done).
const wrkSeconds = `
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  seconds = {}
end
function response(status, headers, body)
  local s = os.time()
  local pid, steps = string.match(body or "", "pid=(%d+) steps=(%d+)")
  local k = s .. " " .. (pid or "0") .. " " .. (steps or "-1")
  seconds[k] = (seconds[k] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for k, n in pairs(t:get("seconds")) do
      io.write(string.format("forkd-bench-second %s %d\n", k, n))
    end
  end
end
`

// wrkSecondRE: a second, the process that answered (0: the body said no pid), its lazy steps
// built (-1: not said), and how many responses.
var wrkSecondRE = regexp.MustCompile(`(?m)^forkd-bench-second (\d+) (\d+) (-?\d+) (\d+)$`)

// wrkTimeline is a wrk run under way: its responses per second once it is done.
type wrkTimeline struct {
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	out     strings.Builder
	run     wrkRun
	err     error
	seconds map[int64]int
	// byPID: each second's responses by the process that answered; building: those of them
	// from a process that had not built its lazy half yet.
	byPID    map[int64]map[int]int
	building map[int64]map[int]int
}

// startWrkTimeline starts wrk against url with CONNS keep-alive connections, for at most
// rackTimelineLimit; stop ends it.
func startWrkTimeline(wrk, url string) (*wrkTimeline, error) {
	script, err := os.CreateTemp("", "forkd-bench-wrk-seconds-*.lua")
	if err != nil {
		return nil, err
	}
	if _, err := script.WriteString(wrkSeconds); err != nil {
		return nil, err
	}
	script.Close()
	w := &wrkTimeline{done: make(chan struct{}), seconds: map[int64]int{}, byPID: map[int64]map[int]int{}, building: map[int64]map[int]int{}}
	w.cmd = exec.Command(wrk, "-t2", "-c"+strconv.Itoa(rackMemConns), "--timeout", "30s",
		"-d"+strconv.Itoa(int(rackTimelineLimit/time.Second))+"s", "-s", script.Name(), url)
	pipe, err := w.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	w.cmd.Stderr = w.cmd.Stdout
	if err := w.cmd.Start(); err != nil {
		return nil, err
	}
	w.started = time.Now()
	go func() {
		defer close(w.done)
		defer os.Remove(script.Name())
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			w.out.WriteString(sc.Text() + "\n")
		}
		if err := w.cmd.Wait(); err != nil {
			w.err = fmt.Errorf("wrk: %v: %s", err, w.out.String())
			return
		}
		if w.run, w.err = parseWrkRun(w.out.String()); w.err != nil {
			return
		}
		for _, m := range wrkSecondRE.FindAllStringSubmatch(w.out.String(), -1) {
			s, _ := strconv.ParseInt(m[1], 10, 64)
			pid, _ := strconv.Atoi(m[2])
			steps, _ := strconv.Atoi(m[3])
			n, _ := strconv.Atoi(m[4])
			w.seconds[s] += n
			if w.byPID[s] == nil {
				w.byPID[s], w.building[s] = map[int]int{}, map[int]int{}
			}
			w.byPID[s][pid] += n
			if steps >= 0 && steps < rackMemSteps {
				w.building[s][pid] += n
			}
		}
	}()
	return w, nil
}

// stop interrupts wrk (it prints its summary and the seconds) and waits for it.
func (w *wrkTimeline) stop() error {
	w.cmd.Process.Signal(syscall.SIGINT)
	<-w.done
	return w.err
}

// rate is the responses per second over the whole seconds between from and to.
func (w *wrkTimeline) rate(from, to time.Time) (float64, int) {
	first, last := from.Unix()+1, to.Unix()-1 // whole seconds only
	if from.Nanosecond() == 0 {
		first = from.Unix()
	}
	if last < first {
		return 0, 0
	}
	n := 0
	for s := first; s <= last; s++ {
		n += w.seconds[s]
	}
	return float64(n) / float64(last-first+1), int(last - first + 1)
}

// rackRolloutResult is one side's rollout rounds.
type rackRolloutResult struct {
	reforkIdle, reforkLoaded time.Duration
	// reforkLoggedLoaded is the loaded refork in the server's own log (rackRollout's logged).
	reforkLoggedLoaded        time.Duration
	reforkSteady, reforkAfter float64 // requests/s
	phased                    []rackPhasedResult
	// reforkSeconds is how many whole seconds the 10 s after the refork counted.
	reforkSeconds int
	reforkRun     wrkRun
	// reforkSpan is the loaded refork's start and done records (rackRollout's).
	reforkSpan [2]time.Time
}

// rackPhasedResult is one phased restart under load.
type rackPhasedResult struct {
	name                  string // "phased restart", "with warm_up"
	took                  time.Duration
	steady, during, after float64 // requests/s
	run                   wrkRun
	note                  string // what forkd logged of it (the warm-up's requests)
	timeline              []string
}

func (p rackPhasedResult) ratio() float64 {
	if p.steady == 0 {
		return 0
	}
	return p.after / p.steady
}

// sleepUntil sleeps until t.
func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

// reforkUnderLoad measures s's refork under load (rackReforkSteady of load first).
func reforkUnderLoad(wrk string, s *rackMemSide) (rackRolloutResult, error) {
	var r rackRolloutResult
	if _, err := s.workers(); err != nil {
		return r, err
	}
	w, err := startWrkTimeline(wrk, s.url+"/")
	if err != nil {
		return r, err
	}
	steadyFrom := w.started.Add(time.Second) // wrk's connections up
	sleepUntil(steadyFrom.Add(rackReforkSteady))
	t0 := time.Now()
	ro, rerr := s.refork(false)
	sleepUntil(t0.Add(rackReforkAfter))
	if err := w.stop(); err != nil {
		return r, err
	}
	if rerr != nil {
		return r, rerr
	}
	r.reforkLoaded, r.reforkLoggedLoaded = ro.took, ro.logged
	r.reforkSpan = [2]time.Time{ro.started, ro.done}
	r.reforkSteady, _ = w.rate(steadyFrom, t0)
	r.reforkAfter, r.reforkSeconds = w.rate(t0, t0.Add(rackReforkAfter))
	r.reforkRun = w.run
	return r, nil
}

// phasedUnderLoad measures one phased restart of s under load.
func phasedUnderLoad(wrk, name string, s *rackMemSide) (rackPhasedResult, error) {
	p := rackPhasedResult{name: name}
	if _, err := s.workers(); err != nil {
		return p, err
	}
	w, err := startWrkTimeline(wrk, s.url+"/")
	if err != nil {
		return p, err
	}
	steadyFrom := w.started.Add(time.Second)
	sleepUntil(steadyFrom.Add(rackPhasedSteady))
	t0 := time.Now()
	ro, rerr := s.reload(false)
	t1 := time.Now()
	sleepUntil(t1.Add(rackPhasedAfter))
	if err := w.stop(); err != nil {
		return p, err
	}
	if rerr != nil {
		return p, rerr
	}
	p.took = ro.took
	p.steady, _ = w.rate(steadyFrom, t0)
	p.during, _ = w.rate(t0, t1)
	p.after, _ = w.rate(t1, t1.Add(rackPhasedAfter))
	p.run = w.run
	p.timeline = w.timeline(t0, t1, t1.Add(rackPhasedAfter))
	return p, nil
}

// timeline prints the seconds from the one before t0 to the one after end: the responses, and
// the processes that answered them in order of their first answer, each with its count ("*":
// some of them while it was still building its lazy half); "<" marks t0's second, ">" t1's.
func (w *wrkTimeline) timeline(t0, t1, end time.Time) []string {
	first := map[int]int64{}
	var pids []int
	for s := t0.Unix() - 1; s <= end.Unix()+1; s++ {
		for pid := range w.byPID[s] {
			if _, ok := first[pid]; !ok {
				first[pid] = s
				pids = append(pids, pid)
			}
		}
	}
	sort.Slice(pids, func(i, j int) bool {
		if first[pids[i]] != first[pids[j]] {
			return first[pids[i]] < first[pids[j]]
		}
		return pids[i] < pids[j]
	})
	head := fmt.Sprintf("%6s %6s", "s", "total")
	for _, pid := range pids {
		head += fmt.Sprintf(" %7d", pid)
	}
	out := []string{head}
	for s := t0.Unix() - 1; s <= end.Unix()+1; s++ {
		mark := " "
		switch s {
		case t0.Unix():
			mark = "<"
		case t1.Unix():
			mark = ">"
		}
		line := fmt.Sprintf("%5.0f%s %6d", float64(s)-float64(t0.UnixNano())/1e9+0.5, mark, w.seconds[s])
		for _, pid := range pids {
			cell := "."
			if n := w.byPID[s][pid]; n > 0 {
				cell = strconv.Itoa(n)
				if w.building[s][pid] > 0 {
					cell += "*"
				}
			}
			line += fmt.Sprintf(" %7s", cell)
		}
		out = append(out, line)
	}
	return out
}

// switchWarmUpOff gives m's config file fork_worker.warm_up { max_wait = "0s" }, for its next
// reload.
func switchWarmUpOff(m *master) error {
	b, err := os.ReadFile(m.config)
	if err != nil {
		return err
	}
	cfg := string(b)
	if !strings.Contains(cfg, "fork_worker {\n") {
		return fmt.Errorf("%s has no fork_worker block", filepath.Base(m.config))
	}
	return os.WriteFile(m.config, []byte(strings.Replace(cfg, "fork_worker {\n", "fork_worker {\n"+rackWarmUpOff, 1)), 0o644)
}

// printRackRollouts prints the rollout rounds: one line per side, then the targets.
func printRackRollouts(w io.Writer, sides []*rackMemSide) {
	fmt.Fprintf(w, "rollouts under load (wrk -t2 -c%d keep-alive; requests/s over whole seconds):\n", rackMemConns)
	fmt.Fprintf(w, "%-16s %11s %13s %11s %22s %11s %11s %11s %22s\n", "side", "refork idle", "refork loaded", "steady r/s",
		"10 s after refork", "phased took", "steady r/s", "during r/s", "3 s after phased")
	for _, s := range sides {
		r := s.rollouts
		for i, p := range r.phased {
			name, refork := s.name, fmt.Sprintf("%11s %13s %11.0f %22s", fmtMS(r.reforkIdle), fmtMS(r.reforkLoaded), r.reforkSteady,
				fmt.Sprintf("%.0f (%.2fx)", r.reforkAfter, ratioOf(r.reforkAfter, r.reforkSteady)))
			if i > 0 {
				name, refork = "  "+p.name, fmt.Sprintf("%11s %13s %11s %22s", "", "", "", "")
			}
			fmt.Fprintf(w, "%-16s %s %11s %11.0f %11.0f %22s\n", name, refork, fmtMS(p.took), p.steady, p.during,
				fmt.Sprintf("%.0f (%.2fx)", p.after, p.ratio()))
		}
	}
	for _, s := range sides {
		r := s.rollouts
		if len(r.phased) == 0 {
			continue
		}
		fmt.Fprintf(w, "target: %s refork under load no slower than idle: %s (%s vs %s); 3 s after a phased restart at least %.0f%% of steady: %s (%.0f%%)",
			s.name, verdict(r.reforkLoaded <= r.reforkIdle), fmtMS(r.reforkLoaded), fmtMS(r.reforkIdle), rackPhasedTarget*100,
			verdict(r.phased[0].ratio() >= rackPhasedTarget), r.phased[0].ratio()*100)
		if len(r.phased) > 1 {
			fmt.Fprintf(w, "; without warm_up: %s (%.0f%%)", verdict(r.phased[1].ratio() >= rackPhasedTarget), r.phased[1].ratio()*100)
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "  %s wrk: refork window %d requests, %d socket errors, %d non-2xx;", s.name, r.reforkRun.requests, r.reforkRun.socketErrors(), r.reforkRun.non2xx)
		for _, p := range r.phased {
			fmt.Fprintf(w, " %s window %d requests, %d socket errors, %d non-2xx;", p.name, p.run.requests, p.run.socketErrors(), p.run.non2xx)
			if p.note != "" {
				fmt.Fprintf(w, " (%s)", p.note)
			}
		}
		fmt.Fprintln(w)
	}
	for _, s := range sides {
		for _, p := range s.rollouts.phased {
			fmt.Fprintf(w, "  %s %s, second by second (rel: seconds since the reload began; responses by PID, * still building):\n", s.name, p.name)
			for _, line := range p.timeline {
				fmt.Fprintf(w, "    %s\n", line)
			}
		}
	}
}

func ratioOf(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
