// Package fds is forkd's descriptor plumbing, in one place: reading the descriptor behind a
// connection without os.File.Fd, marking descriptors close-on-exec, and keeping some open across
// the hot restart's exec.
//
// Why not os.File.Fd: it switches the descriptor to blocking mode, and O_NONBLOCK lives in the
// open file description, which a listening socket shares with every worker (and a notify socket
// with the master's own poller). The descriptors returned here stay their owner's: use them for a
// system call or to hand them to a child, never close them.
package fds

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// Control runs f with the descriptor behind c (a net.Conn, a net.Listener, an *os.File), as
// syscall.RawConn.Control does: for a getsockopt, say.
func Control(c syscall.Conn, f func(fd int)) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	return raw.Control(func(fd uintptr) { f(int(fd)) })
}

// Raw returns the descriptor behind c, which stays c's.
func Raw(c syscall.Conn) (int, error) {
	fd := -1
	if err := Control(c, func(n int) { fd = n }); err != nil {
		return -1, err
	}
	return fd, nil
}

// CloseOnExecFrom marks every descriptor from fd up close-on-exec: whatever started forkd may have
// leaked some, and none may reach a worker.
func CloseOnExecFrom(fd int) {
	if err := unix.CloseRange(uint(fd), ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return
	}
	// Kernels before 5.11: one descriptor at a time.
	entries, _ := os.ReadDir("/proc/self/fd")
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil && n >= fd {
			unix.CloseOnExec(n)
		}
	}
}

// Inherit clears close-on-exec on fds (negative ones are skipped), so they survive an exec, and
// returns a function that sets it again, for when the exec fails.
func Inherit(fds []int) (restore func(), err error) {
	var done []int
	restore = func() {
		for _, fd := range done {
			unix.CloseOnExec(fd)
		}
	}
	for _, fd := range fds {
		if fd < 0 {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			restore()
			return nil, fmt.Errorf("fds: keep fd %d open across exec: %w", fd, err)
		}
		done = append(done, fd)
	}
	return restore, nil
}
