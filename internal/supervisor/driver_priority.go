package supervisor

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/cluster"
)

// This file carries out cluster.SetPriority: a refork runs the workers it replaces at a lower CPU
// priority (fork_worker.refork_nice), so that its readying and forks get the CPU first. Linux's
// nice value is a thread's, not a process's, so every thread of the worker is set, and a thread
// created since inherits its creator's. A nice value orders the threads that compete within one
// scheduling group: the workers are in the master's session (so in its autogroup) and, since
// forkd enables no cpu controller in their cgroups, in its cpu cgroup too, with the template and
// the new workers they compete with.
//
// Raising a priority back, after a refork that failed, takes CAP_SYS_NICE or an RLIMIT_NICE
// that allows it: without them the driver lowers nothing (a worker it could not raise back would
// serve slowed until it exits), and says so once.

// lowered is a worker the driver lowered: each thread's nice value before, to put it back.
type lowered struct {
	pid  int
	nice map[int]int
}

// priorityState is what the driver knows of SetPriority: whether it can undo a lowering, and
// what it lowered.
type priorityState struct {
	checked, usable bool
	lowered         map[cluster.WorkerID]*lowered
}

// canUndoNice reports whether the master can raise a thread's nice value back to its own: with
// CAP_SYS_NICE, or an RLIMIT_NICE that reaches it; else why not.
func canUndoNice() (bool, string) {
	if effectiveCap(unix.CAP_SYS_NICE) {
		return true, ""
	}
	own, err := niceOf(0)
	if err != nil {
		return false, err.Error()
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NICE, &lim); err != nil {
		return false, err.Error()
	}
	if lim.Cur >= uint64(20-own) {
		return true, ""
	}
	return false, fmt.Sprintf("the master has no CAP_SYS_NICE, and its RLIMIT_NICE (%d) does not reach its own nice value %d "+
		"(systemd: AmbientCapabilities=CAP_SYS_NICE, or LimitNICE=%+d)", lim.Cur, own, own)
}

// effectiveCap reports whether the master has capability c in its effective set, read from
// /proc/self/status (not capget(2), which a systemd unit's SystemCallFilter may not allow).
func effectiveCap(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && caps&(1<<c) != 0
		}
	}
	return false
}

// niceOf reads a thread's nice value (tid 0: the calling thread). The system call answers
// 20 - nice, so that it never returns a negative priority for an error.
func niceOf(tid int) (int, error) {
	p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		return 0, err
	}
	return 20 - p, nil
}

// threadsOf lists a process's threads.
func threadsOf(pid int) ([]int, error) {
	entries, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return nil, err
	}
	tids := make([]int, 0, len(entries))
	for _, e := range entries {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// priorityUsable says, the first time it is asked, whether the driver can undo what SetPriority
// does, and logs once why not.
func (d *Driver) priorityUsable() bool {
	p := &d.priority
	if !p.checked {
		p.checked = true
		var why string
		p.usable, why = canUndoNice()
		if !p.usable {
			d.log.Warn("fork_worker.refork_nice is off: the master could not give a worker its CPU priority back after a refork that fails: "+why,
				"event", "refork-nice-off")
		}
		p.lowered = map[cluster.WorkerID]*lowered{}
	}
	return p.usable
}

// setPriority lowers every thread of a worker by a.Nice, or puts each back (a.Nice 0).
func (d *Driver) setPriority(a cluster.SetPriority) {
	if !d.priorityUsable() {
		return
	}
	if proc := d.procs[a.Worker]; proc == nil || proc.pid != a.PID {
		delete(d.priority.lowered, a.Worker)
		return // it has exited
	}
	var err error
	if a.Nice > 0 {
		err = d.lower(a)
	} else {
		err = d.restore(a)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, os.ErrNotExist) {
		d.log.Error(fmt.Sprintf("worker pid %d: setting its threads' CPU priority: %v", a.PID, err), "event", "refork-nice-failed")
	}
}

// lower sets each thread Nice steps below its own nice value, walking the threads again until no
// new one appears (one created meanwhile may have inherited its creator's value before it was
// lowered).
func (d *Driver) lower(a cluster.SetPriority) error {
	l := d.priority.lowered[a.Worker]
	if l == nil || l.pid != a.PID {
		l = &lowered{pid: a.PID, nice: map[int]int{}}
		d.priority.lowered[a.Worker] = l
	}
	for pass := 0; pass < 3; pass++ {
		tids, err := threadsOf(a.PID)
		if err != nil {
			return err
		}
		fresh := 0
		for _, tid := range tids {
			if _, done := l.nice[tid]; done {
				continue
			}
			fresh++
			was, err := niceOf(tid)
			if err != nil {
				continue // it has exited
			}
			l.nice[tid] = was
			if err := unix.Setpriority(unix.PRIO_PROCESS, tid, min(was+a.Nice, 19)); err != nil && err != unix.ESRCH {
				return err
			}
		}
		if fresh == 0 {
			break
		}
	}
	d.log.Debug(fmt.Sprintf("worker pid %d: %d threads run %d nice steps lower until the refork replaces it", a.PID, len(l.nice), a.Nice),
		"event", "refork-nice")
	return nil
}

// restore puts each thread back to its nice value from before; a thread created since gets the
// main thread's.
func (d *Driver) restore(a cluster.SetPriority) error {
	l := d.priority.lowered[a.Worker]
	delete(d.priority.lowered, a.Worker)
	if l == nil || l.pid != a.PID {
		return nil
	}
	tids, err := threadsOf(a.PID)
	if err != nil {
		return err
	}
	for _, tid := range tids {
		was, ok := l.nice[tid]
		if !ok {
			was = l.nice[a.PID]
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, was); err != nil && err != unix.ESRCH {
			return err
		}
	}
	d.log.Debug(fmt.Sprintf("worker pid %d: its threads' CPU priority is back", a.PID), "event", "refork-nice-restored")
	return nil
}
