package cluster

import "time"

// This file holds what the machine learns of the workers' memory: the samples the driver takes of
// every worker's /proc/PID/smaps_rollup, on which the memory policies decide (the refork trigger
// in decay.go). The machine reads no /proc itself: a sample is an event like any other.

// MemorySampled carries the memory of the workers at one moment: At is when the reads began, and
// Processes the figures of each process read, by PID (a process gone before its read is absent).
// A process the machine does not know, or a worker spawned after At (a reused PID), is ignored.
type MemorySampled struct {
	At        time.Time
	Processes map[int]Memory
}

func (MemorySampled) isEvent() {}

// Memory is one process's memory in bytes, from /proc/PID/smaps_rollup.
type Memory struct {
	// PSS divides each shared page among the processes that share it: the workers' PSS adds up
	// to what the cluster really uses.
	PSS uint64
	// PrivateDirty (Private_Dirty) is what the process wrote and shares with no other: in
	// fork-worker mode, what copy-on-write has copied since the fork, which a refork wins back.
	PrivateDirty uint64
	// Shared (Shared_Clean + Shared_Dirty) is what the process shares with others: in fork-worker
	// mode mostly the template's pages, not copied yet.
	Shared uint64
}

// MemoryFigures is a worker's memory at the last sample that read it, in a WorkerStatus.
type MemoryFigures struct {
	Memory
	At time.Time
}

// memorySampled stores each known worker's figures, then lets the policies judge the sample.
func (m *Machine) memorySampled(e MemorySampled) {
	for pid, mem := range e.Processes {
		w, ok := m.byPID[pid]
		if !ok || !w.spawnedAt.Before(e.At) {
			continue
		}
		w.memory = &MemoryFigures{Memory: mem, At: e.At}
	}
	m.decaySampled(e)
}
