// Package shim is the first moment of every worker forkd execs: forkd's own binary, started as
// Argv(self, app), sets LISTEN_PID (and WATCHDOG_PID) to its own PID and execs the app in place,
// so that the app sees exactly what sd_listen_fds(3) and sd_watchdog_enabled(3) promise: the
// variables name the app's own PID.
//
// Why a shim: those variables must name the worker, whose PID is known only once it is forked,
// and Go cannot set an environment variable between fork and exec. The exec keeps the PID, so the
// app, the pidfd the master holds and the PID the master reports are one process.
//
// forkd's main begins with:
//
//	if len(os.Args) > 1 && os.Args[1] == shim.Arg {
//		shim.Run(os.Args[2:])
//	}
//
// and the master spawns a worker with argv shim.Argv("/proc/self/exe", app), the listeners as fds
// 3, 4, ... and activation.WorkerEnv in its environment (see package activation).
package shim

// Arg is the argument that turns forkd into the shim: forkd's main calls Run(os.Args[2:]) before
// anything else when os.Args[1] is Arg. It is spelled so that no forkd subcommand or app argument
// is likely to collide with it.
const Arg = "__forkd-shim"

// EnvKSM, set to "1" in a worker's environment (memory.ksm), makes the shim opt the worker in to
// the kernel's same-page merging (prctl PR_SET_MEMORY_MERGE) before it execs the app. Since Linux
// 6.4 the flag is inherited across fork, and recent kernels (checked on 6.18) keep it across
// execve as well, so the app runs with it and so does every worker its template forks; the SDKs
// set it again in the template, for kernels that drop it at the exec. The variable stays in the
// app's environment for them.
const EnvKSM = "FORKD_KSM"

// Exit statuses of a shim that could not exec the app, as a shell reports them.
const (
	// ExitNotFound: the command does not exist (not in PATH, or no such file).
	ExitNotFound = 127
	// ExitCannotExec: the command exists but cannot be executed (permission, format), or the shim
	// was started without the descriptors its LISTEN_FDS announces.
	ExitCannotExec = 126
)

// Argv returns the argv that starts app through the shim: self, Arg, then app. self is forkd's own
// executable; "/proc/self/exe" is the best choice, because the kernel resolves it to the running
// binary even after a package upgrade has replaced the file on disk, so the shim always matches
// the master that spawns it.
func Argv(self string, app []string) []string {
	argv := make([]string, 0, 2+len(app))
	argv = append(argv, self, Arg)
	return append(argv, app...)
}
