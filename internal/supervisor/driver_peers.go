package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// This file answers the control API's question about a connecting process: is it application
// code, that is a worker, a worker's descendant, or a process the master inherited from its
// workers? The /proc walk runs in the caller's goroutine; the loop only looks the PIDs up.

// Kinship is how a process stands to the cluster's workers.
type Kinship struct {
	// Worker is true for a worker, a worker's descendant, or an orphan the master inherited as a
	// subreaper (a worker's child whose parent died): processes that run the application's code.
	// It is false for the master itself, its helpers (hooks, the checks before a hot restart) and
	// their descendants, and for every process outside the master's tree.
	Worker bool
	// Reason says which, for a message: "pid 4242 is worker 2", "pid 4250 is a descendant of
	// worker 2 (pid 4242)", "pid 4260 was re-parented to forkd from its workers' tree". Empty
	// when Worker is false.
	Reason string
}

// ErrProcessGone is returned by Kinship for a process that no longer exists.
var ErrProcessGone = errors.New("cluster: the process has exited")

// kinshipQuery asks the loop about a lineage read outside it.
type kinshipQuery struct {
	lineage []int
	// toMaster: the lineage ends at a child of the master (else at PID 1, or outside any tree the
	// master can see).
	toMaster bool
	answer   chan Kinship
}

// Kinship tells how process pid stands to the workers. It reads pid's ancestry from /proc in the
// caller's goroutine and asks the loop only to look the PIDs up, so a slow /proc or many callers do
// not hold the loop. It fails with ErrProcessGone when pid (or its ancestry, twice) cannot be read,
// or with ctx's error.
func (d *Driver) Kinship(ctx context.Context, pid int) (Kinship, error) {
	lineage, toMaster, err := ancestry(pid, nil)
	if err != nil {
		// An ancestor that exits while the walk reads it has its children re-parented to the
		// master (a subreaper) or to init: the second walk sees where they went.
		lineage, toMaster, err = ancestry(pid, nil)
	}
	if err != nil {
		return Kinship{}, err
	}
	if !toMaster || len(lineage) == 0 {
		// Outside the master's tree (an operator's forkctl), or the master itself: no worker,
		// whatever the loop is doing. A master that was stopped a while (SIGSTOP) must not fail
		// the forkctl that waits on it for want of an answer from a loop that has not caught up.
		return Kinship{}, nil
	}
	q := &kinshipQuery{lineage: lineage, toMaster: toMaster, answer: make(chan Kinship, 1)}
	select {
	case d.requests <- request{kinship: q}:
	case <-ctx.Done():
		return Kinship{}, ctx.Err()
	}
	select {
	case k := <-q.answer:
		return k, nil
	case <-ctx.Done():
		return Kinship{}, ctx.Err()
	}
}

// ancestry lists pid and its ancestors up to (not including) the master or PID 1, walking parent
// links in /proc, and reports whether it reached the master. The master itself has an empty lineage
// that reaches the master. A process that exits during the walk ends it with ErrProcessGone, and
// lineage holds what was read (pid itself, when only its parent could not be read). deeper, when
// not nil, is asked before the walk goes above pid's parent (a walk a stranger can provoke, as the
// notify socket's): false stops it with errWalkLimited.
//
// The notify socket (lineageOf) and the control API's peer check (Kinship) both use it.
func ancestry(pid int, deeper func() bool) (lineage []int, toMaster bool, err error) {
	self := os.Getpid()
	for range 128 {
		if pid == self {
			return lineage, true, nil
		}
		if pid <= 1 {
			return lineage, false, nil
		}
		lineage = append(lineage, pid)
		ppid, err := parentPID(pid)
		if err != nil {
			return lineage, false, fmt.Errorf("%w (pid %d: %v)", ErrProcessGone, pid, err)
		}
		if len(lineage) == 1 && ppid != self && ppid > 1 && deeper != nil && !deeper() {
			return nil, false, errWalkLimited
		}
		pid = ppid
	}
	return lineage, false, nil
}

// errWalkLimited: ancestry was told not to walk deeper.
var errWalkLimited = errors.New("cluster: the walk up the process tree is rate-limited")

// answerKinship looks a lineage up, in the loop.
func (d *Driver) answerKinship(q *kinshipQuery) {
	q.answer <- d.kinshipOf(q.lineage, q.toMaster)
}

func (d *Driver) kinshipOf(lineage []int, toMaster bool) Kinship {
	if len(lineage) == 0 {
		return Kinship{}
	}
	peer := lineage[0]
	for i, pid := range lineage {
		if _, ok := d.m.WorkerByPID(pid); !ok {
			continue
		}
		worker := fmt.Sprintf("a worker (pid %d)", pid)
		for _, w := range d.m.Status().Workers {
			if w.PID == pid {
				worker = fmt.Sprintf("worker %d (pid %d)", w.Index, pid)
				break
			}
		}
		if i == 0 {
			return Kinship{Worker: true, Reason: fmt.Sprintf("pid %d is %s", peer, worker)}
		}
		return Kinship{Worker: true, Reason: fmt.Sprintf("pid %d is a descendant of %s", peer, worker)}
	}
	if !toMaster {
		return Kinship{}
	}
	if _, ok := d.helpers[lineage[len(lineage)-1]]; ok {
		return Kinship{} // a hook the operator configured, or one of its children
	}
	// The master's children are its workers and its helpers; anything else was re-parented to it
	// as a subreaper, from the workers' tree (a worker's child whose parent died).
	return Kinship{Worker: true, Reason: fmt.Sprintf("pid %d was re-parented to forkd from its workers' processes", peer)}
}
