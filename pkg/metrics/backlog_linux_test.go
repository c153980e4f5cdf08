package metrics_test

import (
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/metrics"
)

// listenRaw makes a listening socket the way forkd holds its listeners: a raw descriptor, with
// listen(2)'s backlog as given.
func listenRaw(t *testing.T, domain int, sa unix.Sockaddr, backlog int) int {
	t.Helper()
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if domain == unix.AF_INET6 && err == unix.EAFNOSUPPORT {
		t.Skip("no IPv6 on this machine")
	}
	require.NoError(t, err)
	t.Cleanup(func() { _ = unix.Close(fd) })
	err = unix.Bind(fd, sa)
	if domain == unix.AF_INET6 && err == unix.EADDRNOTAVAIL {
		t.Skip("no IPv6 loopback address on this machine")
	}
	require.NoError(t, err)
	require.NoError(t, unix.Listen(fd, backlog))
	return fd
}

func dialAll(t *testing.T, network, addr string, n int) {
	t.Helper()
	for range n {
		c, err := net.DialTimeout(network, addr, 10*time.Second)
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
	}
}

// waitQueued waits until fd's accept queue holds want connections: a TCP connection joins it
// when the handshake's last ACK arrives, a moment after the client's connect returns.
func waitQueued(t *testing.T, fd int, want uint64) metrics.Backlog {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := metrics.ReadBacklog(fd)
		require.NoError(t, err)
		if b.Queued == want || time.Now().After(deadline) {
			return b
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func accept(t *testing.T, fd int) {
	t.Helper()
	nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
	require.NoError(t, err)
	_ = unix.Close(nfd)
}

func TestReadBacklogTCP(t *testing.T) {
	for _, tt := range []struct {
		name   string
		domain int
		sa     unix.Sockaddr
	}{
		{"ipv4", unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}},
		{"ipv6", unix.AF_INET6, &unix.SockaddrInet6{Addr: [16]byte{15: 1}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			lfd := listenRaw(t, tt.domain, tt.sa, 16)
			sa, err := unix.Getsockname(lfd)
			require.NoError(t, err)
			var addr string
			switch a := sa.(type) {
			case *unix.SockaddrInet4:
				addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(a.Port))
			case *unix.SockaddrInet6:
				addr = net.JoinHostPort("::1", strconv.Itoa(a.Port))
			}

			assert.Equal(t, metrics.Backlog{Queued: 0, Limit: 16}, waitQueued(t, lfd, 0))
			dialAll(t, "tcp", addr, 5)
			assert.Equal(t, metrics.Backlog{Queued: 5, Limit: 16}, waitQueued(t, lfd, 5))
			accept(t, lfd)
			accept(t, lfd)
			assert.Equal(t, metrics.Backlog{Queued: 3, Limit: 16}, waitQueued(t, lfd, 3))
		})
	}
}

func TestReadBacklogUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	lfd := listenRaw(t, unix.AF_UNIX, &unix.SockaddrUnix{Name: path}, 8)
	assert.Equal(t, metrics.Backlog{Queued: 0, Limit: 8}, waitQueued(t, lfd, 0))
	dialAll(t, "unix", path, 4)
	assert.Equal(t, metrics.Backlog{Queued: 4, Limit: 8}, waitQueued(t, lfd, 4))
	accept(t, lfd)
	assert.Equal(t, metrics.Backlog{Queued: 3, Limit: 8}, waitQueued(t, lfd, 3))

	// An abstract socket has an inode too.
	afd := listenRaw(t, unix.AF_UNIX, &unix.SockaddrUnix{Name: "@forkd-backlog-test/" + filepath.Base(t.TempDir())}, 3)
	assert.Equal(t, metrics.Backlog{Queued: 0, Limit: 3}, waitQueued(t, afd, 0))
}

func TestReadBacklogRefuses(t *testing.T) {
	t.Run("a socket that does not listen", func(t *testing.T) {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(fd)
		_, err = metrics.ReadBacklog(fd)
		assert.ErrorContains(t, err, "not listening")
	})
	t.Run("not a socket", func(t *testing.T) {
		var p [2]int
		require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		_, err := metrics.ReadBacklog(p[0])
		assert.ErrorIs(t, err, unix.ENOTSOCK)
	})
}
