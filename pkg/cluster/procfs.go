package cluster

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// This file reads what the driver needs from /proc: a process's parent, and its memory.

// parentPID reads the parent of pid from /proc/PID/stat. The command name in parentheses may hold
// spaces and parentheses itself, so the fields are read after its last ')'.
func parentPID(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("cluster: malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 2 {
		return 0, fmt.Errorf("cluster: malformed /proc/%d/stat", pid)
	}
	return strconv.Atoi(fields[1])
}

// Memory is a process's memory use, from /proc/PID/smaps_rollup.
type Memory struct {
	// RSS is the resident set; PSS divides each shared page among the processes sharing it, so
	// the PSS of all workers adds up to what the cluster really uses.
	RSS, PSS uint64
	// Shared is the part of RSS shared with other processes: in fork-worker mode, mostly with the
	// template and the sibling workers (copy-on-write pages not yet copied).
	Shared uint64
}

// ReadMemory reads pid's memory use. It fails if the process is gone or /proc is unreadable.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return Memory{}, err
	}
	var m Memory
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch key {
		case "Rss":
			m.RSS = kb * 1024
		case "Pss":
			m.PSS = kb * 1024
		case "Shared_Clean", "Shared_Dirty":
			m.Shared += kb * 1024
		}
	}
	if m.RSS == 0 && m.PSS == 0 {
		return m, fmt.Errorf("cluster: no memory figures in /proc/%d/smaps_rollup", pid)
	}
	return m, nil
}
