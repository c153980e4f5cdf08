package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// Every wait is bounded. Generous, because a 2-core machine booting 64 workers is slow; a healthy
// run never waits for them.
const (
	waitDeadline = 60 * time.Second
	// stopDeadline covers the drain: the config's shutdown timeout (5s) plus the master's own
	// exit, before forkd gets SIGKILL.
	stopDeadline = 15 * time.Second
	killDeadline = 10 * time.Second
)

// masterConfig is what a benchmark varies in forkd's config.
type masterConfig struct {
	workers int
	command []string
	// heartbeat is timeouts.worker: zero leaves it off, so the master has no timer at all.
	heartbeat time.Duration
	// directory and env are the config's attributes of the same names (unset when empty).
	directory string
	env       map[string]string
	// extra is more HCL for the config: fork_worker, restart, rollout blocks.
	extra string
}

// master is one forkd under measurement.
type master struct {
	tb      testing.TB
	argv    []string // the workers' command, to tell our workers from any other process
	cmd     *exec.Cmd
	pid     int
	socket  string
	config  string          // the config file, which a benchmark may change before a reload
	client  *control.Client // for commands (scale); status goes through getStatus
	out     *logLines
	done    chan struct{}
	waitErr error // cmd.Wait's result, valid once done is closed
	stopped sync.Once
}

func testworker(flags ...string) []string {
	return append([]string{filepath.Join(bin, "testworker")}, flags...)
}

func startMaster(tb testing.TB, c masterConfig) *master {
	tb.Helper()
	dir := tb.TempDir()
	socket := filepath.Join(dir, "control.sock")
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "command = [%s]\nworkers = %d\n", quoteAll(c.command), c.workers)
	if c.directory != "" {
		fmt.Fprintf(&cfg, "directory = %q\n", c.directory)
	}
	if len(c.env) > 0 {
		var vars []string
		for k, v := range c.env {
			vars = append(vars, fmt.Sprintf("%s = %q", k, v))
		}
		sort.Strings(vars)
		fmt.Fprintf(&cfg, "env = { %s }\n", strings.Join(vars, ", "))
	}
	cfg.WriteString(c.extra + "\n")
	cfg.WriteString("listen \"http\" {\n  address = \"tcp://127.0.0.1:0\"\n}\n")
	cfg.WriteString("timeouts {\n  shutdown = \"5s\"\n")
	if c.heartbeat > 0 {
		fmt.Fprintf(&cfg, "  worker = %q\n", c.heartbeat.String())
	}
	cfg.WriteString("}\n")
	fmt.Fprintf(&cfg, "control {\n  socket = %q\n}\n", socket)
	// Text, explicitly: the spawn benchmark reads boot= from the "worker ready" records.
	level := "info"
	if os.Getenv("FORKD_BENCH_REFORK_TRACE") != "" {
		level = "debug" // the refork's every step (pause, paused, each stop), for the trace
	}
	fmt.Fprintf(&cfg, "log {\n  format = \"text\"\n  level = %q\n}\n", level)
	path := filepath.Join(dir, "forkd.hcl")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o644); err != nil {
		tb.Fatal(err)
	}

	m := &master{tb: tb, argv: c.command, socket: socket, config: path, client: control.NewClient(socket), out: newLogLines(), done: make(chan struct{})}
	// Each master runs a copy of the binary of its own: masters started from one file share its
	// pages in the page cache, and each would count only its share of them in its PSS, where a
	// forkd alone on a machine has them all (~12 MB of text resident, against ~3 MB each with four
	// masters side by side).
	exe := filepath.Join(dir, "forkd")
	if err := copyFile(filepath.Join(bin, "forkd"), exe); err != nil {
		tb.Fatal(err)
	}
	m.cmd = exec.Command(exe, "--config", path)
	m.cmd.SysProcAttr = serverSession()
	m.cmd.Stdout, m.cmd.Stderr = m.out, m.out
	// The workers share forkd's stderr: should one outlive forkd, Wait must not block on the pipe.
	m.cmd.WaitDelay = 5 * time.Second
	if err := m.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	m.pid = m.cmd.Process.Pid
	go func() {
		m.waitErr = m.cmd.Wait()
		close(m.done)
	}()
	tb.Cleanup(m.stop)
	return m
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// exited fails the benchmark if forkd has exited.
func (m *master) checkAlive(what string) {
	m.tb.Helper()
	select {
	case <-m.done:
		m.tb.Fatalf("forkd exited (%v) while %s\noutput:\n%s", m.waitErr, what, m.out.String())
	default:
	}
}

func (m *master) status() control.Status {
	m.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := m.getStatus(ctx)
	if err != nil {
		m.tb.Fatalf("status: %v\noutput:\n%s", err, m.out.String())
	}
	return st
}

// getStatus is GET /v1/status on a connection of its own, closed after the reply. control.Client
// keeps its connection open for the next call, and the server holds an idle connection with a
// 2-minute deadline: a timer in the master, which would show up as a wakeup in an idle window of
// 2 minutes or more (measured). forkctl, a process that exits, never leaves one behind; neither
// does this.
func (m *master) getStatus(ctx context.Context) (control.Status, error) {
	var st control.Status
	return st, getJSONOverUnix(ctx, m.socket, "http://forkd/v1/status", 16<<20, &st)
}

// getJSONOverUnix GETs url from the HTTP server on the unix socket at path, on a connection of its
// own, into out; a status other than 200 is an error with the body.
func getJSONOverUnix(ctx context.Context, path, url string, limit int64, out any) error {
	hc := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", req.URL.Path, resp.Status, body)
	}
	return json.Unmarshal(body, out)
}

// waitReady polls the status API until n workers are ready.
func (m *master) waitReady(n int) control.Status {
	m.tb.Helper()
	end := time.Now().Add(waitDeadline)
	var last control.Status
	var lastErr error
	for time.Now().Before(end) {
		m.checkAlive(fmt.Sprintf("waiting for %d ready workers", n))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := m.getStatus(ctx)
		cancel()
		if err == nil {
			last = st
			if st.Phase == control.PhaseRunning && st.Ready == n && st.Workers == n {
				return st
			}
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	m.tb.Fatalf("timed out waiting for %d ready workers: last status %d/%d ready, phase %q (error %v)\noutput:\n%s",
		n, last.Ready, last.Workers, last.Phase, lastErr, m.out.String())
	return last
}

func (m *master) scale(delta int) {
	m.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.client.Scale(ctx, control.ScaleRequest{Delta: delta}); err != nil {
		m.tb.Fatalf("scale %+d: %v\noutput:\n%s", delta, err, m.out.String())
	}
}

// next returns the next log event of kind (and of pid, when not 0), skipping others.
func (m *master) next(kind string, pid int) logEvent {
	m.tb.Helper()
	timeout := time.NewTimer(waitDeadline)
	defer timeout.Stop()
	for {
		select {
		case ev := <-m.out.events:
			if ev.kind == kind && (pid == 0 || ev.pid == pid) {
				return ev
			}
		case <-m.done:
			m.tb.Fatalf("forkd exited (%v) while waiting for %s\noutput:\n%s", m.waitErr, kind, m.out.String())
		case <-timeout.C:
			m.tb.Fatalf("no %s (pid %d) within %s\noutput:\n%s", kind, pid, waitDeadline, m.out.String())
		}
	}
}

// await returns the first record of kind that arrived at or after t and satisfies match (any,
// when nil), waiting for it up to waitDeadline.
func (m *master) await(kind string, t time.Time, match func(logEvent) bool) logEvent {
	m.tb.Helper()
	timeout := time.NewTimer(waitDeadline)
	defer timeout.Stop()
	for {
		m.out.mu.Lock()
		changed := m.out.changed
		m.out.mu.Unlock()
		for _, ev := range m.out.since(kind, t) {
			if match == nil || match(ev) {
				return ev
			}
		}
		select {
		case <-changed:
		case <-m.done:
			m.tb.Fatalf("forkd exited (%v) while waiting for %s\noutput:\n%s", m.waitErr, kind, m.out.String())
		case <-timeout.C:
			m.tb.Fatalf("no %s within %s\noutput:\n%s", kind, waitDeadline, m.out.String())
		}
	}
}

// rolloutRun is one `forkctl CMD --wait` as forkctl and forkd's log saw it.
type rolloutRun struct {
	took, logged time.Duration // forkctl's wall time; the log's start record to done record
	start, done  logEvent
	ready        []logEvent // the worker-ready records between start and done
}

// timeRollout runs `forkctl cmd --wait` (cmd is refork or reload) for the rep-th time and reads
// the rollout's start and done records and the workers that got ready in between.
func (m *master) timeRollout(cmd string, rep int) rolloutRun {
	m.tb.Helper()
	t0 := time.Now()
	out, code, took := m.forkctl(cmd, "--wait")
	if code != 0 {
		m.tb.Fatalf("%s %d: forkctl exit %d: %s\noutput:\n%s", cmd, rep, code, out, m.out.String())
	}
	r := rolloutRun{took: took, start: m.await(cmd+"-start", t0, nil), done: m.await(cmd+"-done", t0, nil)}
	r.logged = r.done.at.Sub(r.start.at)
	for _, ev := range m.out.since("worker-ready", r.start.at) {
		if ev.at.After(r.done.at) {
			break
		}
		r.ready = append(r.ready, ev)
	}
	return r
}

// forkctl runs the forkctl binary against this forkd, and returns its output, its exit code and
// how long it ran (start to exit: the end-to-end time an operator sees).
func (m *master) forkctl(args ...string) (string, int, time.Duration) {
	m.tb.Helper()
	r, err := runForkctl(m.socket, args...)
	if err != nil {
		m.tb.Fatalf("%v\n%s", err, r.out)
	}
	return r.out, r.code, r.took
}

// waitFor polls the status API until cond holds.
func (m *master) waitFor(what string, cond func(control.Status) bool) control.Status {
	m.tb.Helper()
	st, err := m.tryWaitFor(what, cond, waitDeadline)
	if err != nil {
		m.tb.Fatalf("%v\noutput:\n%s", err, m.out.String())
	}
	return st
}

// tryWaitFor polls the status API until cond holds, for up to deadline, and says why not.
func (m *master) tryWaitFor(what string, cond func(control.Status) bool, deadline time.Duration) (control.Status, error) {
	m.tb.Helper()
	end := time.Now().Add(deadline)
	var last control.Status
	var lastErr error
	for time.Now().Before(end) {
		m.checkAlive("waiting for " + what)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := m.getStatus(ctx)
		cancel()
		if err == nil {
			last = st
			if cond(st) {
				return st, nil
			}
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	var procs []string
	for _, w := range last.WorkerList {
		procs = append(procs, fmt.Sprintf("worker %d pid %d generation %d %s", w.Index, w.PID, w.Generation, w.State))
	}
	return last, fmt.Errorf("timed out after %s waiting for %s: last status %d/%d ready, phase %q, %d processes (%s), error %v",
		deadline, what, last.Ready, last.Workers, last.Phase, len(last.WorkerList), strings.Join(procs, "; "), lastErr)
}

// settled waits until n workers are ready and no other process is left: no rollout, no old worker
// still draining.
func (m *master) settled(n int) control.Status {
	m.tb.Helper()
	return m.waitFor(fmt.Sprintf("%d ready workers and no other", n), settledCond(n))
}

func settledCond(n int) func(control.Status) bool {
	return func(st control.Status) bool {
		// With fork_worker.refork_from = "warmest", a template that serves nothing comes on top
		// of the n serving workers (the status's Workers and Ready count those).
		nonServing := 0
		for _, w := range st.WorkerList {
			if w.NonServing {
				nonServing++
			}
		}
		return st.Phase == control.PhaseRunning && st.Ready == n && st.Workers == n && nonServing <= 1 && len(st.WorkerList) == n+nonServing
	}
}

// addr is the address of the master's (one) listener, host:port.
func (m *master) addr() string {
	m.tb.Helper()
	st := m.status()
	if len(st.Listeners) == 0 {
		m.tb.Fatal("forkd has no listener")
	}
	return strings.TrimPrefix(strings.TrimPrefix(strings.TrimPrefix(st.Listeners[0].Address, "tcp://"), "tcp4://"), "tcp6://")
}

// stop ends forkd (SIGTERM, SIGKILL after stopDeadline) and checks that every worker it ever
// spawned is gone, killing by PID any that is still ours. It runs once: explicitly, and again
// as a cleanup in case the benchmark failed half-way.
func (m *master) stop() {
	m.stopped.Do(func() {
		select {
		case <-m.done:
		default:
			m.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-m.done:
			case <-time.After(stopDeadline):
				m.tb.Errorf("forkd did not exit within %s of SIGTERM: SIGKILL", stopDeadline)
				m.cmd.Process.Signal(syscall.SIGKILL)
				select {
				case <-m.done:
				case <-time.After(killDeadline):
					m.tb.Errorf("forkd (pid %d) did not exit after SIGKILL", m.pid)
				}
			}
		}
		// The workers exit on the master's SIGTERM (or on Pdeathsig when it was killed).
		killSurvivors(m.tb, m.out.spawned(), m.ours, "forkd")
	})
}

// killSurvivors gives pids, the workers of a master that has exited, until killDeadline to exit
// too, and SIGKILLs (as a test error) each one still running what ours recognizes: PIDs are
// recycled fast on a busy machine, and a PID that now runs something else is gone as far as that
// master is concerned.
func killSurvivors(tb testing.TB, pids []int, ours func(pid int) bool, master string) {
	end := time.Now().Add(killDeadline)
	for _, pid := range pids {
		alive := func() bool { return !processGone(pid) && ours(pid) }
		for alive() && time.Now().Before(end) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive() {
			tb.Errorf("worker %d outlived %s: SIGKILL", pid, master)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// ours reports whether pid runs this master's worker command: as the app, or still as the shim
// (whose argv ends with the app's).
func (m *master) ours(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	return bytes.Contains(b, []byte(strings.Join(m.argv, "\x00")+"\x00"))
}

// processGone reports whether pid has exited: no /proc entry, or a zombie waiting for its parent
// (after forkd's death that parent is init, which reaps on its own schedule).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}

// logEvent is one of forkd's records that has an event= field. Worker records (event=
// worker-spawned, worker-ready with its boot duration, worker-exited) also go to the events
// channel; every record is kept in the history, with the time it arrived here.
type logEvent struct {
	kind string
	pid  int
	boot time.Duration
	// worker is the slot (worker=), -1 when the record has none.
	worker int
	// forked: the worker was spawned by the template's fork ("worker spawned (forked)").
	forked bool
	// at is when the record arrived on forkd's stderr: a finer clock than its time=, which has
	// milliseconds.
	at time.Time
}

// logLines collects forkd's text log, turning worker records into events as they arrive.
type logLines struct {
	mu     sync.Mutex
	all    bytes.Buffer
	part   []byte // an incomplete last line
	pids   []int  // every worker spawned, for the cleanup
	events chan logEvent
	// history is every record with an event= field; changed is closed (and replaced) whenever one
	// is added.
	history []logEvent
	changed chan struct{}
	forked  map[int]bool
	// lines is every line with the time it arrived, to show what forkd said around a failure.
	lines []timedLine
}

type timedLine struct {
	at   time.Time
	line string
}

// eventBuffer holds every worker record of a benchmark run (a few hundred) even when nobody reads:
// a full channel drops records rather than block forkd's stderr.
const eventBuffer = 4096

func newLogLines() *logLines {
	return &logLines{events: make(chan logEvent, eventBuffer), changed: make(chan struct{}), forked: map[int]bool{}}
}

var (
	eventRE  = regexp.MustCompile(`\bevent=([a-z-]+)`)
	pidRE    = regexp.MustCompile(`\bpid=(\d+)\b`)
	workerRE = regexp.MustCompile(`\bworker=(\d+)\b`)
	bootRE   = regexp.MustCompile(`\bboot=(\S+)`)
)

func (l *logLines) Write(p []byte) (int, error) {
	at := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all.Write(p)
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		line := string(l.part[:i])
		l.lines = append(l.lines, timedLine{at, line})
		l.parse(line, at)
		l.part = l.part[i+1:]
	}
	return len(p), nil
}

func (l *logLines) parse(line string, at time.Time) {
	kind := eventRE.FindStringSubmatch(line)
	if kind == nil {
		return
	}
	ev := logEvent{kind: kind[1], worker: -1, at: at}
	if pid := pidRE.FindStringSubmatch(line); pid != nil {
		ev.pid, _ = strconv.Atoi(pid[1])
	}
	if w := workerRE.FindStringSubmatch(line); w != nil {
		ev.worker, _ = strconv.Atoi(w[1])
	}
	if boot := bootRE.FindStringSubmatch(line); boot != nil {
		ev.boot, _ = time.ParseDuration(boot[1])
	}
	isWorker := ev.kind == "worker-spawned" || ev.kind == "worker-ready" || ev.kind == "worker-exited"
	if ev.kind == "worker-spawned" && ev.pid > 0 {
		l.pids = append(l.pids, ev.pid)
		l.forked[ev.pid] = strings.Contains(line, "worker spawned (forked)")
	}
	ev.forked = l.forked[ev.pid]
	l.history = append(l.history, ev)
	close(l.changed)
	l.changed = make(chan struct{})
	if !isWorker || ev.pid == 0 {
		return
	}
	select {
	case l.events <- ev:
	default:
	}
}

// between returns the lines that arrived from a to b, at most limit of them (the last ones).
func (l *logLines) between(a, b time.Time, limit int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, tl := range l.lines {
		if !tl.at.Before(a) && !tl.at.After(b) {
			out = append(out, fmt.Sprintf("%+.1fms %s", ms(tl.at.Sub(a)), tl.line))
		}
	}
	return out[len(out)-min(limit, len(out)):]
}

// since returns the records of kind (every kind when empty) that arrived at or after t, in order.
func (l *logLines) since(kind string, t time.Time) []logEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var evs []logEvent
	for _, ev := range l.history {
		if !ev.at.Before(t) && (kind == "" || ev.kind == kind) {
			evs = append(evs, ev)
		}
	}
	return evs
}

func (l *logLines) spawned() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int(nil), l.pids...)
}

// String is the whole log, for failure reports.
func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}

// procSample is what /proc says about a process at one moment.
type procSample struct {
	at           time.Time
	rssKB, hwmKB int64
	// ticks is utime+stime of the whole process (every thread, live or exited), in clock ticks.
	ticks   int64
	threads map[int]threadSample
}

// threadSample is one thread (task) of the process.
type threadSample struct {
	tid int
	// started is the thread's start time in ticks since boot; with the TID it orders threads by
	// creation.
	started int64
	// vol and invol are its voluntary and involuntary context switches.
	vol, invol int64
	// runNS is its time on a CPU, in nanoseconds (schedstat): finer than the 10 ms ticks.
	runNS int64
	// wchan is the kernel function it sleeps in, e.g. futex_do_wait or do_epoll_wait.
	wchan string
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times: 100 on x86 and arm, the platforms
// forkd targets (the real value needs sysconf(_SC_CLK_TCK), which is libc's, not Go's).
const clockTick = 10 * time.Millisecond

func readProc(pid int) (procSample, error) {
	s := procSample{at: time.Now(), threads: map[int]threadSample{}}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k {
		case "VmRSS":
			s.rssKB = kB(v)
		case "VmHWM":
			s.hwmKB = kB(v)
		}
	}
	fields, err := statFields(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	s.ticks = fields[14] + fields[15]
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return s, err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		// A thread may exit between the listing and the reads: it is then simply left out.
		if ts, err := readThread(pid, tid); err == nil {
			s.threads[tid] = ts
		}
	}
	return s, nil
}

func readThread(pid, tid int) (threadSample, error) {
	dir := fmt.Sprintf("/proc/%d/task/%d/", pid, tid)
	ts := threadSample{tid: tid}
	fields, err := statFields(dir + "stat")
	if err != nil {
		return ts, err
	}
	ts.started = fields[22]
	status, err := os.ReadFile(dir + "status")
	if err != nil {
		return ts, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "voluntary_ctxt_switches":
			ts.vol, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "nonvoluntary_ctxt_switches":
			ts.invol, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	// schedstat and wchan are optional kernel features: without them the columns stay empty.
	if b, err := os.ReadFile(dir + "schedstat"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			ts.runNS, _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	if b, err := os.ReadFile(dir + "wchan"); err == nil {
		ts.wchan = string(b)
	}
	return ts, nil
}

// statFields parses /proc/.../stat into its numeric fields, indexed as in proc(5) (1-based:
// fields[14] is utime). The command name, field 2, may contain spaces and parentheses, so the
// rest is read after its last ')'; fields 1 to 3 are left zero.
func statFields(path string) ([]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("%s: malformed", path)
	}
	rest := strings.Fields(s[i+1:]) // starts at field 3, the state
	fields := make([]int64, 3+len(rest))
	for j, f := range rest[1:] {
		fields[4+j], _ = strconv.ParseInt(f, 10, 64)
	}
	if len(fields) < 23 {
		return nil, fmt.Errorf("%s: only %d fields", path, len(fields))
	}
	return fields, nil
}

// kB parses a "  12345 kB" value of /proc/PID/status.
func kB(v string) int64 {
	n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
	return n
}

// serverSession is how a server under test (forkd's master, Puma) starts: in the benchmark's
// session by default; with FORKD_BENCH_SETSID=1 in a session of its own, as systemd starts a
// service, so that the kernel's autogroup scheduling (sched_autogroup_enabled) shares the CPU
// between the server and the load generator first, and between the server's own processes (and
// their nice values: fork_worker.refork_nice) within its share.
func serverSession() *syscall.SysProcAttr {
	if os.Getenv("FORKD_BENCH_SETSID") == "1" {
		return &syscall.SysProcAttr{Setsid: true}
	}
	return nil
}

// copyFile copies the executable from to a new file to (not a link: a copy of its own).
func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}
