package activation

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// maxUnixPath is the longest unix socket path, leaving room for the terminating NUL in sun_path.
const maxUnixPath = len(unix.RawSockaddrUnix{}.Path) - 1

// Bind creates a listening socket for each of ls, in order, the way a systemd socket unit would:
//
//   - "tcp4", "tcp6" and "tcp" listeners set SO_REUSEADDR (so a restarted forkd can bind while old
//     connections linger in TIME_WAIT) and SO_REUSEPORT when ReusePort is set. "tcp6" is
//     IPv6-only. "tcp" with an empty host (":8080") or "[::]" listens on [::] for IPv6 and IPv4
//     both, or on 0.0.0.0 when the host has no IPv6. A host name is resolved, preferring IPv4 as
//     net.Listen does. Port 0 lets the kernel choose; Address reports the port it chose.
//   - "unix" listeners take a path, or "@name" for the abstract namespace. A socket file left
//     behind at the path by a process that is gone is removed first. The file gets Mode (zero
//     means DefaultSocketMode) before the socket listens, so that no client can connect
//     while it is more open than configured.
//   - Backlog is the listen(2) backlog; zero means DefaultBacklog.
//   - An empty Name becomes UnknownName. Names must be LISTEN_FDNAMES entries as systemd accepts
//     them: at most 255 printable ASCII characters, no ':'.
//
// Every socket is close-on-exec and in blocking mode, as systemd passes them: the master never
// accepts, and each worker sets the mode it wants (for all of them, since they share the socket).
//
// It returns one of the following:
//   - (listeners, nil): one Listener per entry of ls; for an empty ls, an empty slice.
//   - (nil, err): a listener is invalid or could not be bound. The error names it, and wraps the
//     system call's errno (errors.Is(err, syscall.EADDRINUSE) when its address is taken, including
//     a unix socket another process listens on). A unix path that exists and is not a socket is
//     refused and left alone. Every socket this call opened is closed again, and every socket file
//     it created is removed.
func Bind(ls []Spec) ([]Listener, error) {
	listeners := make([]Listener, 0, len(ls))
	var createdFiles []string
	succeeded := false
	defer func() {
		if !succeeded {
			CloseAll(listeners)
			for _, path := range createdFiles {
				_ = os.Remove(path)
			}
		}
	}()

	for _, l := range ls {
		name, err := listenerName(l.Name)
		if err != nil {
			return nil, fmt.Errorf("activation: listener %q: %w", l.Name, err)
		}
		var fd int
		var createdFile string
		switch l.Network {
		case "tcp", "tcp4", "tcp6":
			fd, err = bindTCP(l)
		case "unix":
			fd, createdFile, err = bindUnix(l)
		default:
			err = fmt.Errorf("unsupported network %q (want tcp, tcp4, tcp6 or unix)", l.Network)
		}
		if err != nil {
			return nil, fmt.Errorf("activation: listener %q (%s): %w", name, l.URL(), err)
		}
		listeners = append(listeners, Listener{Name: name, FD: fd})
		if createdFile != "" {
			createdFiles = append(createdFiles, createdFile)
		}

		network, address, err := describeSocket(fd)
		if err != nil {
			return nil, fmt.Errorf("activation: listener %q (%s): %w", name, l.URL(), err)
		}
		listeners[len(listeners)-1].Network = network
		listeners[len(listeners)-1].Address = address
	}
	succeeded = true
	return listeners, nil
}

// listenerName checks a name against systemd's rules for LISTEN_FDNAMES entries (fdname_is_valid).
func listenerName(name string) (string, error) {
	if name == "" {
		return UnknownName, nil
	}
	if len(name) > 255 {
		return "", errors.New("name longer than 255 bytes")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < ' ' || c > '~' || c == ':' {
			return "", errors.New("names must be printable ASCII without ':' (they are joined with ':' in LISTEN_FDNAMES)")
		}
	}
	return name, nil
}

func backlog(l Spec) int {
	if l.Backlog <= 0 {
		return DefaultBacklog
	}
	return l.Backlog
}

func bindTCP(l Spec) (int, error) {
	addr, err := net.ResolveTCPAddr(l.Network, l.Address)
	if err != nil {
		return -1, err
	}
	ip4 := addr.IP.To4()
	switch {
	case addr.IP == nil && l.Network == "tcp":
		fd, err := listenTCP(unix.AF_INET6, &unix.SockaddrInet6{Port: addr.Port}, false, l.ReusePort, backlog(l))
		if errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.EADDRNOTAVAIL) {
			// The kernel has no IPv6 (ipv6.disable=1): IPv4 alone is all "tcp" can mean here.
			return listenTCP(unix.AF_INET, &unix.SockaddrInet4{Port: addr.Port}, false, l.ReusePort, backlog(l))
		}
		return fd, err
	case addr.IP == nil && l.Network == "tcp4":
		return listenTCP(unix.AF_INET, &unix.SockaddrInet4{Port: addr.Port}, false, l.ReusePort, backlog(l))
	case addr.IP == nil && l.Network == "tcp6":
		return listenTCP(unix.AF_INET6, &unix.SockaddrInet6{Port: addr.Port}, true, l.ReusePort, backlog(l))
	case ip4 != nil && l.Network != "tcp6":
		sa := &unix.SockaddrInet4{Port: addr.Port}
		copy(sa.Addr[:], ip4)
		return listenTCP(unix.AF_INET, sa, false, l.ReusePort, backlog(l))
	default:
		sa := &unix.SockaddrInet6{Port: addr.Port}
		copy(sa.Addr[:], addr.IP.To16())
		if addr.Zone != "" {
			sa.ZoneId, err = zoneIndex(addr.Zone)
			if err != nil {
				return -1, err
			}
		}
		// Plain "tcp" on [::] (spelled out) is dual-stack, as in net.Listen.
		return listenTCP(unix.AF_INET6, sa, l.Network == "tcp6", l.ReusePort, backlog(l))
	}
}

func zoneIndex(zone string) (uint32, error) {
	if ifi, err := net.InterfaceByName(zone); err == nil {
		return uint32(ifi.Index), nil
	}
	index, err := strconv.ParseUint(zone, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("unknown IPv6 zone %q", zone)
	}
	return uint32(index), nil
}

// listenTCP returns a listening TCP socket, or closes what it opened and returns the error.
func listenTCP(family int, sa unix.Sockaddr, v6only, reusePort bool, backlog int) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	if err := setupTCP(fd, family, sa, v6only, reusePort, backlog); err != nil {
		_ = unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func setupTCP(fd, family int, sa unix.Sockaddr, v6only, reusePort bool, backlog int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return os.NewSyscallError("setsockopt SO_REUSEADDR", err)
	}
	if reusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return os.NewSyscallError("setsockopt SO_REUSEPORT", err)
		}
	}
	if family == unix.AF_INET6 {
		// Always set, both ways: the default comes from the net.ipv6.bindv6only sysctl.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, boolInt(v6only)); err != nil {
			return os.NewSyscallError("setsockopt IPV6_V6ONLY", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return os.NewSyscallError("bind", err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		return os.NewSyscallError("listen", err)
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// bindUnix returns a listening unix stream socket and the socket file it created ("" for an
// abstract address), or cleans up after itself and returns the error.
func bindUnix(l Spec) (int, string, error) {
	if l.ReusePort {
		return -1, "", errors.New("reuse_port applies to tcp listeners only")
	}
	path := l.Address
	abstract := strings.HasPrefix(path, "@")
	switch {
	case path == "" || path == "@":
		return -1, "", errors.New("empty unix socket address")
	case len(path) > maxUnixPath:
		return -1, "", fmt.Errorf("unix socket address longer than %d bytes", maxUnixPath)
	}
	if !abstract {
		if err := removeStaleSocket(path); err != nil {
			return -1, "", err
		}
	}

	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, "", os.NewSyscallError("socket", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		_ = unix.Close(fd)
		return -1, "", os.NewSyscallError("bind", err)
	}
	createdFile := ""
	if !abstract {
		createdFile = path
	}
	if err := setupUnix(fd, createdFile, l); err != nil {
		_ = unix.Close(fd)
		if createdFile != "" {
			_ = os.Remove(createdFile)
		}
		return -1, "", err
	}
	return fd, createdFile, nil
}

// setupUnix finishes a bound unix socket: mode, then listen.
func setupUnix(fd int, file string, l Spec) error {
	if file != "" {
		mode := l.Mode.Perm()
		if mode == 0 {
			mode = DefaultSocketMode
		}
		// bind(2) created the file with the umask's permissions. Nobody can connect before
		// listen(2), so fixing them now leaves no window.
		if err := os.Chmod(file, mode); err != nil {
			return err
		}
	}
	if err := unix.Listen(fd, backlog(l)); err != nil {
		return os.NewSyscallError("listen", err)
	}
	return nil
}

// removeStaleSocket makes room for a unix socket at path: it removes a socket file nobody listens
// on, and refuses to touch anything else.
//
// Whether anybody listens is found out by connecting, as systemd and most servers do: the listener
// (if any) sees one connection that closes at once. Between the check and the bind another process
// may take the path; the bind then fails with EADDRINUSE.
func removeStaleSocket(path string) error {
	var st unix.Stat_t
	err := unix.Lstat(path, &st)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return &fs.PathError{Op: "lstat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s exists and is %s, not a socket; refusing to replace it", path, fileType(st.Mode))
	}

	probe, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return os.NewSyscallError("socket", err)
	}
	defer unix.Close(probe)
	err = unix.Connect(probe, &unix.SockaddrUnix{Name: path})
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		// The file outlived its socket.
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing stale socket: %w", err)
		}
		return nil
	case err == nil, errors.Is(err, unix.EAGAIN):
		// Accepted, or queued behind a full backlog: either way somebody listens.
		return fmt.Errorf("%s is in use by another process: %w", path, unix.EADDRINUSE)
	case errors.Is(err, unix.EPROTOTYPE):
		// A live datagram or seqpacket socket is bound there.
		return fmt.Errorf("%s is in use by a socket of another type: %w", path, unix.EADDRINUSE)
	default:
		return fmt.Errorf("checking whether %s is in use: %w", path, os.NewSyscallError("connect", err))
	}
}
