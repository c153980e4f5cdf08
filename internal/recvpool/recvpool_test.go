package recvpool

import (
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func socketpair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	conn := func(fd int) *net.UnixConn {
		f := os.NewFile(uintptr(fd), "test")
		defer f.Close()
		c, err := net.FileConn(f)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c.(*net.UnixConn)
	}
	return conn(fds[0]), conn(fds[1])
}

// Goroutines waiting on many sockets hold no buffer: one is lent only while a message is read.
func TestWaitersHoldNoBuffer(t *testing.T) {
	const sockets = 50
	p := New(64<<10, 64)
	var wg sync.WaitGroup
	got := make([]string, sockets)
	senders := make([]*net.UnixConn, sockets)
	for i := range sockets {
		r, w := socketpair(t)
		senders[i] = w
		wg.Go(func() {
			m, err := p.Recv(r)
			assert.NoError(t, err)
			got[i] = string(m.Data)
		})
	}
	// Every waiter has tried its socket once, found nothing, and waits.
	time.Sleep(200 * time.Millisecond)
	assert.Zero(t, p.lent.Load(), "buffers held by %d waiting goroutines", sockets)
	for i, w := range senders {
		_, err := w.Write([]byte{byte('a' + i%26)})
		require.NoError(t, err)
	}
	wg.Wait()
	for i := range sockets {
		assert.Equal(t, string(rune('a'+i%26)), got[i])
	}
	assert.Zero(t, p.lent.Load())
}

// A message larger than the buffers is cut short and says so; the next one is whole.
func TestTruncatedMessage(t *testing.T) {
	r, w := socketpair(t)
	p := New(8, 64)
	_, err := w.Write([]byte("0123456789"))
	require.NoError(t, err)
	_, err = w.Write([]byte("short"))
	require.NoError(t, err)
	m, err := p.Recv(r)
	require.NoError(t, err)
	assert.Equal(t, "01234567", string(m.Data))
	assert.NotZero(t, m.Flags&unix.MSG_TRUNC)
	m, err = p.Recv(r)
	require.NoError(t, err)
	assert.Equal(t, "short", string(m.Data))
	assert.Zero(t, m.Flags&unix.MSG_TRUNC)
}

// Passed descriptors arrive in the control data, close-on-exec.
func TestControlData(t *testing.T) {
	r, w := socketpair(t)
	p := New(16, unix.CmsgSpace(4))
	passed, err := os.Open(os.DevNull)
	require.NoError(t, err)
	defer passed.Close()
	_, _, err = w.WriteMsgUnix([]byte("fd"), unix.UnixRights(int(passed.Fd())), nil)
	require.NoError(t, err)
	m, err := p.Recv(r)
	require.NoError(t, err)
	msgs, err := unix.ParseSocketControlMessage(m.OOB)
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	fds, err := unix.ParseUnixRights(&msgs[0])
	require.NoError(t, err)
	require.Len(t, fds, 1)
	defer unix.Close(fds[0])
	flags, err := unix.FcntlInt(uintptr(fds[0]), unix.F_GETFD, 0)
	require.NoError(t, err)
	assert.NotZero(t, flags&unix.FD_CLOEXEC)
}

// A read deadline and Close end a wait with the errors net's own reads return.
func TestDeadlineAndClose(t *testing.T) {
	r, _ := socketpair(t)
	p := New(16, 0)
	require.NoError(t, r.SetReadDeadline(time.Now().Add(20*time.Millisecond)))
	_, err := p.Recv(r)
	assert.True(t, errors.Is(err, os.ErrDeadlineExceeded), "%v", err)

	r, _ = socketpair(t)
	done := make(chan error)
	go func() { _, err := p.Recv(r); done <- err }()
	time.Sleep(20 * time.Millisecond)
	r.Close()
	assert.True(t, errors.Is(<-done, net.ErrClosed))
}
