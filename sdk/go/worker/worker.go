package worker

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Environment variables forkd sets for each worker, beside systemd's LISTEN_*, NOTIFY_SOCKET and
// WATCHDOG_*.
const (
	// EnvWorker holds the worker's index (slot), 0..n-1. Its presence is what "under forkd" means.
	EnvWorker = "FORKD_WORKER"
	// EnvGeneration holds the code generation the worker runs.
	EnvGeneration = "FORKD_GENERATION"
)

// listenFDsStart is the first passed file descriptor (SD_LISTEN_FDS_START in sd-daemon.h).
const listenFDsStart = 3

// unknownListenerName is the name sd_listen_fds_with_names(3) gives every socket when
// LISTEN_FDNAMES is not set.
const unknownListenerName = "unknown"

// Worker is this process's view of its supervisor: the listeners it was passed, where its
// notifications go, and its place in the forkd cluster. New reads all of it from the environment
// once; the methods are safe for concurrent use.
type Worker struct {
	index      int
	generation int

	// listenFiles are the passed sockets, in fd order, until Listeners converts them; names holds
	// their LISTEN_FDNAMES entries.
	listenFiles []*os.File
	names       []string

	listenOnce sync.Once
	listeners  []net.Listener
	listenErr  error

	notifier notifier
	// watchdog is WATCHDOG_USEC when it applies to this process, or 0.
	watchdog time.Duration
	requests atomic.Uint64

	// masterPID is the parent at New, the forkd master, or 0 when not under forkd.
	masterPID  int
	masterOnce sync.Once
	masterGone chan struct{}

	reportOnce sync.Once
}

// New reads what the supervisor passed this process from the environment, and unsets LISTEN_PID,
// LISTEN_FDS and LISTEN_FDNAMES so that programs this process starts do not take the sockets for
// theirs. The passed file descriptors are marked close-on-exec for the same reason. Call New once,
// early in main: a second call finds no listeners.
//
// Outcomes:
//   - (w, nil) under forkd: Index and Generation are set, Listeners returns the passed sockets,
//     notifications go to the master.
//   - (w, nil) under systemd, or any supervisor speaking sd_listen_fds(3) and sd_notify(3): Index is
//     -1, the rest as above.
//   - (w, nil) with no supervisor: Index is -1, Listeners returns none, notifications are no-ops.
//     Sockets meant for another process (LISTEN_PID is not this process) are left alone, as
//     sd_listen_fds(3) does.
//   - (nil, err): a variable forkd or systemd sets is malformed (LISTEN_FDS, LISTEN_FDNAMES,
//     WATCHDOG_USEC, WATCHDOG_PID, FORKD_WORKER, FORKD_GENERATION), which a real supervisor never
//     does. LISTEN_* are unset even then.
func New() (*Worker, error) {
	w := &Worker{index: -1, masterGone: make(chan struct{})}
	var err error

	if w.listenFiles, w.names, err = takeListenFDs(); err != nil {
		return nil, err
	}
	if w.index, err = intFromEnv(EnvWorker, -1); err != nil {
		return nil, err
	}
	if w.index < -1 {
		return nil, fmt.Errorf("worker: %s=%d: want an index >= 0", EnvWorker, w.index)
	}
	if w.generation, err = intFromEnv(EnvGeneration, 0); err != nil {
		return nil, err
	}
	if w.watchdog, err = watchdogFromEnv(); err != nil {
		return nil, err
	}
	w.notifier = newNotifier(os.Getenv("NOTIFY_SOCKET"))
	if w.index >= 0 {
		// forkd's master is the worker's parent: exec mode starts the app in place of a shim
		// forked by the master, and the master is a subreaper for everything else.
		w.masterPID = os.Getppid()
	}
	return w, nil
}

// Index returns the worker's index (slot) in its forkd cluster, 0..n-1, or -1 when not running
// under forkd.
func (w *Worker) Index() int { return w.index }

// Generation returns the code generation the worker runs, counted by forkd's master across phased
// and hot restarts, or 0 when not running under forkd.
func (w *Worker) Generation() int { return w.generation }

// takeListenFDs implements sd_listen_fds_with_names(3) with unset_environment: it returns the
// passed sockets as files (close-on-exec) and their names, or none when LISTEN_PID is not this
// process.
func takeListenFDs() ([]*os.File, []string, error) {
	pidText, countText, namesText := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")

	if pidText == "" || countText == "" {
		return nil, nil, nil
	}
	pid, err := strconv.Atoi(pidText)
	if err != nil {
		return nil, nil, fmt.Errorf("worker: LISTEN_PID=%q: %w", pidText, err)
	}
	if pid != os.Getpid() {
		return nil, nil, nil
	}
	count, err := strconv.Atoi(countText)
	if err != nil {
		return nil, nil, fmt.Errorf("worker: LISTEN_FDS=%q: %w", countText, err)
	}
	if count < 0 {
		return nil, nil, fmt.Errorf("worker: LISTEN_FDS=%d: want a count >= 0", count)
	}
	names := make([]string, count)
	if namesText == "" {
		for i := range names {
			names[i] = unknownListenerName
		}
	} else {
		names = strings.Split(namesText, ":")
		if len(names) != count {
			return nil, nil, fmt.Errorf("worker: LISTEN_FDNAMES=%q names %d sockets, LISTEN_FDS=%d", namesText, len(names), count)
		}
	}
	files := make([]*os.File, count)
	for i := range files {
		fd := listenFDsStart + i
		syscall.CloseOnExec(fd)
		// os.NewFile keeps a non-blocking socket non-blocking: unlike a net.Conn's File, Fd()
		// on it does not switch the socket, shared with the master and every other worker, to
		// blocking mode.
		files[i] = os.NewFile(uintptr(fd), "LISTEN_FD_"+strconv.Itoa(fd)+":"+names[i])
	}
	return files, names, nil
}

// intFromEnv parses the integer in the environment variable name, or returns unset when it is
// not set.
func intFromEnv(name string, unset int) (int, error) {
	text := os.Getenv(name)
	if text == "" {
		return unset, nil
	}
	n, err := strconv.Atoi(text)
	if err != nil {
		return 0, fmt.Errorf("worker: %s=%q: %w", name, text, err)
	}
	return n, nil
}

// watchdogFromEnv implements sd_watchdog_enabled(3): WATCHDOG_USEC applies when WATCHDOG_PID is
// unset or names this process. It returns 0 when heartbeats are not wanted.
func watchdogFromEnv() (time.Duration, error) {
	usecText, pidText := os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID")
	if usecText == "" {
		return 0, nil
	}
	usec, err := strconv.ParseInt(usecText, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("worker: WATCHDOG_USEC=%q: %w", usecText, err)
	}
	if usec <= 0 {
		return 0, errors.New("worker: WATCHDOG_USEC must be a positive number of microseconds")
	}
	if pidText != "" {
		pid, err := strconv.Atoi(pidText)
		if err != nil {
			return 0, fmt.Errorf("worker: WATCHDOG_PID=%q: %w", pidText, err)
		}
		if pid != os.Getpid() {
			return 0, nil
		}
	}
	return time.Duration(usec) * time.Microsecond, nil
}
