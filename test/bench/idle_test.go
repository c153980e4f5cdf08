package bench

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// settle is how long an idle measurement waits after the last worker is ready: the spawns' and
// status polls' goroutines finish, and the runtime's sysmon backs off from its busy-time 20 µs
// polling into its idle sleep.
const settle = 2 * time.Second

// idleHeartbeat is timeouts.worker for heartbeats=on. Not a production-like 30s: testworker sends
// WATCHDOG=1 every half timeout, so with 30s no heartbeat would land in a 10 s window that starts
// ~2 s after boot, and the sub-benchmark would measure nothing. At 4s every worker sends one
// datagram every 2 s; the cost per datagram is what carries over to longer timeouts.
const idleHeartbeat = 4 * time.Second

// BenchmarkMasterIdle measures a master whose workers are all ready and nothing happens: its
// memory, its CPU time and how often its threads wake up.
//
// What the Go runtime does in an idle process (Go 1.26, runtime/proc.go), as measured here with
// FORKD_BENCH_IDLE=150s: every thread sleeps on a futex but one, the netpoller, in epoll_wait
// with no timeout while no timer is pending. sysmon, the runtime's monitor thread, polls every
// 20 µs to 10 ms while any P runs, but once all are idle it sleeps until the next timer, or for at
// most forcegcperiod/2 = 60 s: it woke at +58 s and +118 s, 2 context switches each (the wake,
// then one short usleep before sleeping again), 0.03 wakeups/s in all. Its other periodic duty,
// a forced GC 2 minutes after the previous GC, never came: the runtime forces a GC only once one
// has run, and the master's heap never grew enough for a first one (GODEBUG=gctrace=1 printed
// nothing in 150 s).
//
// Two wakeups come from the measurement itself, and the timeline in the log places them:
//   - one netpoller wakeup ~10 s after the last status request, so at +8 s in the window: the
//     control server's ReadHeaderTimeout deadline, stopped once the request was read but still
//     in the runtime's timer heap. Settling 12 s instead of 2 s made it disappear (4 runs, 0
//     wakeups), at the price of 40 s more per `make bench`; it happens only on some runs.
//   - a kept-alive control connection adds one at the server's 2-minute IdleTimeout: polling with
//     control.Client, which keeps its connection, a 150 s window showed 2 more switches at +118 s,
//     on two Ms. Hence master.getStatus, one connection per request, as forkctl makes.
//
// heartbeats=on has timeouts.worker set, and the workers send WATCHDOG=1: the master wakes for
// every datagram, ~5 context switches and ~0.3 ms of CPU each on this 2-core VM: the netpoller
// thread, the loop goroutine's thread, and sysmon, whom the runtime wakes whenever a goroutine
// enters a syscall (recvmsg, reading the sender's /proc/PID/stat) while it sleeps, so it can
// retake the P. That is work, not polling, so it is reported but not held to the idle target.
func BenchmarkMasterIdle(b *testing.B) {
	for _, workers := range []int{4, 64} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			b.Run("heartbeats=off", func(b *testing.B) { benchIdle(b, workers, false) })
			b.Run("heartbeats=on", func(b *testing.B) { benchIdle(b, workers, true) })
		})
	}
}

func benchIdle(b *testing.B, workers int, heartbeats bool) {
	cfg := masterConfig{workers: workers, command: testworker("-heartbeat=false")}
	if heartbeats {
		cfg = masterConfig{workers: workers, command: testworker(), heartbeat: idleHeartbeat}
	}
	m := startMaster(b, cfg)
	m.waitReady(workers)
	// Nothing in this process touches the master from here to the last sample: reading
	// /proc/PID/... does not wake it (the master's threads take no part in it). A sample every
	// second shows when in the window any wakeup happened, which tells its cause: a timer's
	// period, the runtime's 60 s sysmon sleep, its 2-minute forced GC.
	time.Sleep(settle)
	samples := []procSample{sample(b, m.pid)}
	end := samples[0].at.Add(idleWindow)
	for time.Now().Before(end) {
		time.Sleep(min(time.Second, time.Until(end)))
		samples = append(samples, sample(b, m.pid))
	}
	before, after := samples[0], samples[len(samples)-1]
	// Only after the window: a status request would itself wake the master. It confirms the
	// window saw a whole cluster, no crash and respawn.
	if st := m.status(); st.Ready != workers || st.Workers != workers {
		b.Fatalf("after the idle window: %d/%d workers ready, want %d\noutput:\n%s", st.Ready, st.Workers, workers, m.out.String())
	}
	m.stop()

	secs := after.at.Sub(before.at).Seconds()
	threads, wakeups, runNS := threadDeltas(m.pid, before, after)
	metrics := map[string]float64{
		"rss-MB":    float64(after.rssKB) / 1024,
		"hwm-MB":    float64(after.hwmKB) / 1024,
		"cpu-ms/s":  float64(time.Duration(after.ticks-before.ticks)*clockTick) / float64(time.Millisecond) / secs,
		"wakeups/s": float64(wakeups) / secs,
		// The same CPU time from schedstat, in ns: the ticks above are 10 ms each, too coarse to
		// see anything below 1 ms/s over 10 s.
		"cpu-us/s": float64(runNS) / 1e3 / secs,
	}
	var detail strings.Builder
	fmt.Fprintf(&detail, "%-7s %-7s %6s %6s %9s  %s\n", "tid", "role", "vol", "invol", "cpu µs", "sleeping in (at end)")
	for _, th := range threads {
		fmt.Fprintf(&detail, "%-7d %-7s %6d %6d %9.1f  %s\n", th.tid, th.role, th.vol, th.invol, float64(th.runNS)/1e3, th.wchan)
	}
	reportDetail(b, metrics, detail.String())

	// testing keeps 9 lines of a benchmark's log and truncates the rest: the whole per-thread table
	// goes to the summary, and here only the threads that woke.
	var t strings.Builder
	fmt.Fprintf(&t, "master pid %d, %d workers, heartbeats %s, %d threads, idle window %.1fs:\n",
		m.pid, workers, onOff(heartbeats, idleHeartbeat), len(after.threads), secs)
	fmt.Fprintf(&t, "  rss %.1f MB  hwm %.1f MB  cpu %.2f ms/s (%.1f µs/s by schedstat)  wakeups %d = %.2f/s",
		metrics["rss-MB"], metrics["hwm-MB"], metrics["cpu-ms/s"], metrics["cpu-us/s"], wakeups, metrics["wakeups/s"])
	if heartbeats {
		datagrams := float64(workers) / (idleHeartbeat / 2).Seconds()
		fmt.Fprintf(&t, "\n  ~%.1f WATCHDOG=1 datagrams/s expected: %.2f wakeups and %.1f µs of CPU per datagram",
			datagrams, metrics["wakeups/s"]/datagrams, metrics["cpu-us/s"]/datagrams)
	}
	const shown = 3 // so that the log stays within its 9 lines
	var woke int
	sleeping := map[string]int{}
	for _, th := range threads {
		sleeping[th.wchan]++
		if th.vol+th.invol == 0 {
			continue
		}
		if woke++; woke <= shown {
			fmt.Fprintf(&t, "\n  woke: tid %d (%s) %d vol + %d invol switches, %.1f µs CPU, now in %s",
				th.tid, th.role, th.vol, th.invol, float64(th.runNS)/1e3, th.wchan)
		}
	}
	if woke > shown {
		fmt.Fprintf(&t, "\n  ... and %d more threads woke (table in the summary)", woke-shown)
	}
	var where []string
	for wchan, n := range sleeping {
		where = append(where, fmt.Sprintf("%d in %s", n, wchan))
	}
	sort.Strings(where)
	fmt.Fprintf(&t, "\n  %d of %d threads never woke; at the end: %s", len(threads)-woke, len(threads), strings.Join(where, ", "))
	if wakeups > 0 {
		fmt.Fprintf(&t, "\n  when: %s", timeline(m.pid, samples))
	}
	b.Log(t.String())
}

func sample(b *testing.B, pid int) procSample {
	b.Helper()
	s, err := readProc(pid)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// timeline lists the seconds of the window in which the master's threads switched, and which
// threads did, e.g. "+61s 2 (sysmon 2); +120s 57 (sysmon 51, M 6)". Periodic wakeups show up as
// a steady rhythm, the runtime's rare ones as isolated entries.
func timeline(pid int, samples []procSample) string {
	const shown = 8
	var entries []string
	for i := 1; i < len(samples); i++ {
		threads, n, _ := threadDeltas(pid, samples[i-1], samples[i])
		if n == 0 {
			continue
		}
		if len(entries) == shown {
			entries = append(entries, "...")
			break
		}
		byRole := map[string]int64{}
		var roles []string
		for _, th := range threads {
			if sw := th.vol + th.invol; sw > 0 {
				if byRole[th.role] == 0 {
					roles = append(roles, th.role)
				}
				byRole[th.role] += sw
			}
		}
		var who []string
		for _, r := range roles {
			who = append(who, fmt.Sprintf("%s %d", r, byRole[r]))
		}
		entries = append(entries, fmt.Sprintf("+%.0fs %d (%s)", samples[i].at.Sub(samples[0].at).Seconds(), n, strings.Join(who, ", ")))
	}
	return strings.Join(entries, "; ")
}

func onOff(on bool, timeout time.Duration) string {
	if on {
		return fmt.Sprintf("on (timeouts.worker %s, WATCHDOG=1 every %s)", timeout, timeout/2)
	}
	return "off (no timer)"
}

// threadDelta is what one thread did during the window.
type threadDelta struct {
	tid        int
	role       string
	vol, invol int64
	runNS      int64
	wchan      string
}

// threadDeltas returns each thread's context switches and CPU time within the window, in order of
// creation, and their sums. A thread born in the window counts from zero; one that ended in it is
// listed as exited, with what it did up to the first sample only.
func threadDeltas(pid int, before, after procSample) (ts []threadDelta, wakeups, runNS int64) {
	all := map[int]threadSample{}
	for tid, t := range before.threads {
		all[tid] = t
	}
	for tid, t := range after.threads {
		all[tid] = t
	}
	order := make([]threadSample, 0, len(all))
	for _, t := range all {
		order = append(order, t)
	}
	sort.Slice(order, func(i, j int) bool {
		if order[i].started != order[j].started {
			return order[i].started < order[j].started
		}
		return order[i].tid < order[j].tid
	})
	sysmonSeen := false
	for _, t := range order {
		d := threadDelta{tid: t.tid, role: "M"}
		switch {
		case t.tid == pid:
			d.role = "main"
		case !sysmonSeen:
			// runtime.main starts sysmon before anything else, so it is the first thread after
			// the main one (forkd re-execs itself at start, and exec leaves only the main thread).
			d.role = "sysmon"
		}
		if t.tid != pid {
			sysmonSeen = true
		}
		b, inBefore := before.threads[t.tid]
		a, inAfter := after.threads[t.tid]
		switch {
		case inBefore && inAfter:
			d.vol, d.invol, d.runNS, d.wchan = a.vol-b.vol, a.invol-b.invol, a.runNS-b.runNS, a.wchan
		case inAfter:
			d.vol, d.invol, d.runNS, d.wchan = a.vol, a.invol, a.runNS, a.wchan+" (new)"
		default:
			d.wchan = "(exited)"
		}
		wakeups += d.vol + d.invol
		runNS += d.runNS
		ts = append(ts, d)
	}
	return ts, wakeups, runNS
}
