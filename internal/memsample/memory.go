package memsample

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Memory is a process's memory use in bytes, from /proc/PID/smaps_rollup.
type Memory struct {
	// RSS is the resident set; PSS divides each shared page among the processes sharing it, so
	// the PSS of all workers adds up to what the cluster really uses.
	RSS, PSS uint64
	// Shared is the part of RSS shared with other processes (Shared_Clean + Shared_Dirty): in
	// fork-worker mode, mostly with the template and the sibling workers (copy-on-write pages
	// not yet copied).
	Shared uint64
	// PrivateDirty is the memory the process wrote and shares with none (Private_Dirty): what
	// copy-on-write has copied, and what a refork can win back.
	PrivateDirty uint64
}

// Private is the part of RSS no other process shares.
func (m Memory) Private() uint64 { return m.RSS - min(m.Shared, m.RSS) }

// Read reads pid's memory use. It fails if the process is gone or /proc is unreadable.
func Read(pid int) (Memory, error) {
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
		case "Private_Dirty":
			m.PrivateDirty = kb * 1024
		}
	}
	if m.RSS == 0 && m.PSS == 0 {
		return m, fmt.Errorf("memsample: no memory figures in /proc/%d/smaps_rollup", pid)
	}
	return m, nil
}
