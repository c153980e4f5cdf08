package notify

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestListenSocketOptions(t *testing.T) {
	s, err := Listen(NewAbstractAddr())
	require.NoError(t, err)
	defer s.Close()
	raw, err := s.conn.SyscallConn()
	require.NoError(t, err)
	require.NoError(t, raw.Control(func(fd uintptr) {
		passCred, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED)
		assert.NoError(t, err)
		assert.Equal(t, 1, passCred, "SO_PASSCRED")
		flags, err := unix.FcntlInt(fd, unix.F_GETFD, 0)
		assert.NoError(t, err)
		assert.NotZero(t, flags&unix.FD_CLOEXEC, "the notify socket must not leak into workers")
	}))
}

func TestParseControlWithoutCredentials(t *testing.T) {
	pid, uid, gid, fds := parseControl(nil)
	assert.Equal(t, []int{0, -1, -1, 0}, []int{pid, uid, gid, len(fds)})
	// Garbage shorter or longer than a header must not be read past its end.
	pid, uid, gid, fds = parseControl([]byte{1, 2, 3})
	assert.Equal(t, []int{0, -1, -1, 0}, []int{pid, uid, gid, len(fds)})
	pid, uid, gid, fds = parseControl(make([]byte, 40))
	assert.Equal(t, []int{0, -1, -1, 0}, []int{pid, uid, gid, len(fds)})
}
