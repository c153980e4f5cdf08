package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// A round injects one fault into a settled cluster under load, then checks the invariants.

// violation is one invariant a round broke.
type violation struct {
	invariant string
	detail    string
}

// Invariants, as the table names them.
const (
	invReady    = "ready"    // every worker ready again within readyBound
	invStrays   = "strays"   // no process forkd started and no longer tracks
	invFDs      = "fds"      // the master's descriptors flat across rounds
	invRSS      = "rss"      // the master's resident memory flat across rounds
	invHonest   = "honest"   // a command's exit status says what happened
	invRollout  = "rollout"  // a rollout that nothing dooms completes; one that cannot complete does not
	invDeaths   = "deaths"   // no worker died that the fault did not kill
	invRequests = "requests" // every failed request explained by a fault that killed its server
	invDropped  = "dropped"  // no worker's notification counted as hostile
	invFault    = "fault"    // the fault's own promise (the flood's cost, a stalled connection's bound...)
)

// Slack of the flatness checks: a status client's idle connection, a Go heap that breathes.
const (
	fdSlack  = 4
	rssSlack = 20 << 20
)

// roundResult is what the report shows of one round.
type roundResult struct {
	index      int
	runner     string
	fault      string
	plan       string
	injected   int
	served     int64
	failed     []explained
	violations []violation
	notes      []string
	duration   time.Duration
	// usage is the master's after the round, baseline what it is compared with.
	usage, baseline usage
}

// explained is a failed request and what caused it; expected says the cause is a fault that
// killed the process serving it.
type explained struct {
	failure
	cause    string
	expected bool
}

// kill is a SIGKILL the round sent to a process of the cluster.
type kill struct {
	at     time.Time
	pid    int
	what   string
	master bool
}

type roundRun struct {
	c      *cluster
	load   *load
	res    *roundResult
	before control.Status // settled, at the start
	start  time.Time
	mark   int

	mu    sync.Mutex
	kills []kill
	// unsettled: the cluster did not settle after a step of the round.
	unsettled bool
	// floodsNotify: the round floods the notify socket, so forkd drops datagrams.
	floodsNotify bool
	// orphaned are the workers of a master the fault killed.
	orphaned map[int]bool
	// expectedDeaths are workers whose end is the fault's doing though nobody signalled them
	// (a broken release's workers), by PID.
	expectedDeaths map[int]string
}

func (rd *roundRun) violate(invariant, format string, args ...any) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	rd.res.violations = append(rd.res.violations, violation{invariant, fmt.Sprintf(format, args...)})
}

func (rd *roundRun) note(format string, args ...any) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	rd.res.notes = append(rd.res.notes, fmt.Sprintf(format, args...))
}

func (rd *roundRun) injected() {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	rd.res.injected++
}

// signal sends sig to pid, one of the cluster's processes (the master, or a process the master
// reported), after checking that it still belongs to the cluster's tree: the suite signals
// nothing it did not start.
func (rd *roundRun) signal(pid int, sig syscall.Signal, what string) bool {
	master := rd.c.masterPID()
	if pid != master {
		table := map[int]procStat{}
		for p := pid; p > 1 && len(table) < 64; {
			st, err := readStat(p)
			if err != nil {
				break
			}
			table[p] = st
			p = st.ppid
		}
		if !descendsFrom(table, pid, map[int]bool{master: true}) {
			rd.note("did not signal pid %d (%s): not in the master's tree any more", pid, what)
			return false
		}
	}
	if err := syscall.Kill(pid, sig); err != nil {
		rd.note("%s to pid %d (%s): %v", sig, pid, what, err)
		return false
	}
	if sig == syscall.SIGKILL {
		rd.mu.Lock()
		rd.kills = append(rd.kills, kill{at: time.Now(), pid: pid, what: what, master: pid == master})
		rd.mu.Unlock()
	}
	rd.injected()
	return true
}

func (rd *roundRun) killedByFault(pid int) (kill, bool) {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	for _, k := range rd.kills {
		if k.pid == pid {
			return k, true
		}
	}
	return kill{}, false
}

// command is a forkctl run.
type command struct {
	args []string
	out  string
	code int // -1: it did not return within commandBound (and was killed)
	done chan struct{}
}

// forkctl starts forkctl against the cluster; wait for it on done.
func (rd *roundRun) forkctl(args ...string) *command {
	cmd := &command{args: args, done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), commandBound)
	run := exec.CommandContext(ctx, filepath.Join(bin, "forkctl"), append([]string{"--socket", rd.c.socket}, args...)...)
	var out strings.Builder
	run.Stdout, run.Stderr = &out, &out
	if err := startChild(run); err != nil {
		cancel()
		cmd.out, cmd.code = err.Error(), -1
		close(cmd.done)
		return cmd
	}
	go func() {
		defer close(cmd.done)
		defer cancel()
		err := run.Wait()
		forgetChild(run.Process.Pid)
		cmd.out = strings.TrimSpace(out.String())
		var exit *exec.ExitError
		switch {
		case ctx.Err() != nil:
			cmd.code = -1
		case errors.As(err, &exit):
			cmd.code = exit.ExitCode()
		case err != nil:
			cmd.out, cmd.code = err.Error(), -1
		}
	}()
	return cmd
}

func (c *command) String() string {
	return "forkctl " + strings.Join(c.args, " ")
}

// What a round expects of a rollout: the fault may doom it (anyOutcome), nothing in the round is a
// reason for it to fail (mustSucceed), or it cannot succeed (mustFail: a broken release).
type outcome int

const (
	anyOutcome outcome = iota
	mustSucceed
	mustFail
)

// rollout runs `forkctl KIND --wait` and waits for the cluster to settle, then checks that the
// exit status tells what happened: the generation moved by one (and, for a restart, the master
// kept its PID) exactly when forkctl exited 0; and that what happened is what the round expects.
// It returns whether the rollout happened.
func (rd *roundRun) rollout(kind string, want outcome) bool {
	before, err := rd.c.status()
	if err != nil {
		rd.violate(invReady, "no status before %s: %v", kind, err)
		return false
	}
	cmd := rd.forkctl(kind, "--wait")
	<-cmd.done
	if cmd.code == -1 {
		rd.violate(invHonest, "%s did not return within %s: %s", cmd, commandBound, cmd.out)
	}
	after, ok := rd.settle(kind)
	if !ok {
		return false
	}
	happened := after.Generation == before.Generation+1
	rd.checkReplaced(kind, before, after, happened)
	switch {
	case !happened && after.Generation != before.Generation:
		rd.note("%s: generation went from %d to %d", kind, before.Generation, after.Generation)
	case kind == "restart" && after.MasterPID != before.MasterPID:
		rd.violate(invHonest, "%s: the master's PID changed from %d to %d", kind, before.MasterPID, after.MasterPID)
	}
	switch {
	case cmd.code == 0 && !happened:
		rd.violate(invHonest, "%s exited 0 (%q) but the %s did not happen: generation %d, as before",
			cmd, cmd.out, kind, after.Generation)
	case cmd.code > 0 && happened:
		rd.violate(invHonest, "%s exited %d (%q) but the %s happened: generation %d", cmd, cmd.code, cmd.out, kind, after.Generation)
	case cmd.code > 0:
		rd.note("%s failed, as it said: %s", cmd, cmd.out)
	}
	switch {
	case want == mustSucceed && !happened:
		rd.violate(invRollout, "the %s failed though nothing in the round dooms it: %s exited %d: %s", kind, cmd, cmd.code, cmd.out)
	case want == mustFail && happened:
		rd.violate(invRollout, "the %s went through though its workers cannot boot: generation %d", kind, after.Generation)
	}
	return happened
}

// checkReplaced: a rollout that completed replaced every worker that served before it (but
// worker 0, the template, in a refork); one that failed left no worker on the generation it gave
// up, which the next rollout to that generation would take for replaced already.
func (rd *roundRun) checkReplaced(kind string, before, after control.Status, happened bool) {
	served := map[int]bool{}
	for _, w := range before.WorkerList {
		served[w.PID] = true
	}
	for _, w := range after.WorkerList {
		switch {
		case happened && served[w.PID] && !(kind == "refork" && w.Index == 0):
			rd.violate(invRollout, "the %s to generation %d left worker %d (pid %d, generation %d) in place, which served before it",
				kind, after.Generation, w.Index, w.PID, w.Generation)
		case !happened && w.Generation > after.Generation && !served[w.PID]:
			rd.violate(invRollout, "the failed %s left worker %d (pid %d) on generation %d, the cluster back on %d: "+
				"the next rollout to generation %d will take it for replaced", kind, w.Index, w.PID, w.Generation,
				after.Generation, w.Generation)
		}
	}
}

// settle waits until the cluster is settled again; after is what the status said then. Once the
// cluster has failed to settle in a round, it is not waited for again (the round reports it once).
func (rd *roundRun) settle(what string) (after control.Status, ok bool) {
	if rd.unsettled {
		return control.Status{}, false
	}
	st, ok, err := rd.c.waitSettled(readyBound)
	if !ok {
		rd.unsettled = true
		rd.violate(invReady, "after %s, not every worker ready within %s: %s (%v)", what, readyBound, describe(st), err)
	}
	return st, ok
}

// killAndSettle SIGKILLs pid and waits until the master has noticed (its status lists the PID no
// more) and every worker is ready again. why says what the round is doing meanwhile.
func (rd *roundRun) killAndSettle(pid int, what, why string) {
	if !rd.signal(pid, syscall.SIGKILL, what) {
		return
	}
	end := time.Now().Add(readyBound)
	for {
		st, err := rd.c.status()
		if err == nil && !slices.ContainsFunc(st.WorkerList, func(w control.Worker) bool { return w.PID == pid }) {
			break
		}
		if time.Now().After(end) {
			rd.violate(invReady, "%s: forkd did not notice within %s that %s (pid %d) was killed: %s (%v)", why, readyBound, what, pid, describe(st), err)
			return
		}
		sleep(50)
	}
	st, ok, err := rd.c.waitSettled(time.Until(end))
	if !ok {
		rd.violate(invReady, "%s: not every worker ready within %s of killing %s: %s (%v)", why, readyBound, what, describe(st), err)
	}
}

// describe is a status in one line: the phase and each worker.
func describe(st control.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s, generation %d, %d/%d ready:", st.Phase, st.Generation, st.Ready, st.Workers)
	for _, w := range st.WorkerList {
		fmt.Fprintf(&b, " [%d pid %d gen %d %s", w.Index, w.PID, w.Generation, w.State)
		if w.Replacement {
			b.WriteString(" replacement")
		}
		if w.Detached {
			b.WriteString(" detached")
		}
		if w.LastExit != "" {
			fmt.Fprintf(&b, ", last exit %q", w.LastExit)
		}
		b.WriteString("]")
	}
	return b.String()
}

// trackedByForkctl is the worker PIDs `forkctl status -o json` reports, as an operator sees them.
func (rd *roundRun) trackedByForkctl() (master int, pids []int, err error) {
	cmd := rd.forkctl("status", "-o", "json")
	<-cmd.done
	if cmd.code != 0 {
		return 0, nil, fmt.Errorf("forkctl status -o json exited %d: %s", cmd.code, cmd.out)
	}
	var st control.Status
	if err := json.Unmarshal([]byte(cmd.out), &st); err != nil {
		return 0, nil, fmt.Errorf("forkctl status -o json: %w", err)
	}
	for _, w := range st.WorkerList {
		if w.PID != 0 {
			pids = append(pids, w.PID)
		}
	}
	return st.MasterPID, pids, nil
}

// check verifies the invariants at the end of the round.
func (rd *roundRun) check() {
	after, ok := rd.settle("the fault")
	if !ok {
		// The other checks would only repeat it.
		rd.checkRequests()
		return
	}
	rd.checkStrays()
	rd.checkUsage()
	rd.checkDeaths()
	rd.checkDropped(after)
	rd.checkRequests()
}

// checkDropped: forkd counts the notifications it drops as hostile (an operator alerts on the
// counter); outside a flood of the notify socket, the workers' own must never count.
func (rd *roundRun) checkDropped(after control.Status) {
	if rd.floodsNotify || after.MasterPID != rd.before.MasterPID {
		return
	}
	if n := after.DroppedNotifications - rd.before.DroppedNotifications; n > 0 {
		var senders []string
		for _, ev := range rd.c.log.since(rd.mark) {
			if ev.Event == "notify-dropped" && len(senders) < 5 {
				senders = append(senders, fmt.Sprintf("pid %d: %s", ev.PID, ev.Msg))
			}
		}
		detail := fmt.Sprintf("%d notifications dropped as not from a worker, with no flood", n)
		if len(senders) > 0 {
			detail += ": " + strings.Join(senders, "; ")
		}
		rd.violate(invDropped, "%s", detail)
	}
}

func (rd *roundRun) checkStrays() {
	end := time.Now().Add(goneBound)
	var left []stray
	for {
		master, tracked, err := rd.trackedByForkctl()
		if err != nil {
			rd.violate(invStrays, "cannot list the tracked workers: %v", err)
			return
		}
		if left = strays(rd.c, master, tracked); len(left) == 0 {
			return
		}
		if time.Now().After(end) {
			break
		}
		sleep(200)
	}
	var lines []string
	for _, s := range left {
		lines = append(lines, s.String())
	}
	rd.violate(invStrays, "%d processes forkd started and does not track, after %s: %s", len(left), goneBound, strings.Join(lines, "; "))
}

func (rd *roundRun) checkUsage() {
	pid := rd.c.masterPID()
	rd.c.mu.Lock()
	base := rd.c.baseline
	rd.c.mu.Unlock()
	// The master closes what a fault left (a flood's connections, say) a moment after the fault
	// ends: give it until goneBound to come back to its baseline.
	end := time.Now().Add(goneBound)
	var u usage
	for {
		var err error
		if u, err = masterUsage(pid); err != nil {
			rd.note("cannot read the master's usage: %v", err)
			return
		}
		if base == nil || u.fds <= base.fds+fdSlack || time.Now().After(end) {
			break
		}
		sleep(200)
	}
	if base == nil {
		rd.note("master %d: no baseline to compare with", pid)
		return
	}
	rd.res.usage, rd.res.baseline = u, *base
	// A step up is reported once: the new level is what later rounds are compared with.
	if u.fds > base.fds+fdSlack {
		rd.violate(invFDs, "master %d holds %d descriptors, %d before", pid, u.fds, base.fds)
		rd.c.mu.Lock()
		rd.c.baseline.fds = u.fds
		rd.c.mu.Unlock()
	}
	if u.rss > base.rss+rssSlack {
		rd.violate(invRSS, "master %d's RSS is %.1f MiB, %.1f MiB before", pid, mib(u.rss), mib(base.rss))
		rd.c.mu.Lock()
		rd.c.baseline.rss = u.rss
		rd.c.mu.Unlock()
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// checkDeaths: every worker that ended unexpectedly (forkd logs it as a warning: a crash, a kill
// for a timeout) was killed by the fault or is one the fault doomed.
func (rd *roundRun) checkDeaths() {
	for _, ev := range rd.c.log.since(rd.mark) {
		if ev.Event != evWorkerExited || ev.Level == "INFO" {
			continue
		}
		if _, ok := rd.killedByFault(ev.PID); ok {
			continue
		}
		if _, ok := rd.expectedDeaths[ev.PID]; ok {
			continue
		}
		rd.violate(invDeaths, "worker %d (pid %d, generation %d) %s", deref(ev.Worker), ev.PID, ev.Generation, ev.Msg)
	}
}

func deref(p *int) int {
	if p == nil {
		return -1
	}
	return *p
}

// checkRequests explains every request that failed during the round.
func (rd *roundRun) checkRequests() {
	end := time.Now()
	rd.res.served = rd.load.served()
	var unexplained []explained
	for _, f := range rd.load.failuresBetween(rd.start, end) {
		e := rd.explain(f)
		rd.res.failed = append(rd.res.failed, e)
		if !e.expected {
			unexplained = append(unexplained, e)
		}
	}
	if len(unexplained) == 0 {
		return
	}
	var samples []string
	for i, e := range unexplained {
		if i == 5 {
			samples = append(samples, fmt.Sprintf("and %d more", len(unexplained)-5))
			break
		}
		samples = append(samples, e.String()+" ("+e.cause+")")
	}
	rd.violate(invRequests, "%d failed requests not caused by a fault that killed their server: %s",
		len(unexplained), strings.Join(samples, "; "))
}

// killWindow: a request in flight on a process that dies fails at once (the kernel resets its
// connections); the window allows for a busy machine noticing late.
const killWindow = 5 * time.Second

func (rd *roundRun) explain(f failure) explained {
	e := explained{failure: f}
	if f.stage == "status" {
		e.cause = "the server answered with an error"
		return e
	}
	if f.stage == "connect" {
		e.cause = "the listening socket refused a connection"
		return e
	}
	within := func(at time.Time) bool {
		return !f.at.Before(at.Add(-time.Second)) && f.at.Sub(at) <= killWindow
	}
	if f.reused && f.pid != 0 {
		if k, ok := rd.killedByFault(f.pid); ok && within(k.at) {
			e.cause, e.expected = fmt.Sprintf("in flight on pid %d, which the fault killed (%s)", f.pid, k.what), true
			return e
		}
		for _, ev := range rd.c.log.since(0) {
			if ev.Event == evWorkerExited && ev.PID == f.pid {
				switch {
				case strings.Contains(ev.Status, "killed"):
					e.cause = fmt.Sprintf("pid %d was %s", f.pid, ev.Status)
				default:
					e.cause = fmt.Sprintf("pid %d, draining (%s), closed the idle keep-alive connection as the next request arrived", f.pid, ev.Status)
				}
				return e
			}
		}
		if rd.orphaned[f.pid] {
			e.cause = fmt.Sprintf("pid %d, draining after the fault killed its master, closed the idle keep-alive connection as the next request arrived", f.pid)
		} else {
			e.cause = fmt.Sprintf("pid %d closed the connection; forkd logged no exit of it", f.pid)
		}
		return e
	}
	rd.mu.Lock()
	kills := append([]kill(nil), rd.kills...)
	rd.mu.Unlock()
	for _, k := range kills {
		if within(k.at) && !k.master {
			e.cause, e.expected = fmt.Sprintf("on a new connection as the fault killed pid %d (%s): in flight on it", k.pid, k.what), true
			return e
		}
	}
	for _, ev := range rd.c.log.since(rd.mark) {
		if ev.Event == evWorkerExited && strings.Contains(ev.Status, "killed") && within(ev.Time) {
			e.cause = fmt.Sprintf("on a new connection as pid %d was %s", ev.PID, ev.Status)
			return e
		}
	}
	e.cause = "no worker was killed then"
	return e
}

func sleep(ms int) { time.Sleep(time.Duration(ms) * time.Millisecond) }
