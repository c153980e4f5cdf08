package fds_test

import (
	"net"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/fds"
)

func flags(t *testing.T, fd int, cmd int) int {
	t.Helper()
	v, err := unix.FcntlInt(uintptr(fd), cmd, 0)
	require.NoError(t, err)
	return v
}

// Raw gives the descriptor and leaves it non-blocking, as the connection's poller needs it; Fd,
// for comparison, switches it to blocking mode.
func TestRawKeepsTheDescriptorNonBlocking(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	fd, err := fds.Raw(l.(*net.TCPListener))
	require.NoError(t, err)
	assert.NotZero(t, flags(t, fd, unix.F_GETFL)&unix.O_NONBLOCK, "Raw must leave O_NONBLOCK")

	f, err := l.(*net.TCPListener).File()
	require.NoError(t, err)
	defer f.Close()
	assert.Zero(t, flags(t, int(f.Fd()), unix.F_GETFL)&unix.O_NONBLOCK, "os.File.Fd switches to blocking mode")
}

func TestInheritAndRestore(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	rfd, err := fds.Raw(r)
	require.NoError(t, err)
	wfd, err := fds.Raw(w)
	require.NoError(t, err)
	restore, err := fds.Inherit([]int{rfd, -1, wfd})
	require.NoError(t, err)
	assert.Zero(t, flags(t, rfd, unix.F_GETFD)&unix.FD_CLOEXEC)
	assert.Zero(t, flags(t, wfd, unix.F_GETFD)&unix.FD_CLOEXEC)
	restore()
	assert.NotZero(t, flags(t, rfd, unix.F_GETFD)&unix.FD_CLOEXEC)
	assert.NotZero(t, flags(t, wfd, unix.F_GETFD)&unix.FD_CLOEXEC)

	_, err = fds.Inherit([]int{rfd, 1 << 20})
	assert.Error(t, err, "a descriptor that is not open")
	assert.NotZero(t, flags(t, rfd, unix.F_GETFD)&unix.FD_CLOEXEC, "a failure restores what it changed")
}

func TestCloseOnExecFrom(t *testing.T) {
	var p [2]int
	require.NoError(t, unix.Pipe(p[:])) // without O_CLOEXEC
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	require.Zero(t, flags(t, p[0], unix.F_GETFD)&unix.FD_CLOEXEC)
	fds.CloseOnExecFrom(3)
	assert.NotZero(t, flags(t, p[0], unix.F_GETFD)&unix.FD_CLOEXEC)
	assert.NotZero(t, flags(t, p[1], unix.F_GETFD)&unix.FD_CLOEXEC)
}
