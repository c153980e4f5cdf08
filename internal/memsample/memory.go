package memsample

import (
	"bufio"
	"bytes"
	"errors"
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
	// KSM is what the kernel's same-page merging did for the process (/proc/PID/ksm_stat); nil
	// when the kernel has no such file.
	KSM *KSM
}

// KSM is a process's share in the kernel's same-page merging (KSM), from /proc/PID/ksm_stat.
type KSM struct {
	// MergingPages is how many of the process's pages ksmd merged with identical ones
	// (ksm_merging_pages): each is held once for every process that maps it.
	MergingPages uint64
	// RmapItems is how many of the process's pages ksmd tracks (ksm_rmap_items), which costs
	// kernel memory of its own.
	RmapItems uint64
	// Profit is the bytes merging saved, less what tracking the pages cost (ksm_process_profit);
	// below zero when ksmd scans pages it cannot merge.
	Profit int64
	// MergeAny is true when the process opted in whole (prctl PR_SET_MEMORY_MERGE, what forkd's
	// memory.ksm sets: ksm_merge_any), rather than region by region (madvise MADV_MERGEABLE).
	MergeAny bool
}

// Private is the part of RSS no other process shares.
func (m Memory) Private() uint64 { return m.RSS - min(m.Shared, m.RSS) }

// Read reads pid's memory use. It fails if the process is gone or /proc is unreadable.
func Read(pid int) (Memory, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/"
	b, err := os.ReadFile(dir + "smaps_rollup")
	if err != nil {
		return Memory{}, err
	}
	m, err := parseSmapsRollup(b)
	if err != nil {
		return m, fmt.Errorf("memsample: %w in %ssmaps_rollup", err, dir)
	}
	if b, err := os.ReadFile(dir + "ksm_stat"); err == nil {
		m.KSM = parseKSMStat(b)
	}
	return m, nil
}

func parseSmapsRollup(b []byte) (Memory, error) {
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
		return m, errors.New("no memory figures")
	}
	return m, nil
}

// parseKSMStat reads /proc/PID/ksm_stat (Linux 6.1 and later; lines "ksm_rmap_items 12",
// "ksm_merge_any: yes"); a line it does not know is skipped, as later kernels add some.
func parseKSMStat(b []byte) *KSM {
	var k KSM
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.TrimSuffix(key, ":") {
		case "ksm_merging_pages":
			k.MergingPages, _ = strconv.ParseUint(value, 10, 64)
		case "ksm_rmap_items":
			k.RmapItems, _ = strconv.ParseUint(value, 10, 64)
		case "ksm_process_profit":
			k.Profit, _ = strconv.ParseInt(value, 10, 64)
		case "ksm_merge_any":
			k.MergeAny = value == "yes"
		}
	}
	return &k
}
