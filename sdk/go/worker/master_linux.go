package worker

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// pidfdOpen is pidfd_open(2); tests replace it to exercise the fallback for kernels without it.
var pidfdOpen = unix.PidfdOpen

// waitForParentExit blocks until the parent process ppid has exited. It returns an error, perhaps
// without having waited at all, when the parent cannot be watched with a pidfd; the caller then
// falls back to polling getppid(2).
func waitForParentExit(ppid int) error {
	pidfd, err := pidfdOpen(ppid, 0)
	if err != nil {
		return fmt.Errorf("worker: pidfd_open: %w", err)
	}
	defer unix.Close(pidfd)
	// The parent may have exited, and its PID been reused, between getppid and pidfd_open. While
	// ppid is still our parent, the pidfd is the parent's.
	if os.Getppid() != ppid {
		return nil
	}
	for {
		// A pidfd polls readable once its process has exited.
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("worker: poll pidfd: %w", err)
		}
		if n > 0 {
			return nil
		}
	}
}
