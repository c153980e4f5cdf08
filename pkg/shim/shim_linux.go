package shim

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/activation"
)

// defaultPath is searched when the worker's environment has no PATH at all: systemd's default
// for services.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Run turns the current process into the worker app args (its argv) with the
// sd_listen_fds(3) contract fulfilled: it sets LISTEN_PID to its own PID when LISTEN_FDS is set
// (removing any LISTEN_PID otherwise), sets WATCHDOG_PID likewise when WATCHDOG_USEC is set, makes
// sure fds 3 to 3+LISTEN_FDS-1 are open and survive the exec, opts the process in to KSM when
// EnvKSM is "1", and execs args[0] in place: the app
// keeps the PID the master spawned. args[0] is looked up in the PATH of the environment (systemd's
// default path when PATH is unset), or taken relative to the working directory when it contains a
// '/', as execvp(3) does; argv[0] is passed on as written.
//
// forkd's main calls it before anything else when os.Args[1] is Arg, so it holds no state and
// starts nothing.
//
// It never returns. When the app cannot be started, it prints "forkd-shim: " and the reason to
// stderr and exits with ExitNotFound (127) or ExitCannotExec (126).
func Run(args []string) {
	code, err := runShim(args, os.Environ(), os.Getpid())
	fmt.Fprintf(os.Stderr, "forkd-shim: %v\n", err)
	os.Exit(code)
}

// runShim execs the app, or returns the exit status and the reason it could not.
func runShim(args, environ []string, pid int) (exitCode int, err error) {
	if len(args) == 0 || args[0] == "" {
		return ExitNotFound, errors.New("no command given")
	}
	env, listenFDs, err := shimEnv(environ, pid)
	if err != nil {
		return ExitCannotExec, err
	}
	for fd := activation.ListenFDsStart; fd < activation.ListenFDsStart+listenFDs; fd++ {
		// A gap in the descriptors may have been filled by one the Go runtime opened for itself
		// before main; the app must not take that for a listener.
		if err := activation.CheckSocket(fd); err != nil {
			return ExitCannotExec, fmt.Errorf("LISTEN_FDS=%d but fd %d %w", listenFDs, fd, err)
		}
		// The master's spawn already cleared close-on-exec; this guards against a parent that
		// did not.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return ExitCannotExec, fmt.Errorf("fd %d: clearing close-on-exec: %w", fd, err)
		}
	}
	if v, _ := lookupEnv(environ, EnvKSM); v == "1" {
		// A kernel without it (EINVAL) runs the app without KSM: the master has said so once,
		// and a worker must not fail to start for it.
		_ = unix.Prctl(unix.PR_SET_MEMORY_MERGE, 1, 0, 0, 0)
	}
	return execApp(args, env)
}

// shimEnv returns the app's environment: environ with LISTEN_PID and WATCHDOG_PID set to pid where
// they apply and removed where they do not. listenFDs is the value of LISTEN_FDS (0 when unset).
func shimEnv(environ []string, pid int) (env []string, listenFDs int, err error) {
	listenFDsValue, hasListenFDs := lookupEnv(environ, activation.EnvListenFDs)
	listenFDNames, _ := lookupEnv(environ, activation.EnvListenFDNames)
	watchdogUSec, _ := lookupEnv(environ, activation.EnvWatchdogUSec)

	if hasListenFDs && listenFDsValue != "" {
		listenFDs, err = strconv.Atoi(listenFDsValue)
		if err != nil || listenFDs < 0 || listenFDs > activation.MaxListenFDs {
			return nil, 0, fmt.Errorf("LISTEN_FDS=%q is not a count of descriptors", listenFDsValue)
		}
		if listenFDNames != "" && strings.Count(listenFDNames, ":")+1 != listenFDs {
			return nil, 0, fmt.Errorf("LISTEN_FDNAMES=%q does not name LISTEN_FDS=%d descriptors", listenFDNames, listenFDs)
		}
	} else {
		hasListenFDs = false
	}

	env = make([]string, 0, len(environ)+2)
	for _, kv := range environ {
		// Whatever the master's environment held under these names was meant for another process.
		if key, _, _ := strings.Cut(kv, "="); key == activation.EnvListenPID || key == activation.EnvWatchdogPID {
			continue
		}
		env = append(env, kv)
	}
	self := strconv.Itoa(pid)
	if hasListenFDs {
		env = append(env, activation.EnvListenPID+"="+self)
	}
	if watchdogUSec != "" {
		env = append(env, activation.EnvWatchdogPID+"="+self)
	}
	return env, listenFDs, nil
}

// lookupEnv is os.LookupEnv for an environment list: the first entry for key wins, as in Go and
// in glibc's getenv.
func lookupEnv(environ []string, key string) (string, bool) {
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v, true
		}
	}
	return "", false
}

// execApp execs argv with env, searching PATH the way execvp(3) does: a candidate that does not
// exist is skipped, one that exists but may not be executed is remembered and skipped, and any other
// failure ends the search. It returns only when no exec succeeded.
func execApp(argv, env []string) (exitCode int, err error) {
	name := argv[0]
	if strings.Contains(name, "/") {
		err := unix.Exec(name, argv, env)
		if isNotFound(err) {
			return ExitNotFound, fmt.Errorf("exec %s: %w", name, err)
		}
		return ExitCannotExec, fmt.Errorf("exec %s: %w", name, err)
	}

	path, ok := lookupEnv(env, "PATH")
	if !ok {
		path = defaultPath
	}
	var denied error
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "." // an empty PATH entry means the working directory
		}
		candidate := dir + "/" + name
		err := unix.Exec(candidate, argv, env)
		switch {
		case isNotFound(err):
			continue
		case errors.Is(err, unix.EACCES):
			if denied == nil {
				denied = fmt.Errorf("exec %s: %w", candidate, err)
			}
			continue
		default:
			return ExitCannotExec, fmt.Errorf("exec %s: %w", candidate, err)
		}
	}
	if denied != nil {
		return ExitCannotExec, denied
	}
	return ExitNotFound, fmt.Errorf("%s: command not found in PATH=%s", name, path)
}

// isNotFound reports the errors for which execvp(3) tries the next PATH entry.
func isNotFound(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ESTALE) ||
		errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ETIMEDOUT)
}
