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
// LISTEN_PID must name the worker itself, and Go cannot set an environment variable between fork
// and exec. So the master starts a worker as ShimArgv("/proc/self/exe", app), with WorkerEnv in its
// environment and WorkerFiles as fds 3, 4, ...; forkd's main calls RunShim first thing when it sees
// ShimArg, and RunShim sets LISTEN_PID to its own PID and execs the app in place, keeping the PID.
//
// A master spawns a worker like this (error handling elided):
//
//	listeners, activated, err := activation.Open(cfg.Listeners)
//	defer activation.CloseAll(listeners)
//	argv := activation.ShimArgv("/proc/self/exe", cfg.Command)
//	pid, _, err := syscall.StartProcess(argv[0], argv, &syscall.ProcAttr{
//		Env:   append(workerEnv, activation.WorkerEnv(listeners)...),
//		Files: append([]uintptr{0, 1, 2}, activation.WorkerFiles(listeners)...),
//	})
//
// and forkd's main begins with:
//
//	if len(os.Args) > 1 && os.Args[1] == activation.ShimArg {
//		activation.RunShim(os.Args[2:])
//	}
package activation

import (
	"strconv"
	"strings"
	"syscall"

	"github.com/forkd/forkd/pkg/config"
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

// Exit statuses of a shim that could not exec the app, as a shell reports them.
const (
	// ShimExitNotFound: the command does not exist (not in PATH, or no such file).
	ShimExitNotFound = 127
	// ShimExitCannotExec: the command exists but cannot be executed (permission, format), or the
	// shim was started without the descriptors its LISTEN_FDS announces.
	ShimExitCannotExec = 126
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

// Open returns the sockets systemd passed, or binds ls when it passed none. activated reports
// which: when it is true, ls was ignored (the systemd socket unit decides what forkd listens on).
//
// It returns one of the following:
//   - (listeners, true, nil): forkd was socket-activated; see FromSystemd.
//   - (listeners, false, nil): forkd was not socket-activated and bound ls; see Bind.
//   - (nil, false, err): the sockets systemd passed are unusable (they are left open,
//     close-on-exec), or binding ls failed (nothing is left open).
func Open(ls []config.Listener) (listeners []Listener, activated bool, err error) {
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
// "LISTEN_FDNAMES=a:b". LISTEN_PID is not among them: RunShim sets it in the worker itself. It
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

// ShimArg is the argument that turns forkd into the worker shim: forkd's main calls
// RunShim(os.Args[2:]) before anything else when os.Args[1] is ShimArg. It is spelled so that no
// forkd subcommand or app argument is likely to collide with it.
const ShimArg = "__forkd-shim"

// ShimArgv returns the argv that starts app through the shim: self, ShimArg, then app. self is
// forkd's own executable; "/proc/self/exe" is the best choice, because the kernel resolves it to the
// running binary even after a package upgrade has replaced the file on disk, so the shim always
// matches the master that spawns it.
func ShimArgv(self string, app []string) []string {
	argv := make([]string, 0, 2+len(app))
	argv = append(argv, self, ShimArg)
	return append(argv, app...)
}
