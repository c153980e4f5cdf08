package supervisor

import (
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// This file holds the spawner: the one thread that starts every child of the master (workers,
// helpers) and execs the hot restart's new image.
//
// Workers get Pdeathsig, which the kernel sends when the *thread* that forked them exits, not the
// process. An exec kills every thread but the one that calls it, and the children of each killed
// thread get their Pdeathsig; the calling thread lives on as the new image's main thread. So the
// one thread that can fork and exec, image after image, without firing a Pdeathsig is the main
// thread: cmd/forkd locks its main goroutine to it (runtime.LockOSThread in an init function) and
// runs ServeSpawns there, and an exec from it leaves it, with its children, to the next image,
// which runs ServeSpawns on it again.
//
// Pdeathsig stays, rather than leaving it to the SDKs to watch for the master's end (they do, by
// pidfd or end of file on the control channel): an app without an SDK, such as any sd_notify app or
// a shell script in exec mode, learns that a SIGKILLed master is gone only from it.

// mainSpawner is the spawner ServeSpawns runs on the main thread; mainSpawnerServing says it does.
var (
	mainSpawner        = &spawner{reqs: make(chan spawnRequest)}
	mainSpawnerServing atomic.Bool
)

// ServeSpawns runs the spawner that every Driver of this process uses, on the calling goroutine,
// which must be the main goroutine locked to the main thread (runtime.LockOSThread in an init
// function of package main). It never returns, so main runs the rest of the program on another
// goroutine. Without it, a Driver spawns from a locked thread of its own, and a hot restart's exec
// from that thread fires the Pdeathsig of no worker only if the new image runs ServeSpawns.
func ServeSpawns() {
	if unix.Gettid() != unix.Getpid() {
		panic("cluster: ServeSpawns runs on a thread other than the main thread: call runtime.LockOSThread in an init function of package main")
	}
	mainSpawnerServing.Store(true)
	mainSpawner.serve()
}

// spawner starts processes, and execs the master, from one locked OS thread.
type spawner struct {
	reqs chan spawnRequest
	// own: the spawner runs on a thread started for one Driver, which stops it when done.
	own bool
}

type spawnRequest struct {
	path string
	argv []string
	attr *syscall.ProcAttr
	// env, with attr nil, asks for an exec of the whole master instead.
	env  []string
	done chan spawnResult
}

type spawnResult struct {
	pid int
	err error
}

// spawnerFor returns the spawner a Driver uses: the main thread's, or one of its own.
func spawnerFor() *spawner {
	if mainSpawnerServing.Load() {
		return mainSpawner
	}
	s := &spawner{reqs: make(chan spawnRequest), own: true}
	go func() {
		// Never unlocked: the thread lives as long as the process.
		runtime.LockOSThread()
		s.serve()
	}()
	return s
}

// serve carries out requests on the calling goroutine's locked thread until stop, then parks
// forever: a locked goroutine that returns takes its thread with it, and with it every child's
// Pdeathsig.
func (s *spawner) serve() {
	for r := range s.reqs {
		if r.attr == nil {
			r.done <- spawnResult{-1, execMaster(r.path, r.argv, r.env)}
			continue
		}
		pid, _, err := syscall.StartProcess(r.path, r.argv, r.attr)
		r.done <- spawnResult{pid, err}
	}
	select {}
}

func (s *spawner) start(path string, argv []string, attr *syscall.ProcAttr) (int, error) {
	done := make(chan spawnResult, 1)
	s.reqs <- spawnRequest{path: path, argv: argv, attr: attr, done: done}
	r := <-done
	return r.pid, r.err
}

// stop ends a spawner of the Driver's own; the main thread's serves on.
func (s *spawner) stop() {
	if s.own {
		close(s.reqs)
	}
}

// exec replaces the master with a new image, from the spawner's thread, whose children (the
// workers) then keep their parent: see the top of this file. It returns only if the exec failed.
func (s *spawner) exec(path string, argv, env []string) error {
	done := make(chan spawnResult, 1)
	s.reqs <- spawnRequest{path: path, argv: argv, env: env, done: done}
	return (<-done).err
}

// execMaster execs path with the stop and rollout signals blocked: the mask survives the exec, and
// the new image unblocks them as it installs its handlers, so a SIGTERM that arrives in between
// waits instead of killing the master with its default action.
func execMaster(path string, argv, env []string) error {
	var set, old unix.Sigset_t
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGURG} {
		set.Val[(sig-1)/64] |= 1 << ((uint(sig) - 1) % 64)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &set, &old); err != nil {
		return err
	}
	err := syscall.Exec(path, argv, env)
	unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	return err
}

// describeSpawnError says what a failed fork means: EAGAIN is a limit on tasks, most often the
// user's RLIMIT_NPROC, which the workers' own threads count against too.
func describeSpawnError(err error) string {
	if !errors.Is(err, syscall.EAGAIN) {
		return err.Error()
	}
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NPROC, &rl) == nil && rl.Cur != unix.RLIM_INFINITY {
		return fmt.Sprintf("fork: %v: forkd's user has reached its process limit (RLIMIT_NPROC %d, counting threads; LimitNPROC= in the unit, ulimit -u), or the cgroup's pids.max is reached",
			err, rl.Cur)
	}
	return fmt.Sprintf("fork: %v: the cgroup's pids.max or the kernel's pid_max is reached", err)
}
