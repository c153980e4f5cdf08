package metrics

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// ReadBacklog reads the accept queue of the listening socket fd: the connections the kernel has
// completed and no worker has accepted yet, and the most it holds (listen(2)'s backlog, capped
// by net.core.somaxconn). For TCP it is TCP_INFO, whose tcpi_unacked and tcpi_sacked carry these
// two on a listening socket; for a unix stream or seqpacket socket, sock_diag's
// UNIX_DIAG_RQLEN. It does not change the socket, nor its blocking mode.
func ReadBacklog(fd int) (Backlog, error) {
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return Backlog{}, fmt.Errorf("metrics: listen backlog: %w", err)
	}
	if listening == 0 {
		return Backlog{}, errors.New("metrics: listen backlog: the socket is not listening")
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return Backlog{}, fmt.Errorf("metrics: listen backlog: %w", err)
	}
	switch domain {
	case unix.AF_INET, unix.AF_INET6:
		protocol, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
		if err != nil || protocol != unix.IPPROTO_TCP {
			return Backlog{}, ErrBacklogUnavailable // SCTP, MPTCP: not TCP_INFO's
		}
		info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return Backlog{}, fmt.Errorf("metrics: listen backlog: TCP_INFO: %w", err)
		}
		return Backlog{Queued: uint64(info.Unacked), Limit: uint64(info.Sacked)}, nil
	case unix.AF_UNIX:
		return unixBacklog(fd)
	}
	return Backlog{}, ErrBacklogUnavailable
}

// sock_diag for unix sockets (linux/unix_diag.h), which x/sys/unix does not define.
const (
	udiagShowRQLen = 0x10 // UDIAG_SHOW_RQLEN
	unixDiagRQLen  = 4    // UNIX_DIAG_RQLEN
	tcpListen      = 10   // TCP_LISTEN, the state of a listening unix socket too
	// sizeofUnixDiagReq is struct unix_diag_req: family, protocol, pad (u8, u8, u16), states,
	// inode, show, cookie[2] (u32 each).
	sizeofUnixDiagReq = 24
	// sizeofUnixDiagMsg is struct unix_diag_msg: family, type, state, pad, inode, cookie[2].
	sizeofUnixDiagMsg = 16
)

// unixBacklog asks sock_diag about the unix socket fd, by inode: for a listening socket,
// UNIX_DIAG_RQLEN's rqueue is the connections waiting to be accepted, wqueue the backlog.
func unixBacklog(fd int) (Backlog, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Backlog{}, fmt.Errorf("metrics: listen backlog: %w", err)
	}
	nl, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return Backlog{}, fmt.Errorf("%w: sock_diag: %v", ErrBacklogUnavailable, err)
	}
	defer unix.Close(nl)

	req := make([]byte, unix.SizeofNlMsghdr+sizeofUnixDiagReq)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST)
	ne.PutUint32(req[8:], 1) // sequence number
	body := req[unix.SizeofNlMsghdr:]
	body[0] = unix.AF_UNIX
	ne.PutUint32(body[4:], 1<<tcpListen)
	ne.PutUint32(body[8:], uint32(st.Ino))
	ne.PutUint32(body[12:], udiagShowRQLen)
	ne.PutUint32(body[16:], ^uint32(0)) // no cookie to check (INET_DIAG_NOCOOKIE)
	ne.PutUint32(body[20:], ^uint32(0))
	if err := unix.Sendto(nl, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return Backlog{}, fmt.Errorf("%w: sock_diag: %v", ErrBacklogUnavailable, err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(nl, buf, 0)
	if err != nil {
		return Backlog{}, fmt.Errorf("%w: sock_diag: %v", ErrBacklogUnavailable, err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return Backlog{}, fmt.Errorf("metrics: listen backlog: sock_diag: %w", err)
	}
	for _, m := range msgs {
		switch m.Header.Type {
		case unix.NLMSG_ERROR:
			if len(m.Data) >= 4 {
				if errno := int32(ne.Uint32(m.Data)); errno != 0 {
					return Backlog{}, fmt.Errorf("%w: sock_diag: %v", ErrBacklogUnavailable, unix.Errno(-errno))
				}
			}
		case unix.SOCK_DIAG_BY_FAMILY:
			if len(m.Data) < sizeofUnixDiagMsg {
				continue
			}
			// The attributes: struct rtattr {u16 len; u16 type}, then the value, each padded
			// to 4 bytes.
			for a := m.Data[sizeofUnixDiagMsg:]; len(a) >= 4; {
				alen, atype := int(ne.Uint16(a)), ne.Uint16(a[2:])
				if alen < 4 || alen > len(a) {
					break
				}
				if atype == unixDiagRQLen && alen >= 12 {
					return Backlog{Queued: uint64(ne.Uint32(a[4:])), Limit: uint64(ne.Uint32(a[8:]))}, nil
				}
				a = a[min((alen+3)&^3, len(a)):]
			}
		}
	}
	return Backlog{}, fmt.Errorf("%w: sock_diag sent no queue length", ErrBacklogUnavailable)
}
