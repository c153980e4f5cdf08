package activation

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// MaxListenFDs bounds LISTEN_FDS, keeping ListenFDsStart+n far from overflowing. No process can
// have more descriptors open anyway (fs.nr_open is at most 2^30).
const MaxListenFDs = 1 << 30

// FromSystemd returns the sockets systemd passed to this process, in order, named after
// LISTEN_FDNAMES (UnknownName for each when it is unset, as systemd does).
//
// Like sd_listen_fds(3) with unset_environment set, it always removes LISTEN_PID, LISTEN_FDS and
// LISTEN_FDNAMES from the environment, whatever it returns, so that they cannot reach a child by
// accident. It marks every passed descriptor close-on-exec: workers get them through WorkerFiles.
//
// It returns one of the following:
//   - (nil, nil): not socket-activated. LISTEN_PID is unset, empty or names another process (the
//     variables were inherited from an ancestor and are not meant for us), or LISTEN_FDS is unset,
//     empty or 0. No descriptor is touched.
//   - (listeners, nil): socket-activated; Network and Address describe each socket as the kernel
//     has it (getsockname(2), SO_DOMAIN, SO_TYPE).
//   - (nil, err): the variables are meant for this process but malformed (LISTEN_PID or LISTEN_FDS
//     not a number, LISTEN_FDNAMES with the wrong number of names), a passed descriptor is not
//     open, is not a socket, or is a stream socket that is not listening (Accept=yes in the socket
//     unit hands over connections, which forkd cannot share between workers). The passed
//     descriptors are left open, close-on-exec.
func FromSystemd() ([]Listener, error) {
	defer func() {
		_ = os.Unsetenv(EnvListenPID)
		_ = os.Unsetenv(EnvListenFDs)
		_ = os.Unsetenv(EnvListenFDNames)
	}()

	count, names, err := listenEnv(os.Getenv(EnvListenPID), os.Getenv(EnvListenFDs), os.Getenv(EnvListenFDNames), os.Getpid())
	if err != nil || count == 0 {
		return nil, err
	}

	// Close-on-exec first, for all of them, so that none leaks into a child even if a later one is
	// rejected.
	for fd := ListenFDsStart; fd < ListenFDsStart+count; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			return nil, fmt.Errorf("activation: LISTEN_FDS=%d but fd %d is unusable: %w", count, fd, err)
		}
	}

	listeners := make([]Listener, count)
	for i := range listeners {
		fd := ListenFDsStart + i
		if err := checkPassedSocket(fd); err != nil {
			return nil, fmt.Errorf("activation: fd %d (%q) from systemd: %w", fd, names[i], err)
		}
		network, address, err := describeSocket(fd)
		if err != nil {
			return nil, fmt.Errorf("activation: fd %d (%q) from systemd: %w", fd, names[i], err)
		}
		listeners[i] = Listener{Name: names[i], FD: fd, Network: network, Address: address}
	}
	return listeners, nil
}

// listenEnv interprets the protocol's variables for the process pid. count is 0 when they are not
// meant for it.
func listenEnv(listenPID, listenFDs, listenFDNames string, pid int) (count int, names []string, err error) {
	if listenPID == "" {
		return 0, nil, nil
	}
	target, err := strconv.Atoi(listenPID)
	if err != nil || target <= 0 {
		return 0, nil, fmt.Errorf("activation: LISTEN_PID=%q is not a PID", listenPID)
	}
	if target != pid {
		return 0, nil, nil
	}
	if listenFDs == "" {
		return 0, nil, nil
	}
	count, err = strconv.Atoi(listenFDs)
	if err != nil || count < 0 || count > MaxListenFDs {
		return 0, nil, fmt.Errorf("activation: LISTEN_FDS=%q is not a count of descriptors", listenFDs)
	}
	if count == 0 {
		return 0, nil, nil
	}

	names = make([]string, count)
	if listenFDNames == "" {
		for i := range names {
			names[i] = UnknownName
		}
		return count, names, nil
	}
	given := strings.Split(listenFDNames, ":")
	if len(given) != count {
		return 0, nil, fmt.Errorf("activation: LISTEN_FDNAMES has %d names for LISTEN_FDS=%d descriptors", len(given), count)
	}
	for i, name := range given {
		// systemd never passes an empty name; treat one like a missing one rather than hand
		// workers an empty LISTEN_FDNAMES entry.
		if name == "" {
			name = UnknownName
		}
		names[i] = name
	}
	return count, names, nil
}

// checkPassedSocket rejects a passed descriptor that workers could not serve on.
func checkPassedSocket(fd int) error {
	if err := CheckSocket(fd); err != nil {
		return err
	}
	sotype, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("getsockopt SO_TYPE: %w", err)
	}
	if sotype == unix.SOCK_STREAM || sotype == unix.SOCK_SEQPACKET {
		listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return fmt.Errorf("getsockopt SO_ACCEPTCONN: %w", err)
		}
		if listening == 0 {
			return errors.New("is a connection, not a listening socket (Accept=yes in the socket unit?)")
		}
	}
	return nil
}

// CheckSocket reports an error, phrased to follow "fd N", unless fd is an open socket: "is not
// open: bad file descriptor", "is a regular file, not a socket".
func CheckSocket(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("is not open: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("is %s, not a socket", fileType(st.Mode))
	}
	return nil
}

func fileType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "a regular file"
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFIFO:
		return "a pipe"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFLNK:
		return "a symbolic link"
	default:
		return fmt.Sprintf("file type %#o", mode&unix.S_IFMT)
	}
}

// describeSocket returns a socket's network, in net.Dial's vocabulary, and its bound address, or
// ("", "") for a family or type outside that vocabulary.
func describeSocket(fd int) (network, address string, err error) {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return "", "", fmt.Errorf("getsockopt SO_DOMAIN: %w", err)
	}
	sotype, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return "", "", fmt.Errorf("getsockopt SO_TYPE: %w", err)
	}
	if domain != unix.AF_INET && domain != unix.AF_INET6 && domain != unix.AF_UNIX {
		return "", "", nil
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "", "", fmt.Errorf("getsockname: %w", err)
	}

	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		base, ok := inetBase(sotype)
		if !ok {
			return "", "", nil
		}
		return base + "4", netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String(), nil

	case *unix.SockaddrInet6:
		base, ok := inetBase(sotype)
		if !ok {
			return "", "", nil
		}
		addr := netip.AddrFrom16(sa.Addr)
		if sa.ZoneId != 0 {
			addr = addr.WithZone(zoneName(sa.ZoneId))
		}
		address = netip.AddrPortFrom(addr, uint16(sa.Port)).String()
		// Only a socket on [::] that is not IPv6-only also takes IPv4 connections; that is what
		// Go (and forkd's config) calls plain "tcp".
		v6only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
		if err != nil {
			return "", "", fmt.Errorf("getsockopt IPV6_V6ONLY: %w", err)
		}
		if v6only == 0 && addr.IsUnspecified() {
			return base, address, nil
		}
		return base + "6", address, nil

	case *unix.SockaddrUnix:
		// x/sys/unix already spells an abstract address with a leading '@'.
		switch sotype {
		case unix.SOCK_STREAM:
			return "unix", sa.Name, nil
		case unix.SOCK_DGRAM:
			return "unixgram", sa.Name, nil
		case unix.SOCK_SEQPACKET:
			return "unixpacket", sa.Name, nil
		}
		return "", "", nil
	}
	return "", "", nil
}

func inetBase(sotype int) (string, bool) {
	switch sotype {
	case unix.SOCK_STREAM:
		return "tcp", true
	case unix.SOCK_DGRAM:
		return "udp", true
	}
	return "", false
}

func zoneName(index uint32) string {
	if ifi, err := net.InterfaceByIndex(int(index)); err == nil {
		return ifi.Name
	}
	return strconv.FormatUint(uint64(index), 10)
}
