package chaos

import (
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The suite's view of processes, from /proc: which processes forkd started (by ancestry: the suite
// is a subreaper, so even a dead master's orphans stay in its tree), which of them forkd tracks
// (its status), and who holds the listening socket.

// procStat is the part of /proc/PID/stat the suite reads.
type procStat struct {
	pid, ppid, pgrp int
	state           byte
	comm            string
	utime, stime    uint64
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closing < open || len(s) < closing+4 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: cannot parse %q", pid, s)
	}
	// After the command: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
	// cmajflt utime stime ...
	fields := strings.Fields(s[closing+2:])
	if len(fields) < 13 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: cannot parse %q", pid, s)
	}
	st := procStat{pid: pid, state: fields[0][0], comm: s[open+1 : closing]}
	st.ppid, _ = strconv.Atoi(fields[1])
	st.pgrp, _ = strconv.Atoi(fields[2])
	st.utime, _ = strconv.ParseUint(fields[11], 10, 64)
	st.stime, _ = strconv.ParseUint(fields[12], 10, 64)
	return st, nil
}

// processTable reads every process's stat.
func processTable() map[int]procStat {
	entries, _ := os.ReadDir("/proc")
	table := make(map[int]procStat, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			table[pid] = st
		}
	}
	return table
}

// descendsFrom reports whether pid's ancestry (parent links) passes through one of roots.
func descendsFrom(table map[int]procStat, pid int, roots map[int]bool) bool {
	for seen := 0; pid > 1 && seen < 64; seen++ {
		st, ok := table[pid]
		if !ok {
			return false
		}
		if roots[st.ppid] {
			return true
		}
		pid = st.ppid
	}
	return false
}

func cmdline(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// socketInode is the inode of the socket at fd, as /proc/PID/fd shows it ("socket:[INODE]").
func socketInode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// holders returns the processes with a descriptor for the socket with inode.
func holders(inode uint64) []int {
	want := fmt.Sprintf("socket:[%d]", inode)
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); target == want {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// children are the processes the suite started with os/exec (masters, forkctl, helpers): their
// Wait reaps them. Any other child of the suite is an orphan of forkd's tree re-parented to it,
// which the suite reaps itself.
var children = struct {
	sync.Mutex
	pids map[int]bool
}{pids: map[int]bool{}}

func startChild(cmd *exec.Cmd) error {
	children.Lock()
	defer children.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	children.pids[cmd.Process.Pid] = true
	return nil
}

func forgetChild(pid int) {
	children.Lock()
	defer children.Unlock()
	delete(children.pids, pid)
}

func isChild(pid int) bool {
	children.Lock()
	defer children.Unlock()
	return children.pids[pid]
}

// stray is a process forkd started that it does not track.
type stray struct {
	pid   int
	ppid  int
	state byte
	cmd   string
	why   string
}

func (s stray) String() string {
	return fmt.Sprintf("pid %d (%s, parent %d, state %c): %s", s.pid, s.cmd, s.ppid, s.state, s.why)
}

// strays lists the processes of the cluster's tree that its master does not track: descendants
// of the master or orphans re-parented to the suite, and holders of the listening socket, that
// are neither a worker in tracked nor a descendant of one. It reaps the orphans that have
// already exited (zombies whose parent is the suite). master is 0 when no master runs.
func strays(c *cluster, master int, tracked []int) []stray {
	table := processTable()
	self := os.Getpid()
	isTracked := map[int]bool{}
	for _, pid := range tracked {
		isTracked[pid] = true
	}
	ours := func(pid int) bool {
		return pid == self || pid == master || isChild(pid) || isTracked[pid] || descendsFrom(table, pid, isTracked)
	}
	var found []stray
	seen := map[int]bool{}
	roots := map[int]bool{self: true}
	if master != 0 {
		roots[master] = true
	}
	pids := make([]int, 0, len(table))
	for pid := range table {
		pids = append(pids, pid)
	}
	sort.Ints(pids)
	for _, pid := range pids {
		st := table[pid]
		if ours(pid) || !descendsFrom(table, pid, roots) {
			continue
		}
		if st.ppid == self && st.state == 'Z' {
			// An orphan that has exited since it came to the suite: gone, once reaped.
			var ws unix.WaitStatus
			unix.Wait4(pid, &ws, unix.WNOHANG, nil)
			continue
		}
		why := "a descendant of the master it does not track"
		if st.ppid == self {
			why = "an orphan of an earlier master"
		}
		if st.state == 'Z' {
			why = "a zombie nobody reaps"
		}
		found = append(found, stray{pid: pid, ppid: st.ppid, state: st.state, cmd: cmdline(pid), why: why})
		seen[pid] = true
	}
	for _, pid := range holders(c.inode) {
		if ours(pid) || seen[pid] {
			continue
		}
		st := table[pid]
		found = append(found, stray{pid: pid, ppid: st.ppid, state: st.state, cmd: cmdline(pid), why: "holds the listening socket"})
	}
	return found
}

// killLeftovers SIGKILLs, by PID, every process of the cluster's tree that is still there once
// its master is gone, and reaps the ones re-parented to the suite.
func killLeftovers(c *cluster) {
	for range 50 {
		left := strays(c, 0, nil)
		if len(left) == 0 {
			return
		}
		for _, s := range left {
			if s.state != 'Z' {
				syscall.Kill(s.pid, syscall.SIGKILL)
			}
		}
		sleep(100)
	}
}
