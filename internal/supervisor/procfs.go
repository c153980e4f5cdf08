package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// This file reads what the driver needs from /proc: a process's parent and the master's children.
// (The workers' memory is internal/memsample's.)

// statFields reads /proc/PID/stat from its third field on: the state, the parent, ... The command
// name in parentheses before them may hold spaces and parentheses itself, so the fields are read
// after its last ')'.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("cluster: malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 2 {
		return nil, fmt.Errorf("cluster: malformed /proc/%d/stat", pid)
	}
	return fields, nil
}

// parentPID reads the parent of pid.
func parentPID(pid int) (int, error) {
	fields, err := statFields(pid)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(fields[1])
}

// childrenOfSelf lists the master's children. Each thread has its own list (a child belongs to the
// thread that forked it, or that it was re-parented to), so it reads every thread's; without
// /proc/PID/task/TID/children (a kernel without CONFIG_PROC_CHILDREN), it reads every process's
// parent instead.
func childrenOfSelf() ([]int, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, err
	}
	var children []int
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		if errors.Is(err, fs.ErrNotExist) {
			if _, statErr := os.Stat("/proc/self/task/" + t.Name()); statErr == nil {
				return childrenByParent(os.Getpid())
			}
			continue // the thread has exited
		}
		if err != nil {
			return nil, err
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				children = append(children, pid)
			}
		}
	}
	return children, nil
}

// childrenByParent lists the processes whose parent is ppid, reading every /proc/PID/stat.
func childrenByParent(ppid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var children []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if parent, err := parentPID(pid); err == nil && parent == ppid {
			children = append(children, pid)
		}
	}
	return children, nil
}

// exited reports whether pid is a zombie or gone.
func exited(pid int) bool {
	fields, err := statFields(pid)
	return err != nil || fields[0] == "Z" || fields[0] == "X"
}
