package protocol

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/fds"
	"github.com/forkd/forkd/internal/recvpool"
)

// Conn is one end of a control channel: a SOCK_SEQPACKET unix socket on which every packet is one
// message. Receive and Send may be used from different goroutines; Close unblocks a Receive.
type Conn struct {
	c *net.UnixConn
}

// receiveBuffers lends every Conn's Receive its buffers, only while it reads a packet: the master
// waits on one channel per worker.
var receiveBuffers = recvpool.New(MaxMessageSize+1, unix.CmsgSpace(4*4))

// Socketpair creates a control channel. The master keeps the first end as a Conn; the second is a
// raw close-on-exec descriptor for the worker, to pass at exec (syscall.ProcAttr.Files) or in a
// spawn request, and then to close.
func Socketpair() (master *Conn, worker int, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, fmt.Errorf("protocol: socketpair: %w", err)
	}
	master, err = NewConn(fds[0])
	if err != nil {
		unix.Close(fds[1])
		return nil, -1, err
	}
	return master, fds[1], nil
}

// NewConn takes ownership of fd, a SOCK_SEQPACKET socket, and returns it as a Conn served by Go's
// poller, so a goroutine blocked in Receive holds no thread.
func NewConn(fd int) (*Conn, error) {
	f := os.NewFile(uintptr(fd), "forkd-control")
	defer f.Close() // FileConn dups it
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("protocol: control channel: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("protocol: control channel is a %T, not a unix socket", c)
	}
	return &Conn{c: uc}, nil
}

// Send writes one message, with fds passed as SCM_RIGHTS (a spawn request carries exactly one).
func (c *Conn) Send(m Message, fds ...int) error {
	b, err := Encode(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.c.WriteMsgUnix(b, oob, nil); err != nil {
		return fmt.Errorf("protocol: send %s: %w", m.Op, err)
	}
	return nil
}

// Received is one packet from the peer: the decoded message or why it could not be, and the
// descriptors that came with it (close-on-exec; the caller owns them).
type Received struct {
	Message Message
	Err     error
	FDs     []int
}

// Receive waits for the next packet. It returns io.EOF when the peer has closed its end (or
// exited), and an error matching net.ErrClosed after Close. A packet that does not decode is not an
// error of Receive: it comes back with Received.Err set.
func (c *Conn) Receive() (Received, error) {
	m, err := receiveBuffers.Recv(c.c)
	if err != nil {
		if errors.Is(err, syscall.ECONNRESET) {
			return Received{}, io.EOF
		}
		return Received{}, fmt.Errorf("protocol: receive: %w", err)
	}
	var r Received
	n, flags := len(m.Data), m.Flags
	r.FDs = parseRights(m.OOB)
	if flags&unix.MSG_CTRUNC != 0 {
		r.Err = fmt.Errorf("%w: too many descriptors", ErrMalformed)
	}
	if n == 0 && len(m.OOB) == 0 {
		// A zero-length read on a SOCK_SEQPACKET socket is the peer's end of file.
		return Received{}, io.EOF
	}
	if flags&unix.MSG_TRUNC != 0 || n > MaxMessageSize {
		r.Err = fmt.Errorf("%w: larger than %d bytes", ErrMalformed, MaxMessageSize)
		return r, nil
	}
	msg, err := Decode(m.Data)
	r.Message = msg
	if r.Err == nil {
		r.Err = err
	}
	return r, nil
}

func parseRights(oob []byte) []int {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var fds []int
	for i := range msgs {
		if passed, err := unix.ParseUnixRights(&msgs[i]); err == nil {
			fds = append(fds, passed...)
		}
	}
	return fds
}

// FD returns the channel's descriptor, which stays the Conn's: for handing the channel over to a
// new image of the master across exec (after clearing close-on-exec), never to close.
func (c *Conn) FD() (int, error) { return fds.Raw(c.c) }

// Close closes this end; the peer's next Receive returns io.EOF.
func (c *Conn) Close() error { return c.c.Close() }
