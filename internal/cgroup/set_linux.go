package cgroup

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Set is the cgroups of one master's workers, by the master's id of each worker process: what its
// spawner asks for (Prepare, Expect and Place), what it does to a worker (Kill), what it learns
// at a worker's end (Exited), what a status reads (Memory). Its methods may be called from any
// goroutine.
type Set struct {
	tree *Tree
	mu   sync.Mutex
	// limits are those of the cgroups made from now on (a reload changes them).
	limits Limits
	live   map[uint64]*Worker
	// forking holds the workers the template is forking, until they are placed: their slot, and
	// the cgroup of the template they are born in.
	forking map[uint64]forking
	// gone holds the cgroups of exited workers that processes remain in (a helper the worker
	// started), until they empty.
	gone []*Worker
}

type forking struct {
	slot     int
	template uint64
}

// NewSet takes the tree's worker cgroups over: those of adopted, the workers a hot restart's
// previous image handed over, are theirs again; any other is an exited worker's, removed once
// empty.
func NewSet(tree *Tree, limits Limits, adopted []uint64) *Set {
	s := &Set{tree: tree, limits: limits, live: map[uint64]*Worker{}, forking: map[uint64]forking{}}
	names, _ := tree.Workers()
	for _, name := range names {
		w, err := tree.OpenWorker(name)
		if err != nil {
			continue
		}
		if id, ok := workerID(name); ok && slices.Contains(adopted, id) {
			s.live[id] = w
			continue
		}
		s.gone = append(s.gone, w)
	}
	s.sweepLocked()
	return s
}

// workerID is the id in a worker cgroup's name, worker-SLOT-ID.
func workerID(name string) (uint64, bool) {
	i := strings.LastIndexByte(name, '-')
	if i < 0 {
		return 0, false
	}
	id, err := strconv.ParseUint(name[i+1:], 10, 64)
	return id, err == nil
}

// Tree is the tree the set's cgroups are in.
func (s *Set) Tree() *Tree { return s.tree }

// SetLimits sets the limits of the cgroups made from now on.
func (s *Set) SetLimits(l Limits) {
	s.mu.Lock()
	s.limits = l
	s.mu.Unlock()
}

// Prepare creates the cgroup of slot's worker id and sets attr so that the process it starts is
// born in it. Once the start has failed, Exited removes the cgroup again.
func (s *Set) Prepare(slot int, id uint64, attr *syscall.SysProcAttr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.tree.NewWorker(slot, id, s.limits)
	if err != nil {
		return err
	}
	s.live[id] = w
	w.SetSysProcAttr(attr)
	return nil
}

// Move moves process pid into worker id's cgroup, made by Prepare: for a process started
// without CLONE_INTO_CGROUP after all.
func (s *Set) Move(id uint64, pid int) error {
	s.mu.Lock()
	w := s.live[id]
	s.mu.Unlock()
	if w == nil {
		return fmt.Errorf("cgroup: worker %d has no cgroup", id)
	}
	return w.Place(pid)
}

// Expect notes that the template (worker template) forks slot's worker id, to be placed later.
func (s *Set) Expect(slot int, id, template uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.live[template]; ok {
		s.forking[id] = forking{slot: slot, template: template}
	}
}

// Place creates the cgroup of a worker the template forked and moves its process pid there. Only
// a process in the template's cgroup is moved: the PID comes from the app (its hello, or the
// template's reply), and no other process may be pulled into a worker's cgroup. It does nothing
// for a worker it did not Expect, or placed already.
func (s *Set) Place(id uint64, pid int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.forking[id]
	if !ok {
		return nil
	}
	delete(s.forking, id)
	t := s.live[f.template]
	if t == nil {
		return nil
	}
	procs, err := t.Procs()
	if err != nil {
		return err
	}
	if !slices.Contains(procs, pid) {
		return fmt.Errorf("cgroup: pid %d is not in the template's cgroup %s, where a worker it forked is born: left where it is", pid, t.name)
	}
	w, err := s.tree.NewWorker(f.slot, id, s.limits)
	if err != nil {
		return err
	}
	if err := w.Place(pid); err != nil {
		_ = w.Remove()
		return err
	}
	s.live[id] = w
	return nil
}

// Kill kills worker id's whole tree at once (cgroup.kill). It reports false when the worker has
// no cgroup.
func (s *Set) Kill(id uint64) (bool, error) {
	s.mu.Lock()
	w := s.live[id]
	s.mu.Unlock()
	if w == nil {
		return false, nil
	}
	return true, w.Kill()
}

// Exited is told that worker id's process has ended (or never started). It reports whether the
// kernel's OOM killer killed in the worker's cgroup, which memory.oom.group makes a kill of the
// whole tree, and the worker's memory.max. The cgroup is removed, or kept until the processes
// left in it are gone (Sweep).
func (s *Set) Exited(id uint64) (oom bool, memoryMax uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.forking, id)
	w := s.live[id]
	if w == nil {
		return false, 0
	}
	delete(s.live, id)
	if ev, err := w.Events(); err == nil {
		oom = ev.OOMKill > 0 || ev.OOMGroupKill > 0
		if oom {
			memoryMax, _ = readUint(filepath.Join(w.dir, "memory.max"))
		}
	}
	if err := w.Remove(); err != nil {
		s.gone = append(s.gone, w)
	}
	return oom, memoryMax
}

// KillGone kills what remains in the cgroups of exited workers.
func (s *Set) KillGone() {
	s.mu.Lock()
	gone := slices.Clone(s.gone)
	s.mu.Unlock()
	for _, w := range gone {
		_ = w.Kill()
	}
}

// Sweep removes the cgroups of exited workers that have emptied since.
func (s *Set) Sweep() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweepLocked()
}

func (s *Set) sweepLocked() {
	s.gone = slices.DeleteFunc(s.gone, func(w *Worker) bool { return w.Remove() == nil })
}

// Drain removes the cgroups of exited workers as they empty, for up to timeout; it returns how
// many are left.
func (s *Set) Drain(timeout time.Duration) int {
	end := time.Now().Add(timeout)
	for {
		s.Sweep()
		left := s.Leftovers()
		if left == 0 || time.Now().After(end) {
			return left
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Leftovers counts the cgroups of exited workers that still hold processes.
func (s *Set) Leftovers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.gone)
}

// Memory reads worker id's memory.current and memory.stat; false when it has no cgroup, or no
// memory controller.
func (s *Set) Memory(id uint64) (Memory, bool) {
	s.mu.Lock()
	w := s.live[id]
	s.mu.Unlock()
	if w == nil {
		return Memory{}, false
	}
	m, err := w.Memory()
	return m, err == nil
}

// Dir is worker id's cgroup directory, "" when it has none.
func (s *Set) Dir(id uint64) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.live[id]; w != nil {
		return w.dir
	}
	return ""
}
