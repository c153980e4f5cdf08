package supervisor

import (
	"context"

	"github.com/forkd/forkd/pkg/cluster"
)

// MemorySampled hands the machine a sample of the workers' memory, through the loop like any
// request: the memory policies (refork_on_decay) decide on it. It returns once the loop has taken
// it, or when ctx ends.
func (d *Driver) MemorySampled(ctx context.Context, sample cluster.MemorySampled) error {
	select {
	case d.requests <- request{ev: sample}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
