package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/fds"
)

// WorkerAccess is what the control API lets forkd's own workers do, and every process descended
// from them: the application's code, which runs as forkd's user and so passes the uid check.
type WorkerAccess string

const (
	// WorkerAccessNone refuses every request from a worker (the default): application code may
	// not control its own supervisor.
	WorkerAccessNone WorkerAccess = "none"
	// WorkerAccessStatus lets workers read the status (GET /v1/status), and nothing else.
	WorkerAccessStatus WorkerAccess = "status"
	// WorkerAccessFull lets workers use the whole API, as the operator can.
	WorkerAccessFull WorkerAccess = "full"
)

// WorkerAccessOption names the config option that sets WorkerAccess, for the messages of refusals.
const WorkerAccessOption = "control.worker_access"

// Workers tells the server which connecting processes run the application's code. The master's
// driver implements it; it knows the workers.
type Workers interface {
	// IsWorker reports whether process pid is a worker, a worker's descendant, or a process the
	// master inherited from its workers' tree, with a sentence that says which ("pid 4250 is a
	// descendant of worker 2 (pid 4242)"). It must not hold the master's loop for long: the server
	// calls it once per connection, bounded by ctx.
	IsWorker(ctx context.Context, pid int) (worker bool, reason string, err error)
}

// kinshipTimeout bounds the question to Workers: the master's loop answers it between two events.
const kinshipTimeout = 5 * time.Second

// Option configures a Server.
type Option func(*Server)

// WithWorkers makes the server ask w about every connecting process, and let a worker do only what
// access allows. Without it, the server refuses no process for being a worker (the uid check
// still applies).
func WithWorkers(w Workers, access WorkerAccess) Option {
	return func(s *Server) {
		s.workers, s.workerAccess = w, access
	}
}

// conn is what the server knows of one connection: who connected, and, once asked, whether it is a
// worker. Requests on one connection come one after the other.
type conn struct {
	net.Conn
	cred peerCred

	mu sync.Mutex
	// checked: the kinship below is known.
	checked bool
	worker  bool
	reason  string
}

type connKey struct{}

// withConn is the server's ConnContext: it reads the peer's credentials once per connection.
func withConn(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, &conn{Conn: c, cred: readPeerCred(c)})
}

func connFromContext(ctx context.Context) *conn {
	if c, ok := ctx.Value(connKey{}).(*conn); ok {
		return c
	}
	return &conn{cred: peerCred{uid: -1, pid: -1, err: errors.New("control: no peer credentials for this connection")}}
}

// authorizeWorker refuses a request from a worker that its access does not cover; readOnly
// requests only read the status.
func (s *Server) authorizeWorker(ctx context.Context, c *conn, readOnly bool) error {
	if s.workers == nil || s.workerAccess == WorkerAccessFull {
		return nil
	}
	worker, reason, err := c.kinship(ctx, s.workers)
	if err != nil {
		return &Error{Code: http.StatusForbidden,
			Message: fmt.Sprintf("cannot tell whether pid %d is one of forkd's workers, which may not use the control API: %v", c.cred.pid, err)}
	}
	switch {
	case !worker:
		return nil
	case s.workerAccess == WorkerAccessStatus && readOnly:
		return nil
	case s.workerAccess == WorkerAccessStatus:
		return &Error{Code: http.StatusForbidden, Message: fmt.Sprintf(
			"forkd's workers may only read its status (%s = %q), and %s: set %s = %q in forkd's config to let workers control forkd",
			WorkerAccessOption, WorkerAccessStatus, reason, WorkerAccessOption, WorkerAccessFull)}
	}
	return &Error{Code: http.StatusForbidden, Message: fmt.Sprintf(
		"forkd's control API refuses its own workers and their descendants, and %s: application code may not control its supervisor. "+
			"Set %s = %q in forkd's config to let workers read the status (%q: control forkd too)",
		reason, WorkerAccessOption, WorkerAccessStatus, WorkerAccessFull)}
}

// kinship asks w once per connection whether its peer is a worker. A failed question is asked
// again by the next request.
func (c *conn) kinship(ctx context.Context, w Workers) (worker bool, reason string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.checked {
		return c.worker, c.reason, nil
	}
	if c.cred.err != nil {
		return false, "", c.cred.err
	}
	// SO_PEERCRED gives the PID the peer had at connect(2). Pin that process with a pidfd, so that
	// an answer about a PID the kernel has since given to another process is not taken for one
	// about the peer.
	pidfd := peerPIDFD(c.Conn)
	if pidfd >= 0 {
		defer unix.Close(pidfd)
	}
	ctx, cancel := context.WithTimeout(ctx, kinshipTimeout)
	defer cancel()
	worker, reason, err = w.IsWorker(ctx, c.cred.pid)
	if err != nil {
		return false, "", err
	}
	if pidfd >= 0 && errors.Is(unix.PidfdSendSignal(pidfd, 0, nil, 0), unix.ESRCH) {
		return false, "", fmt.Errorf("pid %d has exited", c.cred.pid)
	}
	c.checked, c.worker, c.reason = true, worker, reason
	return worker, reason, nil
}

// soPeerPIDFD is SO_PEERPIDFD (Linux 6.5), which golang.org/x/sys/unix does not name yet.
const soPeerPIDFD = 77

// peerPIDFD returns a pidfd for the process that connected c, or -1 where the kernel has none
// (before Linux 6.5).
func peerPIDFD(c net.Conn) int {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return -1
	}
	pidfd := -1
	fds.Control(sc, func(fd int) {
		if n, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, soPeerPIDFD); err == nil {
			pidfd = n
		}
	})
	return pidfd
}
