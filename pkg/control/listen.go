package control

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// socketMode is the control socket's file mode. Only the test of the peer-credential check widens
// it, so that a client with another uid gets as far as the check.
var socketMode uint32 = 0o600

// probeTimeout bounds the connect to an existing socket file. A unix connect either succeeds or
// fails at once unless the listener's backlog is full, which a wedged forkd could cause.
const probeTimeout = 2 * time.Second

// Listen opens the control socket at path and returns its listener.
//
// It creates path's parent directory (mode 0755) if it is missing. If path exists, it must be a
// socket nobody listens on, left behind by a forkd that died, and it is removed; Listen refuses a
// path on which a process answers (an error matching ErrAlreadyRunning) and a path that is not a
// socket. The socket file has mode 0600: Listen binds, chmods and only then listens, so the socket
// never accepts a connection with a wider mode. The descriptor is close-on-exec, and closing the
// listener removes the socket file; a hot restart that hands the descriptor to a new image must
// therefore not Close the listener (or must first call SetUnlinkOnClose(false) on it).
func Listen(path string) (net.Listener, error) {
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("control: socket path %s is too long (%d bytes, at most %d)",
			path, len(path), len(unix.RawSockaddrUnix{}.Path)-1)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}

	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control: socket: %w", err)
	}
	// From here on the descriptor is owned by file, and closing file closes it.
	file := os.NewFile(uintptr(fd), path)
	defer file.Close()

	// bind creates the file with the process's umask, which may leave it world-writable, but a
	// unix socket refuses connections until listen, so chmod before listen closes that window.
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return nil, fmt.Errorf("control: bind %s: %w", path, err)
	}
	if err := unix.Chmod(path, socketMode); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("control: chmod %s: %w", path, err)
	}
	if err := unix.Listen(fd, unix.SOMAXCONN); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("control: listen on %s: %w", path, err)
	}

	// FileListener dups the descriptor (close-on-exec again); the deferred Close drops ours.
	l, err := net.FileListener(file)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("control: %w", err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		os.Remove(path)
		return nil, fmt.Errorf("control: %s: unexpected listener type %T", path, l)
	}
	// A listener made from a file does not remove its socket on Close by default.
	ul.SetUnlinkOnClose(true)
	return ul, nil
}

// removeStaleSocket makes path free for bind: it removes a socket file nobody listens on and
// refuses anything else that is there.
func removeStaleSocket(path string) error {
	info, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	if info.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control: %s exists and is not a socket; remove it or choose another control socket path", path)
	}

	conn, err := net.DialTimeout("unix", path, probeTimeout)
	if err == nil {
		conn.Close()
		return fmt.Errorf("%w on %s", ErrAlreadyRunning, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control: cannot tell whether %s is in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("control: removing stale socket: %w", err)
	}
	return nil
}
