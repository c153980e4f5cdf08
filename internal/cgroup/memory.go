package cgroup

// Memory is a worker cgroup's memory, in bytes, from memory.current and memory.stat.
type Memory struct {
	// Current is everything charged to the cgroup (memory.current): its processes' anonymous
	// memory, the page cache they brought in, and kernel memory on their behalf.
	Current uint64
	// Anon is anonymous memory (heap, stacks, copied-on-write pages); File the page cache,
	// Shmem included; Shmem tmpfs, shared memory and shared anonymous mappings; Kernel the
	// kernel's own allocations for the cgroup (stacks, page tables, slab; Linux 5.18, 0 before);
	// Sock network buffers.
	Anon, File, Shmem, Kernel, Sock uint64
	// Stat is the whole of memory.stat, every key the kernel reports.
	Stat map[string]uint64
}

func memoryFrom(current uint64, stat map[string]uint64) Memory {
	return Memory{
		Current: current,
		Anon:    stat["anon"],
		File:    stat["file"],
		Shmem:   stat["shmem"],
		Kernel:  stat["kernel"],
		Sock:    stat["sock"],
		Stat:    stat,
	}
}

// MemoryEvents are memory.events' counters, cumulative over the cgroup's life.
type MemoryEvents struct {
	// High counts the times the cgroup was throttled past memory.high; Max the times it reached
	// memory.max (each followed by reclaim, and an OOM if that failed).
	High, Max uint64
	// OOM counts the OOM situations in the cgroup; OOMKill the processes the OOM killer killed
	// in it; OOMGroupKill the whole-cgroup kills (memory.oom.group, Linux 5.17).
	OOM, OOMKill, OOMGroupKill uint64
}

func memoryEventsFrom(ev map[string]uint64) MemoryEvents {
	return MemoryEvents{
		High:         ev["high"],
		Max:          ev["max"],
		OOM:          ev["oom"],
		OOMKill:      ev["oom_kill"],
		OOMGroupKill: ev["oom_group_kill"],
	}
}
