package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Worker is one worker process's cgroup. Its reading methods (Memory, Events, Procs, Populated)
// may be called from any goroutine; Remove must not run concurrently with another method.
type Worker struct {
	tree *Tree
	name string
	dir  string
	fd   int // the directory, O_PATH: CLONE_INTO_CGROUP's target; -1 once removed
}

// Limits are a worker's resource limits. A zero field means no limit.
type Limits struct {
	// MemoryMax is memory.max in bytes: past it the kernel reclaims, then OOM-kills within the
	// worker's cgroup, and since memory.oom.group is set, it kills the worker's whole tree.
	MemoryMax uint64
	// MemoryHigh is memory.high in bytes: past it the worker is throttled and reclaimed hard,
	// never killed.
	MemoryHigh uint64
	// PidsMax is pids.max: the most tasks (processes and threads) the worker's tree may have.
	PidsMax uint64
}

// NewWorker creates the cgroup of slot's worker number id (any number unique among the
// master's spawns: a slot's old and new workers coexist during a rollout), named
// worker-SLOT-ID, and applies limits. A leftover cgroup of that name is reused if it is empty
// (an earlier master's, killed before it could remove it).
func (t *Tree) NewWorker(slot int, id uint64, limits Limits) (*Worker, error) {
	name := workerPrefix + strconv.Itoa(slot) + "-" + strconv.FormatUint(id, 10)
	dir := filepath.Join(t.dir, name)
	err := os.Mkdir(dir, 0o755)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("cgroup: create %s: %w", dir, err)
	}
	leftover := err != nil
	w, err := t.open(name)
	if err != nil {
		_ = unix.Rmdir(dir)
		return nil, err
	}
	if populated, _ := w.Populated(); leftover && populated {
		_ = unix.Close(w.fd)
		return nil, fmt.Errorf("cgroup: %s is left over from an earlier worker, and processes still run in it", dir)
	}
	if t.Has("memory") {
		// An OOM kill takes the worker's whole tree, not one of its processes at the kernel's
		// choice: a worker left without the helper it forked would serve half broken.
		if err := writeFile(filepath.Join(dir, "memory.oom.group"), "1"); err != nil {
			_ = w.Remove()
			return nil, fmt.Errorf("cgroup: %s: %w", name, err)
		}
	}
	if err := w.SetLimits(limits); err != nil {
		_ = w.Remove()
		return nil, err
	}
	return w, nil
}

// OpenWorker opens the existing cgroup name (from Workers): after a hot restart, an adopted
// worker's.
func (t *Tree) OpenWorker(name string) (*Worker, error) {
	if !strings.HasPrefix(name, workerPrefix) || strings.ContainsRune(name, '/') {
		return nil, fmt.Errorf("cgroup: %q is not a worker cgroup's name", name)
	}
	return t.open(name)
}

func (t *Tree) open(name string) (*Worker, error) {
	dir := filepath.Join(t.dir, name)
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup: open %s: %w", dir, err)
	}
	return &Worker{tree: t, name: name, dir: dir, fd: fd}, nil
}

// Name is the cgroup's name below the tree, e.g. "worker-3-17".
func (w *Worker) Name() string { return w.name }

// Dir is the cgroup's directory.
func (w *Worker) Dir() string { return w.dir }

// SetSysProcAttr makes a process started with attr begin its life in the worker's cgroup
// (clone3 with CLONE_INTO_CGROUP, Linux 5.7), so that not even its first instructions run
// elsewhere. The cgroup must stay open until the process has started.
func (w *Worker) SetSysProcAttr(attr *syscall.SysProcAttr) {
	attr.UseCgroupFD = true
	attr.CgroupFD = w.fd
}

// Place moves process pid (all its threads) into the worker's cgroup: for a worker forked by the
// template, which is born in the template's cgroup, when it says hello. What it has allocated
// before stays charged to the template's cgroup (cgroup v2 never moves charges), so the memory
// the worker's cgroup shows is what it allocated or copied-on-write since.
func (w *Worker) Place(pid int) error {
	if err := writeFile(filepath.Join(w.dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
		return fmt.Errorf("cgroup: move %d into %s: %w", pid, w.name, err)
	}
	return nil
}

// Procs lists the processes in the worker's cgroup.
func (w *Worker) Procs() ([]int, error) {
	return readPIDs(filepath.Join(w.dir, "cgroup.procs"))
}

// Populated reports whether any process is still in the cgroup (cgroup.events).
func (w *Worker) Populated() (bool, error) {
	events, err := readKeyed(filepath.Join(w.dir, "cgroup.events"))
	if err != nil {
		return false, err
	}
	return events["populated"] != 0, nil
}

// SetLimits writes the worker's limits; a zero field writes "max" (no limit). Limits need the
// memory or pids controller: without it, any non-zero limit fails with ErrNoController.
func (w *Worker) SetLimits(l Limits) error {
	for _, s := range []struct {
		controller, file string
		value            uint64
	}{
		{"memory", "memory.max", l.MemoryMax},
		{"memory", "memory.high", l.MemoryHigh},
		{"pids", "pids.max", l.PidsMax},
	} {
		if !w.tree.Has(s.controller) {
			if s.value != 0 {
				return fmt.Errorf("%w: %s needs the %s controller, which %s does not have", ErrNoController, s.file, s.controller, w.tree.dir)
			}
			continue
		}
		v := "max"
		if s.value != 0 {
			v = strconv.FormatUint(s.value, 10)
		}
		if err := writeFile(filepath.Join(w.dir, s.file), v); err != nil {
			return fmt.Errorf("cgroup: %s: %s: %w", w.name, s.file, err)
		}
	}
	return nil
}

// Memory reads the worker's memory.current and memory.stat. It fails with ErrNoController
// without the memory controller.
func (w *Worker) Memory() (Memory, error) {
	if !w.tree.Has("memory") {
		return Memory{}, fmt.Errorf("%w: memory figures need the memory controller", ErrNoController)
	}
	current, err := readUint(filepath.Join(w.dir, "memory.current"))
	if err != nil {
		return Memory{}, err
	}
	stat, err := readKeyed(filepath.Join(w.dir, "memory.stat"))
	if err != nil {
		return Memory{}, err
	}
	return memoryFrom(current, stat), nil
}

// Events reads the worker's memory.events: how often it hit its limits, and the OOM kills in its
// cgroup. An exit by SIGKILL with OOMKill higher than before it was an OOM kill. It fails with
// ErrNoController without the memory controller.
func (w *Worker) Events() (MemoryEvents, error) {
	if !w.tree.Has("memory") {
		return MemoryEvents{}, fmt.Errorf("%w: memory events need the memory controller", ErrNoController)
	}
	ev, err := readKeyed(filepath.Join(w.dir, "memory.events"))
	if err != nil {
		return MemoryEvents{}, err
	}
	return memoryEventsFrom(ev), nil
}

// Kill sends SIGKILL to every process in the worker's cgroup, those it forks meanwhile included
// (cgroup.kill, Linux 5.14). On an older kernel it signals the listed processes, and again any
// that appear in the list meanwhile, until a look finds none new. The processes die shortly
// after Kill returns: Populated turns false once they have.
func (w *Worker) Kill() error {
	err := writeFile(filepath.Join(w.dir, "cgroup.kill"), "1")
	if errors.Is(err, fs.ErrNotExist) {
		return w.killEach()
	}
	if err != nil {
		return fmt.Errorf("cgroup: kill %s: %w", w.name, err)
	}
	return nil
}

// killEach is Kill without cgroup.kill. A process with SIGKILL pending cannot fork any more
// (copy_process fails on a pending fatal signal), so what remains to catch are the children
// forked just before the signal: they show in the next look.
func (w *Worker) killEach() error {
	signalled := make(map[int]bool)
	for round := 0; round < 1000; round++ {
		pids, err := w.Procs()
		if err != nil {
			return fmt.Errorf("cgroup: kill %s: %w", w.name, err)
		}
		fresh := 0
		for _, pid := range pids {
			if !signalled[pid] {
				signalled[pid] = true
				fresh++
				w.killListed(pid)
			}
		}
		if fresh == 0 {
			return nil
		}
	}
	return fmt.Errorf("cgroup: kill %s: new processes still appear after 1000 rounds of SIGKILL", w.name)
}

// killListed kills pid, read from cgroup.procs, unless it has exited and its PID been reused by
// a process outside the cgroup since: through a pidfd, opened before the process's cgroup is
// read, so that the signal reaches the process that was read or none.
func (w *Worker) killListed(pid int) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return // gone
	}
	defer unix.Close(pidfd)
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return
	}
	if p, err := unifiedPath(string(b)); err != nil || !strings.HasSuffix(p, "/"+w.name) {
		return
	}
	_ = unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
}

// ErrBusy is Remove's error while processes remain in the cgroup.
var ErrBusy = errors.New("cgroup: processes remain")

// Remove closes the worker's cgroup and removes it. It fails with ErrBusy while any process is
// left in it (Kill it, and wait until Populated is false); the cgroup stays open then, to be
// removed later. Removing a removed cgroup does nothing.
func (w *Worker) Remove() error {
	if w.fd < 0 {
		return nil
	}
	if err := unix.Rmdir(w.dir); err != nil && !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("%w in %s", ErrBusy, w.name)
		}
		return fmt.Errorf("cgroup: remove %s: %w", w.name, err)
	}
	_ = unix.Close(w.fd)
	w.fd = -1
	return nil
}
