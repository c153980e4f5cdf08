package main

import (
	"context"

	"github.com/forkd/forkd/internal/memsample"
	"github.com/forkd/forkd/internal/supervisor"
	"github.com/forkd/forkd/pkg/cluster"
)

// deliverSamples hands each of the memory sampler's samples to the machine, as a
// cluster.MemorySampled through the driver's loop, for its memory policies (refork_on_decay). It
// waits for the loop at most until ctx ends, which must happen when the driver stops running, so
// that the sampler can stop too.
func deliverSamples(ctx context.Context, d *supervisor.Driver) func(*memsample.Sample) {
	return func(s *memsample.Sample) {
		e := cluster.MemorySampled{At: s.At, Processes: make(map[int]cluster.Memory, len(s.Processes))}
		for pid, m := range s.Processes {
			e.Processes[pid] = cluster.Memory{PSS: m.PSS, PrivateDirty: m.PrivateDirty, Shared: m.Shared}
		}
		_ = d.MemorySampled(ctx, e) // an error: the driver has stopped
	}
}
