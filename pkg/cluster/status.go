package cluster

import "time"

// Status is a snapshot of the cluster for the control API and forkctl.
type Status struct {
	Phase      Phase
	Generation int
	Desired    int
	Ready      int
	// Dropped counts datagrams on the notify socket that came from no worker or did not parse.
	Dropped    uint64
	StatusLine string
	Workers    []WorkerStatus
}

// WorkerStatus describes one slot and its current process, if any.
type WorkerStatus struct {
	Index      int
	ID         WorkerID // 0 when the slot has no process
	PID        int
	Generation int
	// State is the worker's state ("booting", "ready", ...); for a slot without a process it is
	// "backoff" while the slot waits to respawn after consecutive crashes, else "exited".
	State      string
	SpawnedAt  time.Time
	ReadyAt    time.Time
	Restarts   int
	Crashes    int // consecutive
	StatusLine string
	Requests   uint64
	LastExit   string
	NextSpawn  time.Time
	Retiring   bool
}

// Status returns a snapshot of the cluster.
func (m *Machine) Status() Status {
	st := Status{
		Phase:      m.phase,
		Generation: m.generation,
		Desired:    m.desired,
		Ready:      m.readyCount(),
		Dropped:    m.dropped,
		StatusLine: m.lastStatus,
	}
	for _, s := range m.slots {
		if s.retiring && s.worker == nil {
			continue // drained, waiting for the slots above it to drain too
		}
		ws := WorkerStatus{
			Index:     s.index,
			Restarts:  s.restarts,
			Crashes:   s.failures,
			LastExit:  s.lastExit,
			NextSpawn: s.nextSpawn,
			Retiring:  s.retiring,
			State:     "exited",
		}
		if s.inBackoff() {
			ws.State = "backoff"
		}
		if w := s.worker; w != nil {
			ws.ID, ws.PID, ws.Generation, ws.State = w.id, w.pid, w.generation, w.state.String()
			ws.SpawnedAt, ws.ReadyAt = w.spawnedAt, w.readyAt
			ws.StatusLine, ws.Requests = w.statusLine, w.requests
		}
		st.Workers = append(st.Workers, ws)
	}
	return st
}
