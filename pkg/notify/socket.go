package notify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/forkd/forkd/internal/fds"
	"github.com/forkd/forkd/internal/recvpool"
)

// Socket is the master's datagram socket that workers get as NOTIFY_SOCKET. Every datagram it
// receives carries its sender's credentials, whether the sender attached them or not.
//
// Receive and Close may be called from different goroutines; concurrent Receive calls each get a datagram of their own.
type Socket struct {
	conn *net.UnixConn
	addr string
	// file is the socket file Close removes; "" for an abstract address.
	file string
}

// receiveBuffers lends every Socket's Receive its buffers, only while it reads a datagram.
var receiveBuffers = recvpool.New(MaxMessageSize+1, oobSize)

// Datagram is one datagram received on a Socket, with its sender's credentials.
type Datagram struct {
	// PID, UID and GID are the sender's, as the kernel saw them when it sent (SCM_CREDENTIALS),
	// translated into this process's namespaces: PID is 0 when the sender is in a PID namespace
	// this process cannot see. The sender may have exited, and its PID been reused, since.
	// When the datagram carried no credentials at all (which SO_PASSCRED rules out), PID is 0
	// and UID and GID are -1.
	PID, UID, GID int

	// Data is the datagram's payload, for Parse. When Truncated is set it holds only the first
	// MaxMessageSize+1 bytes, which Parse rejects as too large.
	Data []byte

	// Truncated reports a datagram larger than MaxMessageSize+1 bytes, cut short on receipt.
	Truncated bool

	// FDs is the number of file descriptors the sender passed with SCM_RIGHTS (FDSTORE=1, or the
	// pipe of BARRIER=1). forkd keeps no file descriptor store: Release closes them all.
	FDs int

	passed []int
}

// Release closes the descriptors passed with the datagram. Call it once the sender has been dealt
// with: a sender using sd_notify_barrier(3) waits until its descriptor is closed, so it is still
// alive, and its PID still names it, until Release. Releasing twice is harmless.
func (d *Datagram) Release() {
	for _, fd := range d.passed {
		_ = syscall.Close(fd)
	}
	d.passed = nil
}

// NewAbstractAddr returns a fresh address in the abstract namespace, "@forkd/<pid>/<random hex>".
// An abstract socket leaves no file behind when forkd dies, and the random part keeps a hot
// restart (same PID) from colliding with the socket it replaces.
func NewAbstractAddr() string {
	var random [8]byte
	_, _ = rand.Read(random[:]) // never fails (crypto/rand.Read crashes the program instead)
	return "@forkd/" + strconv.Itoa(os.Getpid()) + "/" + hex.EncodeToString(random[:])
}

// Listen creates a close-on-exec unixgram socket at addr with SO_PASSCRED set before it is bound,
// so that no datagram ever arrives without credentials. addr is "@name" for the abstract
// namespace, or a path, made absolute (workers run in other directories), that must not exist.
//
// A path socket's file has mode 0600 from the moment it exists (the mode is set on the socket
// before bind(2), so the umask never widens it): only its owner's uid and root may send to it. An
// abstract address has no permissions at all; any local process can send to it, and only the
// sender's UID in each Datagram tells them apart.
//
// It returns one of the following:
//   - (socket, nil): the socket is bound; Addr is the NOTIFY_SOCKET value for workers.
//   - (nil, err): addr is empty, or the socket cannot be created or bound (errors.Is(err,
//     syscall.EADDRINUSE) when the address is taken or the path exists).
func Listen(addr string) (*Socket, error) {
	if addr == "" || addr == "@" {
		return nil, errors.New("notify: listen: empty address")
	}
	file := ""
	if !strings.HasPrefix(addr, "@") {
		abs, err := filepath.Abs(addr)
		if err != nil {
			return nil, fmt.Errorf("notify: listen on %s: %w", addr, err)
		}
		addr, file = abs, abs
	}

	config := net.ListenConfig{
		// Called between socket(2) and bind(2).
		Control: func(network, address string, raw syscall.RawConn) error {
			var err error
			ctrlErr := raw.Control(func(fd uintptr) {
				if err = setPassCred(int(fd)); err == nil && file != "" {
					err = restrictMode(int(fd))
				}
			})
			if ctrlErr != nil {
				return ctrlErr
			}
			return err
		},
	}
	pc, err := config.ListenPacket(context.Background(), "unixgram", addr)
	if err != nil {
		return nil, fmt.Errorf("notify: listen on %s: %w", addr, err)
	}
	return &Socket{
		conn: pc.(*net.UnixConn),
		addr: addr,
		file: file,
	}, nil
}

// Addr returns the socket's address as NOTIFY_SOCKET spells it: an absolute path, or "@name" for
// the abstract namespace.
func (s *Socket) Addr() string { return s.addr }

// FD returns the socket's descriptor, which stays the Socket's: for handing the socket over to a
// new image of the master across exec (after clearing close-on-exec), never to close.
func (s *Socket) FD() (int, error) {
	return fds.Raw(s.conn)
}

// FromFD takes over fd, a socket made by Listen (in a previous image of this process, handed over
// across exec), bound at addr. SO_PASSCRED is set again, in case.
//
// It returns (socket, nil), or (nil, err) when fd is not a unixgram socket.
func FromFD(fd int, addr string) (*Socket, error) {
	if err := setPassCred(fd); err != nil {
		return nil, fmt.Errorf("notify: socket from fd %d: %w", fd, err)
	}
	syscall.CloseOnExec(fd)
	f := os.NewFile(uintptr(fd), "notify")
	defer f.Close() // FilePacketConn dups it
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("notify: socket from fd %d: %w", fd, err)
	}
	uc, ok := pc.(*net.UnixConn)
	if !ok {
		pc.Close()
		return nil, fmt.Errorf("notify: fd %d is a %T, not a unix socket", fd, pc)
	}
	file := ""
	if !strings.HasPrefix(addr, "@") {
		file = addr
	}
	return &Socket{conn: uc, addr: addr, file: file}, nil
}

// Receive waits for the next datagram and returns it. Descriptors passed with it stay open
// (close-on-exec) until the caller calls Release.
//
// It returns one of the following:
//   - (datagram, nil): a datagram arrived. It may be empty, truncated or malformed: Parse decides.
//   - (Datagram{}, err): the socket is closed (errors.Is(err, net.ErrClosed), also when Close is
//     called while Receive waits), or receiving failed.
func (s *Socket) Receive() (Datagram, error) {
	// With MSG_CMSG_CLOEXEC, so that passed descriptors cannot leak into a worker spawned before
	// they are released.
	m, err := receiveBuffers.Recv(s.conn)
	if err != nil {
		return Datagram{}, fmt.Errorf("notify: receive: %w", err)
	}
	d := Datagram{Data: m.Data, Truncated: m.Flags&syscall.MSG_TRUNC != 0}
	d.PID, d.UID, d.GID, d.passed = parseControl(m.OOB)
	d.FDs = len(d.passed)
	return d, nil
}

// SetReadDeadline bounds Receive: until t it returns datagrams as usual, from t on (once waiting
// ones have been woken) it fails with an error matching os.ErrDeadlineExceeded, even if
// datagrams are queued; a zero t clears it. A caller that wants what is still queued before it
// closes the socket sets t a short grace ahead and reads until the error.
func (s *Socket) SetReadDeadline(t time.Time) error {
	return s.conn.SetReadDeadline(t)
}

// Close closes the socket and removes its file, if it has one. A Receive waiting in another
// goroutine returns an error matching net.ErrClosed. Closing a closed socket returns an error
// matching net.ErrClosed too.
func (s *Socket) Close() error {
	if err := s.conn.Close(); err != nil {
		return fmt.Errorf("notify: close: %w", err)
	}
	if s.file != "" {
		if err := os.Remove(s.file); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("notify: close: %w", err)
		}
	}
	return nil
}

// Send sends state as one datagram to addr, a path or "@name": what sd_notify(3) does with
// NOTIFY_SOCKET, for tests and tools (forkd's workers use their language's SDK).
func Send(addr, state string) error {
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify: send to %s: %w", addr, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify: send to %s: %w", addr, err)
	}
	return nil
}

// SendFDs sends state to addr with fds attached (SCM_RIGHTS), as sd_pid_notify_with_fds(3) does:
// "FDSTORE=1\nFDNAME=http" with a listening socket puts it in systemd's file descriptor store, from
// which the service gets it back (LISTEN_FDS) when it starts again.
func SendFDs(addr, state string, fds []int) error {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("notify: send to %s: %w", addr, err)
	}
	defer syscall.Close(fd)
	name := addr
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:]
	}
	if err := syscall.Sendmsg(fd, []byte(state), syscall.UnixRights(fds...), &syscall.SockaddrUnix{Name: name}, 0); err != nil {
		return fmt.Errorf("notify: send to %s: %w", addr, err)
	}
	return nil
}
