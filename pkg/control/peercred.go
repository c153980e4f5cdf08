package control

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/fds"
)

// peerCred is who is on the other end of a connection, from SO_PEERCRED: the credentials the
// client had when it called connect(2), which it cannot forge or change afterwards.
type peerCred struct {
	uid, gid, pid int
	// err is why the credentials could not be read; the connection is then refused.
	err error
}

func readPeerCred(c net.Conn) peerCred {
	unknown := peerCred{uid: -1, gid: -1, pid: -1}
	sc, ok := c.(syscall.Conn)
	if !ok {
		unknown.err = fmt.Errorf("control: a %T carries no peer credentials", c)
		return unknown
	}
	var cred *unix.Ucred
	var credErr error
	err := fds.Control(sc, func(fd int) {
		cred, credErr = unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err == nil {
		err = credErr
	}
	if err != nil {
		unknown.err = fmt.Errorf("control: SO_PEERCRED: %w", err)
		return unknown
	}
	return peerCred{uid: int(cred.Uid), gid: int(cred.Gid), pid: int(cred.Pid)}
}
