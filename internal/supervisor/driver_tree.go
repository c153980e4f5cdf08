package supervisor

import (
	"errors"
	"slices"
	"syscall"

	"github.com/forkd/forkd/pkg/cluster"
	"golang.org/x/sys/unix"
)

// This file holds the driver's side of process trees: a worker is signalled through its process
// group, and the processes forkd started but no longer tracks (strays, stray.go) are found and
// signalled.
//
// What "a process forkd started" means here: a worker, a helper, or any descendant of one, as far
// as the master can see it without a cgroup. That is its own children (as a subreaper, it inherits
// every orphan of its tree: a child whose parent exited is re-parented to it) and the members of
// each worker's process group. A descendant that left its worker's group (setsid) while its parent
// still runs is out of sight until that parent exits; where forkd has a cgroup per worker, a
// SIGKILL reaches it too (cgroup.kill, driver_cgroup.go).

// pidfdSignalProcessGroup is PIDFD_SIGNAL_PROCESS_GROUP (linux/pidfd.h, Linux 6.9): the signal
// goes to the process group whose ID is the pidfd's process's PID, even once that process has
// been reaped. The pidfd pins the group's identity, so unlike kill(-pgid) it can never reach a
// group that a recycled PID started.
const pidfdSignalProcessGroup = 1 << 2

// signalGroup signals every member of process group pgid, which pidfd's process leads or led.
func signalGroup(pidfd, pgid int, sig unix.Signal) error {
	if pidfd >= 0 {
		err := unix.PidfdSendSignal(pidfd, sig, nil, pidfdSignalProcessGroup)
		if !errors.Is(err, unix.EINVAL) {
			return err
		}
		// Linux before 6.9. The group's ID cannot be reused while the group has a member, so
		// kill(-pgid) misses at worst a group that has just emptied and whose ID a new process
		// has taken again as its own group's, after a wrap-around of the PID space.
	}
	return unix.Kill(-pgid, sig)
}

// leadsOwnGroup reports whether pid leads a process group of its own that holds no other worker,
// so that its whole tree can be signalled through the group. A worker the template forked shares
// the template's group unless its SDK gave it one (setpgid); then the template's group holds
// workers, and must never be signalled as one tree.
func (d *Driver) leadsOwnGroup(pid int) bool {
	if pgid, err := unix.Getpgid(pid); err != nil || pgid != pid {
		return false
	}
	return !d.groupHoldsWorker(pid, pid)
}

// groupHoldsWorker reports whether a worker other than except is in process group pgid. Only a
// forked worker can be in another process's group (an exec'd one is given its own at spawn), and
// a forked worker once seen leading its own group is not asked again.
func (d *Driver) groupHoldsWorker(pgid, except int) bool {
	for _, p := range d.procs {
		if !p.forked || p.ownGroup || p.pid <= 0 || p.pid == except {
			continue
		}
		g, err := unix.Getpgid(p.pid)
		switch {
		case err != nil:
		case g == p.pid:
			p.ownGroup = true
		case g == pgid:
			return true
		}
	}
	return false
}

// signalTree signals pid's tree: its process group if it leads one of its own, else pid alone.
func (d *Driver) signalTree(pid, pidfd int, sig unix.Signal) error {
	if d.leadsOwnGroup(pid) {
		if err := signalGroup(pidfd, pid, sig); !errors.Is(err, unix.ESRCH) {
			return err
		}
	}
	if pidfd >= 0 {
		return unix.PidfdSendSignal(pidfd, sig, nil, 0)
	}
	return unix.Kill(pid, sig)
}

func (d *Driver) signalStray(a cluster.SignalStray) {
	k := strayKey{pid: a.PID, group: a.Group}
	pidfd, ok := d.strays[k]
	if !ok {
		return
	}
	var err error
	if a.Group {
		err = signalGroup(pidfd, a.PID, a.Signal)
	} else {
		err = d.signalTree(a.PID, pidfd, a.Signal)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) {
		d.log.Error("cannot signal a stray", "pid", a.PID, "group", a.Group, "signal", a.Signal.String(), "error", err)
	}
	if a.Signal == syscall.SIGKILL {
		d.cgroupKillGone()
	}
}

// groupOutlives is called once process pid (a worker or an orphan) has been reaped. If the
// process group it led still has members, other than workers, the group is a stray: the driver
// keeps pidfd to name it and reports it. A group with ID pid can only have been started by pid
// itself, which held that number until now.
func (d *Driver) groupOutlives(pid, pidfd int) bool {
	if signalGroup(pidfd, pid, 0) != nil || d.groupHoldsWorker(pid, pid) {
		return false
	}
	k := strayKey{pid: pid, group: true}
	if _, known := d.strays[k]; known {
		return false
	}
	d.strays[k] = pidfd
	d.step(cluster.StrayFound{PID: pid, Group: true})
	return true
}

// checkStrayGroups reports the stray groups that have emptied.
func (d *Driver) checkStrayGroups() {
	var emptied []strayKey
	for k, pidfd := range d.strays {
		if k.group && errors.Is(signalGroup(pidfd, k.pid, 0), unix.ESRCH) {
			emptied = append(emptied, k)
		}
	}
	slices.SortFunc(emptied, func(a, b strayKey) int { return a.pid - b.pid })
	for _, k := range emptied {
		unix.Close(d.strays[k])
		delete(d.strays, k)
		d.step(cluster.GroupEmptied{PGID: k.pid})
	}
}

// findOrphans reports the master's children that are no worker, helper or stray yet: orphans it
// inherited as a subreaper. While the template forks a worker, that worker is a child of the
// master before the master learns its PID, so the search waits until no fork is under way.
func (d *Driver) findOrphans() {
	if d.forkInFlight() {
		return
	}
	children, err := childrenOfSelf()
	if err != nil {
		if !d.childrenUnreadable {
			d.log.Error("cannot list forkd's children, so orphans left by workers are not stopped: "+err.Error(), "event", "orphan-scan-failed")
			d.childrenUnreadable = true
		}
		return
	}
	tracked := make(map[int]bool, len(d.procs)+len(d.helpers))
	for _, p := range d.procs {
		tracked[p.pid] = true
	}
	for pid := range d.helpers {
		tracked[pid] = true
	}
	for _, pid := range children {
		if _, stray := d.strays[strayKey{pid: pid}]; stray || tracked[pid] {
			continue
		}
		if _, worker := d.m.WorkerByPID(pid); worker || exited(pid) {
			continue // an exited child is reaped, and its exit says the rest
		}
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue
		}
		d.strays[strayKey{pid: pid}] = pidfd
		d.step(cluster.StrayFound{PID: pid})
	}
}

// forkInFlight reports whether the template has been asked for a worker it has not answered for.
func (d *Driver) forkInFlight() bool {
	for _, s := range d.channels.spawns {
		if !s.cancelled {
			return true
		}
	}
	return false
}

// strayKey names a stray the machine was told of: an orphan by its PID, or a group by its ID.
type strayKey struct {
	pid   int
	group bool
}
