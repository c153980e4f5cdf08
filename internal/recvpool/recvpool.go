// Package recvpool reads one message at a time from a datagram or seqpacket socket into a buffer
// lent from a pool only while a message is there to read. The master has a goroutine waiting on
// each worker's notify socket and control channel; with a buffer of its own each (64 KiB, the
// largest message), 64 workers held 4 MiB of heap that was never touched, and the GC's heap goal,
// twice the live heap, let the garbage of each scrape grow the master's RSS by as much again.
package recvpool

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Pool lends buffers of one size to Recv.
type Pool struct {
	size, oobSize int
	buffers       sync.Pool
	lent          atomic.Int32 // buffers out of the pool now: what the tests hold Recv to
}

type buffers struct{ data, oob []byte }

// New returns a pool whose Recv reads messages of up to size bytes (a longer one is cut short,
// and reported with MSG_TRUNC) with up to oobSize bytes of control data.
func New(size, oobSize int) *Pool {
	p := &Pool{size: size, oobSize: oobSize}
	p.buffers.New = func() any { return &buffers{data: make([]byte, size), oob: make([]byte, oobSize)} }
	return p
}

// Message is one message read: copies of its payload and its control data, and recvmsg(2)'s
// flags (MSG_TRUNC, MSG_CTRUNC).
type Message struct {
	Data, OOB []byte
	Flags     int
}

// Recv waits for c (a *net.UnixConn) to be readable, then reads one message with
// MSG_CMSG_CLOEXEC, so that passed descriptors cannot leak into a child spawned before they are
// closed. Waiting holds no buffer. Errors are those of c's reads: they match net.ErrClosed
// after Close, os.ErrDeadlineExceeded past a read deadline, and the errno of a failed recvmsg.
func (p *Pool) Recv(c syscall.Conn) (Message, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Message{}, err
	}
	var m Message
	var recvErr error
	err = raw.Read(func(fd uintptr) bool {
		b := p.buffers.Get().(*buffers)
		p.lent.Add(1)
		defer func() { p.lent.Add(-1); p.buffers.Put(b) }()
		for {
			n, oobn, flags, _, err := unix.Recvmsg(int(fd), b.data, b.oob, unix.MSG_DONTWAIT|unix.MSG_CMSG_CLOEXEC)
			switch {
			case errors.Is(err, unix.EINTR):
				continue
			case errors.Is(err, unix.EAGAIN):
				return false // not readable after all: wait again
			case err != nil:
				recvErr = os.NewSyscallError("recvmsg", err)
			default:
				m = Message{Data: append([]byte(nil), b.data[:n]...), Flags: flags}
				if oobn > 0 {
					m.OOB = append([]byte(nil), b.oob[:oobn]...)
				}
			}
			return true
		}
	})
	if err != nil {
		return Message{}, err
	}
	return m, recvErr
}
