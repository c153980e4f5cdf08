package proctest

import (
	"bytes"
	"sync"
)

// Output collects a process's output (its stdout and stderr may be two goroutines of os/exec
// writing at once) for assertions and failure reports.
type Output struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.Write(p)
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.b.String()
}
