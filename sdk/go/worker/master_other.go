//go:build !linux

package worker

import (
	"errors"
	"fmt"
)

// waitForParentExit reports that pidfds are Linux-only, so the caller polls getppid(2).
func waitForParentExit(int) error {
	return fmt.Errorf("worker: watching the master: %w", errors.ErrUnsupported)
}
