// Package activation implements the socket side of the sd_listen_fds(3) protocol for forkd, in both
// directions: the master takes its listening sockets from systemd (FromSystemd) or binds them from
// its config (Bind), and hands the same sockets to every worker as fds 3, 4, ... with LISTEN_FDS,
// LISTEN_FDNAMES and LISTEN_PID set, so any program that calls sd_listen_fds(3) or go-systemd's
// activation.Listeners works as a forkd worker unmodified.
//
// https://www.freedesktop.org/software/systemd/man/latest/sd_listen_fds.html
//
// The master holds each socket as a raw file descriptor (Listener.FD), created close-on-exec, and
// never accepts on it: the workers do. It never wraps one in an *os.File or a net.Listener either:
// os.File.Fd puts a socket into blocking mode, and O_NONBLOCK lives in the open file description
// that the master shares with every worker, so one call would change every worker's socket.
//
// LISTEN_PID must name the worker itself, which only the worker can know: package shim sets it, in
// the worker, before it execs the app. A master spawns a worker like this (error handling elided):
//
//	listeners, activated, err := activation.Open(specs)
//	defer activation.CloseAll(listeners)
//	argv := shim.Argv("/proc/self/exe", app)
//	pid, _, err := syscall.StartProcess(argv[0], argv, &syscall.ProcAttr{
//		Env:   append(workerEnv, activation.WorkerEnv(listeners)...),
//		Files: append([]uintptr{0, 1, 2}, activation.WorkerFiles(listeners)...),
//	})
package activation

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ListenFDsStart is the first file descriptor passed by the protocol (SD_LISTEN_FDS_START).
const ListenFDsStart = 3

// The environment variables of the protocol.
const (
	// EnvListenPID names the process the sockets are meant for. A process that finds another PID
	// there inherited the variables by accident and must ignore them.
	EnvListenPID = "LISTEN_PID"
	// EnvListenFDs is the number of sockets passed, starting at ListenFDsStart.
	EnvListenFDs = "LISTEN_FDS"
	// EnvListenFDNames is a colon-separated list with one name per socket.
	EnvListenFDNames = "LISTEN_FDNAMES"
	// EnvWatchdogUSec is the watchdog interval in microseconds (sd_watchdog_enabled(3)).
	EnvWatchdogUSec = "WATCHDOG_USEC"
	// EnvWatchdogPID names the process WATCHDOG_USEC is meant for, like EnvListenPID.
	EnvWatchdogPID = "WATCHDOG_PID"
)

// UnknownName is the name systemd gives a socket when LISTEN_FDNAMES is unset, and the name Bind
// gives a listener whose config has none.
const UnknownName = "unknown"

// Listener is one listening socket owned by the master, handed to every worker.
type Listener struct {
	// Name is the socket's LISTEN_FDNAMES entry: FileDescriptorName= of the systemd socket unit, or
	// the listener's name in forkd's config. Never empty and never contains ':'.
	Name string

	// FD is the master's descriptor for the socket, close-on-exec in the master. A worker gets it as
	// ListenFDsStart plus the listener's index in the slice.
	FD int

	// Network describes the socket as the kernel has it, in net.Dial's vocabulary: "tcp4", "tcp6",
	// "tcp" (an IPv6 socket on the unspecified address that also accepts IPv4), "unix"; for sockets
	// systemd passed, also "udp4", "udp6", "udp", "unixgram" and "unixpacket". It is "" for a socket
	// forkd cannot describe (another family or type, e.g. AF_NETLINK), which is still handed on.
	Network string

	// Address is the bound address: "127.0.0.1:8080", "[::]:8080" (the port the kernel chose when
	// the config said 0), "/run/app.sock", or "@name" for the abstract namespace. It is "" when
	// Network is "".
	Address string
}

// String returns the listener as "name=network://address" for logs.
func (l Listener) String() string {
	return l.Name + "=" + l.Network + "://" + l.Address
}

// Spec is a listening socket for Bind to create, as forkd's config describes one (a listen block,
// a --listen flag).
type Spec struct {
	// Name is the socket's LISTEN_FDNAMES entry; empty means UnknownName.
	Name string
	// Network is "tcp" (dual-stack when the host allows), "tcp4", "tcp6" or "unix".
	Network string
	// Address is host:port for tcp* (an empty host means all addresses), a path (or "@name" for
	// the abstract namespace) for unix.
	Address string
	// Backlog is the listen(2) backlog; zero means DefaultBacklog.
	Backlog int
	// ReusePort sets SO_REUSEPORT (tcp only).
	ReusePort bool
	// Mode is the permission of a unix socket's file; zero means DefaultSocketMode.
	Mode os.FileMode
}

// Defaults of a Spec's zero fields.
const (
	DefaultBacklog    = 1024
	DefaultSocketMode = os.FileMode(0o666)
)

// URL returns the spec as --listen writes it: "tcp://127.0.0.1:8080", "unix:///run/app.sock".
func (s Spec) URL() string { return s.Network + "://" + s.Address }

// Open returns the sockets systemd passed, or binds ls when it passed none. activated reports
// which: when it is true, ls was ignored (the systemd socket unit decides what forkd listens on).
//
// It returns one of the following:
//   - (listeners, true, nil): forkd was socket-activated; see FromSystemd.
//   - (listeners, false, nil): forkd was not socket-activated and bound ls; see Bind.
//   - (nil, false, err): the sockets systemd passed are unusable (they are left open,
//     close-on-exec), or binding ls failed (nothing is left open).
func Open(ls []Spec) (listeners []Listener, activated bool, err error) {
	listeners, err = FromSystemd()
	if err != nil {
		return nil, false, err
	}
	if listeners != nil {
		return listeners, true, nil
	}
	listeners, err = Bind(ls)
	if err != nil {
		return nil, false, err
	}
	return listeners, false, nil
}

// CloseAll closes the master's descriptor of every listener. Errors are ignored: there is nothing
// left to do with a socket that fails to close.
//
// It does not remove unix socket files. Workers may still be serving on the sockets (the master
// closes its copies while they drain), and the next Bind removes a stale file by itself.
func CloseAll(ls []Listener) {
	for _, l := range ls {
		_ = syscall.Close(l.FD)
	}
}

// WorkerEnv returns the variables to add to a worker's environment: "LISTEN_FDS=n" and
// "LISTEN_FDNAMES=a:b". LISTEN_PID is not among them: package shim sets it in the worker itself. It
// returns nil when ls is empty, so the worker sees no LISTEN_* variables at all.
func WorkerEnv(ls []Listener) []string {
	if len(ls) == 0 {
		return nil
	}
	names := make([]string, len(ls))
	for i, l := range ls {
		names[i] = l.Name
	}
	return []string{
		EnvListenFDs + "=" + strconv.Itoa(len(ls)),
		EnvListenFDNames + "=" + strings.Join(names, ":"),
	}
}

// WorkerFiles returns the listeners' descriptors in order, to follow stdin, stdout and stderr in
// syscall.ProcAttr.Files so that they become the worker's fds 3, 4, ...
//
// They are raw descriptors on purpose: building an *os.File to use os/exec's ExtraFiles would call
// Fd, which switches a socket to blocking mode for every process sharing it.
//
// A child inherits every descriptor that is not close-on-exec, not only those in Files. So that a
// worker gets its listeners and nothing else, the master must keep everything else close-on-exec,
// including what it inherited itself (close_range(2) with CLOSE_RANGE_CLOEXEC at startup does it).
func WorkerFiles(ls []Listener) []uintptr {
	fds := make([]uintptr, len(ls))
	for i, l := range ls {
		fds[i] = uintptr(l.FD)
	}
	return fds
}
