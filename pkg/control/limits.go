package control

import (
	"fmt"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/fds"
)

// The control socket's defences against clients that connect and stall. Every phase of a request
// is bounded (see the timeouts in server.go); this file bounds how many connections are open at
// once, and keeps the master's last descriptors for supervision.

const (
	// MaxConnections is how many control connections may be open at once. forkctl opens one per
	// command, so this is far more than operators need, and few enough that stalled clients cost
	// the master a few megabytes and descriptors at most.
	MaxConnections = 64
	// FDReserve is how many descriptors below RLIMIT_NOFILE the control socket leaves to the rest
	// of the master: a connection accepted into the reserve is closed at once, so that stalled
	// clients can never take the descriptors a worker's respawn needs (its pidfd, its control
	// channel, a journal stream).
	FDReserve = 64
)

// limitListener accepts connections up to MaxConnections and outside the descriptor reserve. At
// the limit, a new connection takes the place of the oldest one that is not being answered (one
// still sending its request, or idle between two), so that clients who stall cannot lock forkctl
// out; when every connection is being answered (requests that wait for a rollout), the new one
// is closed.
type limitListener struct {
	net.Listener
	logger *slog.Logger
	// max and reserve are MaxConnections and FDReserve, unless a test lowers them.
	max, reserve int

	mu sync.Mutex
	// open lists the open connections, oldest first.
	open []*limitedConn
	// refused counts the connections closed for the limits since the last log line.
	refused    int
	lastLogged time.Time
}

// limitedConn is one connection of a limitListener.
type limitedConn struct {
	net.Conn
	l *limitListener
	// answering is set while a handler answers a request that has been read whole.
	answering bool
	closeOnce sync.Once
}

// Accept returns the next connection within the limits; it closes those beyond them itself.
func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if lc := l.admit(c); lc != nil {
			return lc, nil
		}
	}
}

// admit tracks c, making room for it if need be, or closes it and returns nil.
func (l *limitListener) admit(c net.Conn) *limitedConn {
	if fd := connFD(c); fd >= 0 && l.inReserve(fd) {
		c.Close()
		l.noteRefused(fmt.Sprintf("fewer than %d descriptors left below RLIMIT_NOFILE", l.reserve))
		return nil
	}
	l.mu.Lock()
	var evict *limitedConn
	if len(l.open) >= l.max {
		for _, o := range l.open {
			if !o.answering {
				evict = o
				break
			}
		}
		if evict == nil {
			l.mu.Unlock()
			c.Close()
			l.noteRefused("every connection is waiting for an answer")
			return nil
		}
		l.removeLocked(evict)
	}
	lc := &limitedConn{Conn: c, l: l}
	l.open = append(l.open, lc)
	l.mu.Unlock()
	if evict != nil {
		evict.Conn.Close()
		l.noteRefused("closed the oldest connection not being answered")
	}
	return lc
}

// inReserve reports whether descriptor fd is within the reserve below the soft RLIMIT_NOFILE.
// Linux hands out the lowest free descriptor, so a connection that gets fd n finds the n below it
// taken: fd near the limit means few are left.
func (l *limitListener) inReserve(fd int) bool {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == unix.RLIM_INFINITY {
		return false
	}
	return uint64(fd)+uint64(l.reserve) >= lim.Cur
}

func (l *limitListener) removeLocked(c *limitedConn) {
	for i, o := range l.open {
		if o == c {
			l.open = append(l.open[:i], l.open[i+1:]...)
			return
		}
	}
}

// noteRefused counts a connection closed for the limits, and logs the count at most once a
// minute: a flood must not become a flood of log lines.
func (l *limitListener) noteRefused(why string) {
	l.mu.Lock()
	l.refused++
	now := time.Now()
	if now.Sub(l.lastLogged) < time.Minute {
		l.mu.Unlock()
		return
	}
	n := l.refused
	l.refused, l.lastLogged = 0, now
	l.mu.Unlock()
	l.logger.Warn(fmt.Sprintf("control socket: closed %d connection(s) beyond its limits (%d open at once, the last: %s)", n, l.max, why),
		"event", "control-limit", "closed", n)
}

// Close closes the connection once and forgets it.
func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() {
		c.l.mu.Lock()
		c.l.removeLocked(c)
		c.l.mu.Unlock()
	})
	return err
}

// setAnswering marks the connection as being answered (true), which keeps it from eviction, or
// not (false).
func (c *limitedConn) setAnswering(answering bool) {
	c.l.mu.Lock()
	c.answering = answering
	c.l.mu.Unlock()
}

// SyscallConn exposes the socket, for SO_PEERCRED.
func (c *limitedConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, syscall.EINVAL
	}
	return sc.SyscallConn()
}

// connFD returns c's descriptor number, or -1.
func connFD(c net.Conn) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1
	}
	fd, err := fds.Raw(sc)
	if err != nil {
		return -1
	}
	return fd
}
