package supervisor

import (
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/forkd/forkd/pkg/cluster"
)

// This file is the driver's seam to the workers' cgroups (internal/cgroup, DriverConfig.Cgroups):
// an exec'd worker is born in its cgroup, a forked one is moved there once its PID is known, a
// kill kills the worker's whole tree, and a worker's end says whether the kernel's OOM killer
// ended it. Without cgroups (a nil set) every call does nothing. A cgroup that cannot be made is
// logged, and the worker runs without one: cgroups never keep a worker from running.

// startInCgroup starts an exec'd worker with start, born in a cgroup of its own (through attr):
// created first, removed again if the start fails. A kernel that cannot start a process in a
// cgroup (clone3's CLONE_INTO_CGROUP, Linux 5.7) starts it as before, and it is moved there at
// once.
func (d *Driver) startInCgroup(a cluster.SpawnWorker, attr *syscall.ProcAttr, start func() (int, error)) (int, error) {
	set := d.cfg.Cgroups
	if set == nil {
		return start()
	}
	if err := set.Prepare(a.Slot, uint64(a.Worker), attr.Sys); err != nil {
		d.log.Warn(fmt.Sprintf("worker %d runs without a cgroup of its own: %v", a.Slot, err), "event", "cgroups", "worker", a.Slot)
		return start()
	}
	pid, err := start()
	if err != nil && attr.Sys.UseCgroupFD && (errors.Is(err, syscall.ENOSYS) || errors.Is(err, syscall.EINVAL)) {
		attr.Sys.UseCgroupFD = false
		if pid, err = start(); err == nil {
			if err := set.Move(uint64(a.Worker), pid); err != nil {
				d.log.Warn(fmt.Sprintf("worker %d runs without a cgroup of its own: %v", a.Slot, err), "event", "cgroups", "pid", pid)
			}
		}
	}
	if err != nil {
		set.Exited(uint64(a.Worker))
	}
	return pid, err
}

// cgroupFork notes that the template forks a worker, to be placed in its cgroup by cgroupPlace.
func (d *Driver) cgroupFork(a cluster.SpawnWorker) {
	if d.cfg.Cgroups != nil {
		d.cfg.Cgroups.Expect(a.Slot, uint64(a.Worker), uint64(a.Template))
	}
}

// cgroupPlace moves a forked worker into its cgroup, once its PID is known (its hello, or the
// template's reply).
func (d *Driver) cgroupPlace(id cluster.WorkerID, p *process) {
	if d.cfg.Cgroups == nil {
		return
	}
	if err := d.cfg.Cgroups.Place(uint64(id), p.pid); err != nil {
		d.log.Warn(fmt.Sprintf("worker %d runs in the template's cgroup: %v", p.slot, err), "event", "cgroups", "pid", p.pid)
	}
}

// cgroupKill kills a worker's whole tree with cgroup.kill, for a SIGKILL the machine sends it: its
// helpers die with it, a setsid one included, which the process group misses.
func (d *Driver) cgroupKill(id cluster.WorkerID, pid int) {
	if d.cfg.Cgroups == nil {
		return
	}
	if _, err := d.cfg.Cgroups.Kill(uint64(id)); err != nil {
		d.log.Error("cannot kill the worker's cgroup", "pid", pid, "error", err)
	}
}

// cgroupExited tells the cgroups that a worker's process is gone, and says whether the OOM killer
// killed it.
func (d *Driver) cgroupExited(id cluster.WorkerID, st cluster.ExitStatus) cluster.OOMKill {
	if d.cfg.Cgroups == nil {
		return cluster.OOMKill{}
	}
	oom, memoryMax := d.cfg.Cgroups.Exited(uint64(id))
	if !oom || st.Signal != syscall.SIGKILL {
		return cluster.OOMKill{}
	}
	return cluster.OOMKill{Killed: true, MemoryMax: memoryMax}
}

// cgroupKillGone kills what is left in the cgroups of exited workers, with the strays the machine
// SIGKILLs: a worker's helpers that outlived it.
func (d *Driver) cgroupKillGone() {
	if d.cfg.Cgroups != nil {
		d.cfg.Cgroups.KillGone()
	}
}

// cgroupsDone removes the cgroups of the workers once the cluster has stopped: what the last
// SIGKILLs left takes the kernel a moment to tear down.
func (d *Driver) cgroupsDone() {
	if d.cfg.Cgroups == nil {
		return
	}
	if left := d.cfg.Cgroups.Drain(2 * time.Second); left > 0 {
		d.log.Warn(fmt.Sprintf("%d workers' cgroups still hold processes as forkd exits: left for the system to remove", left), "event", "cgroups")
	}
}

// cgroupSweep removes the cgroups of exited workers that have emptied.
func (d *Driver) cgroupSweep() {
	if d.cfg.Cgroups != nil {
		d.cfg.Cgroups.Sweep()
	}
}
