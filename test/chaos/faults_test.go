package chaos

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A fault is one kind of trouble. Its plan draws, from the round's seeded random source, what
// exactly to inject and at which event of forkd's log: the seed fixes what is injected and when
// (in events, not in time); how the machine's timing falls around it varies from run to run.
type fault struct {
	name  string
	about string
	// forkOnly: only for runners in fork-worker mode (a refork needs a template).
	forkOnly bool
	// asNobody: the fault runs a helper as the user nobody, which needs root.
	asNobody bool
	plan     func(r *rand.Rand) injection
}

type injection interface {
	fmt.Stringer
	inject(rd *roundRun)
}

var faults = []*fault{
	{
		name:     "refork-kill-template",
		about:    "SIGKILL worker 0 (the template) during a refork",
		forkOnly: true,
		plan: func(r *rand.Rand) injection {
			return reforkKillTemplate{at: pick(r, "refork-start", "spawn#0", "spawn#1")}
		},
	},
	{
		name:  "reload-kill-new",
		about: "SIGKILL a new worker during a phased restart (reload)",
		plan: func(r *rand.Rand) injection {
			return reloadKillNew{on: pick(r, evWorkerSpawned, evWorkerReady), nth: r.IntN(workers)}
		},
	},
	{
		name:  "restart-stall-master",
		about: "SIGSTOP the master during a hot restart, SIGCONT a moment later (within the heartbeat timeout)",
		plan: func(r *rand.Rand) injection {
			return restartStall{at: pick(r, restartMoments...), stall: time.Duration(500+r.IntN(2000)) * time.Millisecond}
		},
	},
	{
		name:  "restart-long-stall-master",
		about: "SIGSTOP the master during a hot restart for longer than the heartbeat timeout, then SIGCONT",
		plan: func(r *rand.Rand) injection {
			return restartStall{at: pick(r, restartMoments...), stall: heartbeatTimeout + time.Duration(1000+r.IntN(2000))*time.Millisecond}
		},
	},
	{
		name:  "restart-kill-master",
		about: "SIGKILL the master during a hot restart; start it again on the same socket, as systemd would",
		plan: func(r *rand.Rand) injection {
			return restartKillMaster{at: pick(r, restartMoments...)}
		},
	},
	{
		name:  "restart-broken-release",
		about: "hot restart, then a hot restart onto a release whose workers fail to boot, then a hot restart of the good one",
		plan: func(r *rand.Rand) injection {
			return brokenRelease{boot: pick(r, "exits at once", "exits during boot")}
		},
	},
	{
		name:     "flood-notify",
		asNobody: true,
		about:    "flood a notify socket from another uid (nobody) and another from forkd's own uid (not a worker); SIGKILL a worker meanwhile",
		plan: func(r *rand.Rand) injection {
			return flood{socket: "notify", duration: 4 * time.Second, victim: r.IntN(workers), seed: r.Uint64()}
		},
	},
	{
		name:     "flood-control",
		asNobody: true,
		about:    "flood the control socket from another uid (nobody); SIGKILL a worker meanwhile",
		plan: func(r *rand.Rand) injection {
			return flood{socket: "control", duration: 4 * time.Second, victim: r.IntN(workers), seed: r.Uint64()}
		},
	},
	{
		name:  "stalled-control",
		about: "hold control connections with a partial request body, more than the master's descriptor limit; SIGKILL a worker meanwhile",
		plan: func(r *rand.Rand) injection {
			return stalledControl{conns: masterNoFile + 50 + r.IntN(100), victim: r.IntN(workers)}
		},
	},
}

func faultNamed(name string) *fault {
	for _, f := range faults {
		if f.name == name {
			return f
		}
	}
	return nil
}

func pick[T any](r *rand.Rand, choices ...T) T { return choices[r.IntN(len(choices))] }

// restartMoments are the events of a hot restart a fault can strike at: the old image checking
// the new binary, the exec, the new image taking over the workers, the n-th replacement worker
// spawned by the new image.
var restartMoments = []string{"check", "exec", "adopted", "spawn#0", "spawn#1", "spawn#2"}

// moment returns a matcher for the named event of a rollout to generation gen: "refork-start",
// "check", "exec", "adopted", or "spawn#N" / "ready#N" (the N-th, from 0, worker of generation gen
// spawned or ready).
func moment(name string, gen int) func(event) bool {
	var kind string
	var nth int
	if n, err := fmt.Sscanf(name, "spawn#%d", &nth); err == nil && n == 1 {
		kind = evWorkerSpawned
	} else if n, err := fmt.Sscanf(name, "ready#%d", &nth); err == nil && n == 1 {
		kind = evWorkerReady
	}
	if kind != "" {
		seen := 0
		return func(ev event) bool {
			if ev.Event != kind || ev.Generation != gen {
				return false
			}
			seen++
			return seen == nth+1
		}
	}
	return func(ev event) bool {
		switch name {
		case "refork-start":
			return ev.Event == "refork-start"
		case "check":
			return ev.Event == evRestartStart && ev.Generation == 0
		case "exec":
			return ev.Event == evRestartExec
		case "adopted":
			return ev.Event == evRestartAdopted
		}
		return false
	}
}

// ---- refork-kill-template

type reforkKillTemplate struct{ at string }

func (f reforkKillTemplate) String() string {
	return fmt.Sprintf("SIGKILL worker 0 at %s of a refork", f.at)
}

func (f reforkKillTemplate) inject(rd *roundRun) {
	template := rd.before.WorkerList[0].PID
	t, cancel := rd.c.log.on(moment(f.at, rd.before.Generation+1), func(event) {
		rd.signal(template, syscall.SIGKILL, "worker 0, the template, during a refork")
	})
	rd.rollout("refork", anyOutcome)
	cancel()
	if !t.hasFired() {
		rd.note("the refork never reached %s: nothing was killed", f.at)
	}
}

// ---- reload-kill-new

type reloadKillNew struct {
	on  string // evWorkerSpawned or evWorkerReady
	nth int
}

func (f reloadKillNew) String() string {
	return fmt.Sprintf("SIGKILL the reload's new worker #%d when it is %s", f.nth, strings.TrimPrefix(f.on, "worker-"))
}

func (f reloadKillNew) inject(rd *roundRun) {
	name := fmt.Sprintf("spawn#%d", f.nth)
	if f.on == evWorkerReady {
		name = fmt.Sprintf("ready#%d", f.nth)
	}
	gen := rd.before.Generation + 1
	t, cancel := rd.c.log.on(moment(name, gen), func(ev event) {
		rd.signal(ev.PID, syscall.SIGKILL, fmt.Sprintf("worker %d of generation %d, new in a reload", deref(ev.Worker), gen))
	})
	rd.rollout("reload", anyOutcome)
	cancel()
	if !t.hasFired() {
		rd.note("the reload never reached %s: nothing was killed", name)
	}
}

// ---- restart-stall-master

type restartStall struct {
	at    string
	stall time.Duration
}

func (f restartStall) String() string {
	return fmt.Sprintf("SIGSTOP the master for %s at %s of a hot restart", f.stall, f.at)
}

func (f restartStall) inject(rd *roundRun) {
	master := rd.c.masterPID()
	resumed := make(chan struct{})
	t, cancel := rd.c.log.on(moment(f.at, rd.before.Generation+1), func(event) {
		if !rd.signal(master, syscall.SIGSTOP, "the master, during a hot restart") {
			close(resumed)
			return
		}
		time.AfterFunc(f.stall, func() {
			syscall.Kill(master, syscall.SIGCONT)
			close(resumed)
		})
	})
	// A stall of the master, however long, is no reason for the restart to fail.
	rd.rollout("restart", mustSucceed)
	cancel()
	if t.hasFired() {
		<-resumed
	} else {
		rd.note("the hot restart never reached %s: the master was not stopped", f.at)
	}
}

// ---- restart-kill-master

type restartKillMaster struct{ at string }

func (f restartKillMaster) String() string {
	return fmt.Sprintf("SIGKILL the master at %s of a hot restart", f.at)
}

func (f restartKillMaster) inject(rd *roundRun) {
	master := rd.c.masterPID()
	mark := rd.c.log.mark()
	t, cancel := rd.c.log.on(moment(f.at, rd.before.Generation+1), func(event) {
		rd.signal(master, syscall.SIGKILL, "the master, during a hot restart")
	})
	cmd := rd.forkctl("restart", "--wait")
	select {
	case <-t.fired:
	case <-cmd.done:
	}
	cancel()
	if !t.hasFired() {
		rd.note("the hot restart ended (%s: exit %d, %q) before %s: the master was not killed", cmd, cmd.code, cmd.out, f.at)
		rd.settle("the restart")
		return
	}
	select {
	case <-rd.c.masterDone():
	case <-time.After(10 * time.Second):
		rd.violate(invFault, "the master %d did not die of SIGKILL within 10s", master)
		return
	}
	doneBefore := false
	for _, w := range rd.before.WorkerList {
		rd.orphaned[w.PID] = true
	}
	for _, ev := range rd.c.log.since(mark) {
		switch {
		case ev.Event == "restart-done" && !ev.Time.After(t.ev.Time):
			doneBefore = true
		case ev.Event == evWorkerSpawned:
			rd.orphaned[ev.PID] = true
		}
	}
	// What the master started must end with it (its workers drain, the kernel signals them or
	// they see their control channel close); nothing may go on serving the old code unsupervised.
	end := time.Now().Add(goneBound)
	left := strays(rd.c, 0, nil)
	for len(left) > 0 && time.Now().Before(end) {
		sleep(200)
		left = strays(rd.c, 0, nil)
	}
	if len(left) > 0 {
		var lines []string
		for _, s := range left {
			lines = append(lines, s.String())
		}
		rd.violate(invStrays, "%s after the master was killed: %s", goneBound, strings.Join(lines, "; "))
		killLeftovers(rd.c)
	}
	if err := rd.c.startMaster(); err != nil {
		rd.violate(invReady, "cannot start a new master: %v", err)
		return
	}
	rd.settle("a new master")
	select {
	case <-cmd.done:
	case <-time.After(commandBound):
	}
	<-cmd.done
	switch {
	case cmd.code == -1:
		rd.violate(invHonest, "%s did not return within %s after its master was killed: %s", cmd, commandBound, cmd.out)
	case cmd.code == 0 && !doneBefore:
		rd.violate(invHonest, "%s exited 0 (%q) though the master was killed before the restart was done", cmd, cmd.out)
	default:
		rd.note("%s exited %d: %s", cmd, cmd.code, cmd.out)
	}
}

// ---- restart-broken-release

type brokenRelease struct{ boot string }

func (f brokenRelease) String() string {
	return fmt.Sprintf("hot restart; hot restart onto a release whose workers %s; hot restart of the good release", f.boot)
}

func (f brokenRelease) inject(rd *roundRun) {
	if !rd.rollout("restart", mustSucceed) {
		return
	}
	broken := []string{"/bin/sh", "-c", "echo 'chaos: a broken release' >&2; exit 1"}
	if f.boot == "exits during boot" {
		broken = []string{"/bin/sh", "-c", "sleep 0.3; echo 'chaos: a broken release, exiting during boot' >&2; exit 3"}
	}
	if err := rd.c.writeConfig(broken); err != nil {
		rd.note("cannot write the broken release: %v", err)
		return
	}
	mark := rd.c.log.mark()
	rd.injected()
	rd.rollout("restart", mustFail)
	// The broken release's workers crash: that is the fault, not a violation.
	for _, ev := range rd.c.log.since(mark) {
		if ev.Event == evWorkerSpawned && ev.Generation == rd.before.Generation+2 {
			rd.expectedDeaths[ev.PID] = "a worker of the broken release"
		}
	}
	if err := rd.c.writeConfig(nil); err != nil {
		rd.note("cannot write the good release back: %v", err)
		return
	}
	rd.rollout("restart", mustSucceed)
}

// ---- flood-notify, flood-control

// floodCPUShare bounds the master's CPU use during a flood, as a share of one CPU: a sender from
// another user must be refused before any costly work, and one of forkd's own user that is not a
// worker (it can reach every socket) is traced at a bounded rate and its drops counted in bulk.
const floodCPUShare = 0.25

type flood struct {
	socket   string // "notify" or "control"
	duration time.Duration
	victim   int
	seed     uint64
}

// local is the worker whose notify socket the flood from forkd's own user targets: never the
// victim, whose socket may be closed under the flood.
func (f flood) local() int { return (f.victim + 1 + int(f.seed%uint64(workers-1))) % workers }

func (f flood) String() string {
	if f.socket == "notify" {
		return fmt.Sprintf("flood worker 0's notify socket as nobody and worker %d's as forkd's uid for %s, SIGKILL worker %d meanwhile",
			f.local(), f.duration, f.victim)
	}
	return fmt.Sprintf("flood the %s socket as nobody for %s, SIGKILL worker %d meanwhile", f.socket, f.duration, f.victim)
}

func (f flood) inject(rd *roundRun) {
	target := rd.c.socket
	var localTarget string
	if f.socket == "notify" {
		rd.floodsNotify = true
		var err, lerr error
		target, err = notifySocket(rd.before.WorkerList[0].PID)
		localTarget, lerr = notifySocket(rd.before.WorkerList[f.local()].PID)
		if err != nil || lerr != nil {
			rd.note("cannot learn the notify sockets: %v %v", err, lerr)
			return
		}
	}
	master := rd.c.masterPID()
	cpu0, err := cpuTime(master)
	if err != nil {
		rd.note("cannot read the master's CPU time: %v", err)
		return
	}
	start := time.Now()
	h, err := startHelper("flood-"+f.socket, target, f.duration.String(), fmt.Sprint(f.seed))
	if err != nil {
		rd.note("cannot start the flood: %v", err)
		return
	}
	var local *helper
	var heard chan bool
	if localTarget != "" {
		if local, err = startLocalHelper("flood-notify", localTarget, f.duration.String(), fmt.Sprint(f.seed+1)); err != nil {
			rd.note("cannot start the flood from forkd's uid: %v", err)
		} else {
			heard = make(chan bool, 1)
			go func() { heard <- rd.reportsDuring(rd.before.WorkerList[f.local()].PID, start.Add(f.duration)) }()
		}
	}
	rd.injected()
	time.Sleep(f.duration / 4)
	rd.killAndSettle(rd.before.WorkerList[f.victim].PID, fmt.Sprintf("worker %d", f.victim),
		fmt.Sprintf("during a flood of the %s socket", f.socket))
	summary, err := h.wait(f.duration + 30*time.Second)
	var localSummary string
	var lerr error
	if local != nil {
		localSummary, lerr = local.wait(f.duration + 30*time.Second)
	}
	elapsed := time.Since(start)
	cpu1, cerr := cpuTime(master)
	if err != nil || lerr != nil || cerr != nil {
		rd.note("the flood: %v %v %v", err, lerr, cerr)
		return
	}
	share := float64(cpu1-cpu0) / float64(elapsed)
	if local == nil {
		rd.note("flood of the %s socket: %s; the master used %.0f%% of a CPU meanwhile", f.socket, summary, 100*share)
		if share > floodCPUShare {
			rd.violate(invFault, "the master used %.0f%% of a CPU during a flood of its %s socket by another user (%s); at most %.0f%%",
				100*share, f.socket, summary, 100*floodCPUShare)
		}
		return
	}
	rd.note("flood of the notify sockets: as nobody %s; as forkd's uid %s; the master used %.0f%% of a CPU meanwhile",
		summary, localSummary, 100*share)
	if share > floodCPUShare {
		rd.violate(invFault, "the master used %.0f%% of a CPU during a flood of its notify sockets by another user (%s) and by a process of its own user that is not a worker (%s); at most %.0f%%",
			100*share, summary, localSummary, 100*floodCPUShare)
	}
	if !<-heard {
		rd.violate(invFault, "worker %d (pid %d) reported no request count while a process of forkd's user that is not a worker flooded its notify socket (%s): its own notifications did not get through",
			f.local(), rd.before.WorkerList[f.local()].PID, localSummary)
	}
	var mayLose uint64
	if f.victim == 0 {
		// Nobody's flood targets worker 0's socket, which closes with its worker: what was queued
		// on it then is never read. A unix datagram socket queues at most max_dgram_qlen + 1.
		mayLose = datagramQueueLimit() + 1
	}
	rd.checkDropsCounted(mayLose, summary, localSummary)
}

// datagramQueueLimit is net.unix.max_dgram_qlen, how many datagrams a unix socket queues unread.
func datagramQueueLimit() uint64 {
	b, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen")
	if err != nil {
		return 512 // the kernel's default
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 512
	}
	return n
}

// reportsDuring reports whether worker pid's request count, which it reports on its notify
// socket at least once a second under the suite's load, moves before end.
func (rd *roundRun) reportsDuring(pid int, end time.Time) bool {
	requests := func() (uint64, bool) {
		st, err := rd.c.status()
		if err != nil {
			return 0, false
		}
		for _, w := range st.WorkerList {
			if w.PID == pid {
				return w.Requests, true
			}
		}
		return 0, false
	}
	first, ok := requests()
	for !ok && time.Now().Before(end) {
		time.Sleep(100 * time.Millisecond)
		first, ok = requests()
	}
	for time.Now().Before(end) {
		time.Sleep(200 * time.Millisecond)
		if n, ok := requests(); ok && n > first {
			return true
		}
	}
	return false
}

// checkDropsCounted: every datagram the floods sent reached the master (a socket of forkd's
// reads them all: the one from forkd's own user, and nobody's on an abstract socket) and none was
// a worker's, so forkd counts each as dropped, before the next round begins; but for mayLose,
// queued on a socket that closed with the worker the fault killed.
func (rd *roundRun) checkDropsCounted(mayLose uint64, summaries ...string) {
	var sent uint64
	for _, s := range summaries {
		var n uint64
		if _, err := fmt.Sscanf(s, "%d datagrams sent", &n); err != nil {
			rd.note("cannot read the flood's count: %q", s)
			return
		}
		sent += n
	}
	var dropped uint64
	end := time.Now().Add(10 * time.Second)
	for {
		st, err := rd.c.status()
		if err == nil && st.MasterPID == rd.before.MasterPID {
			dropped = st.DroppedNotifications - rd.before.DroppedNotifications
			if dropped+mayLose >= sent {
				return
			}
		}
		if time.Now().After(end) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	rd.violate(invFault, "forkd counted %d notifications dropped, but the floods sent %d (of which at most %d may be lost with the killed worker's socket)", dropped, sent, mayLose)
}

// notifySocket reads the NOTIFY_SOCKET forkd gave a worker.
func notifySocket(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return "", err
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, "NOTIFY_SOCKET="); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("worker %d has no NOTIFY_SOCKET", pid)
}

// ---- stalled-control

// stalledBound is how long a control connection with a partial request may stay open: pkg/control
// bounds the phases of a request (idle and header phases at 10s); 30s leaves room for the body's.
const stalledBound = 30 * time.Second

type stalledControl struct {
	conns  int
	victim int
}

func (f stalledControl) String() string {
	return fmt.Sprintf("hold %d control connections with a partial body, SIGKILL worker %d meanwhile", f.conns, f.victim)
}

// A request whose body never comes: a scale to the current count, harmless if it ever arrived.
const partialRequest = "POST /v1/scale HTTP/1.1\r\nHost: forkd\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"workers\": 3"

func (f stalledControl) inject(rd *roundRun) {
	dial := func() (net.Conn, error) {
		conn, err := net.DialTimeout("unix", rd.c.socket, 2*time.Second)
		if err != nil {
			return nil, err
		}
		if _, err := conn.Write([]byte(partialRequest)); err != nil {
			conn.Close()
			return nil, err
		}
		return conn, nil
	}
	first, err := dial()
	if err != nil {
		rd.note("cannot open a control connection: %v", err)
		return
	}
	opened := time.Now()
	held := []net.Conn{first}
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// The first one is accepted before the others queue: the status answering says so.
	if _, ok, _ := rd.c.waitSettled(readyBound); !ok {
		rd.violate(invFault, "the control API stopped answering with one stalled connection")
		return
	}
	var dialErr error
	for len(held) < f.conns {
		conn, err := dial()
		if err != nil {
			dialErr = err
			break
		}
		held = append(held, conn)
	}
	rd.injected()
	master := rd.c.masterPID()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	maxFDs := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if u, err := masterUsage(master); err == nil && u.fds > maxFDs {
				maxFDs = u.fds
			}
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	rd.killAndSettle(rd.before.WorkerList[f.victim].PID, fmt.Sprintf("worker %d", f.victim),
		fmt.Sprintf("with %d stalled control connections", len(held)))
	// forkd must end the first stalled request on its own.
	first.SetReadDeadline(opened.Add(stalledBound))
	_, rerr := bufio.NewReader(first).ReadString('\n')
	closed := rerr == nil || !isTimeout(rerr)
	close(stop)
	wg.Wait()
	if dialErr != nil {
		rd.note("opened %d of %d stalled connections (then: %v)", len(held), f.conns, dialErr)
	}
	rd.note("the master held up to %d descriptors (limit %d)", maxFDs, masterNoFile)
	if !closed {
		rd.violate(invFault, "a control connection with a partial body was still open after %s", stalledBound)
	}
	if maxFDs >= masterNoFile-1 {
		rd.violate(invFault, "stalled control connections took the master to its descriptor limit (%d of %d)", maxFDs, masterNoFile)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
