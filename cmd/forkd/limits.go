package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// This file keeps the master's Go runtime from dying for want of a thread. RLIMIT_NPROC bounds the
// tasks (processes and threads) of a user, the workers' included, since they run as forkd's user.
// A Go program cannot survive a failed thread creation: the runtime aborts with a dump. So the
// master checks the limit before its runtime needs more threads than it has (one clear line and
// exit 1 if the limit is too low), then starts its threads at once, before any worker: workers
// that use up the limit later cannot keep the runtime from a thread, and a spawn that fails for
// want of room is a failed spawn, logged, retried with backoff.
//
// Below about five tasks, the Go runtime cannot even reach main; it says so itself ("runtime: may
// need to increase max user processes (ulimit -u)").

// threadReserve is how many threads the master starts for itself: about twice the 8 to 10 it uses.
const threadReserve = 16

// Capabilities that lift RLIMIT_NPROC (kernel/fork.c), and root's own user.
const (
	capSysAdmin    = 21
	capSysResource = 24
)

// processLimit is RLIMIT_NPROC as it applies to this process: the limit and the tasks of its real
// user in use. applies is false when there is no limit, or it does not bind this process.
type processLimit struct {
	limit, used, uid int
	applies          bool
}

func readProcessLimit() processLimit {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY {
		return processLimit{}
	}
	uid := os.Getuid()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil || uid == 0 || hasCapability(string(status), capSysAdmin) || hasCapability(string(status), capSysResource) {
		return processLimit{}
	}
	return processLimit{limit: int(min(rl.Cur, 1<<31-1)), used: tasksOf(uid), uid: uid, applies: true}
}

func (l processLimit) room() int { return l.limit - l.used }

// checkProcessLimit fails, with what to do, when the limit leaves no room for the master's own
// threads. It runs at the master's start, before its runtime needs another thread.
func checkProcessLimit() error {
	l := readProcessLimit()
	need := threadReserve - threadsOfSelf()
	if !l.applies || l.room() >= need {
		return nil
	}
	return fmt.Errorf("the process limit of forkd's user (uid %d) is %d (RLIMIT_NPROC) and %d of it is in use: "+
		"the master needs %d more for its own threads, and its workers more; raise it (LimitNPROC= in the unit, ulimit -u in a shell)",
		l.uid, l.limit, l.used, need)
}

// reserveThreads makes the Go runtime start the master's threads now: each of n goroutines holds
// an OS thread of its own until all do, then lets it go idle, and the runtime keeps idle threads
// for later. After a hot restart, with the workers running, it takes no more than the room left.
func reserveThreads() {
	n := threadReserve - threadsOfSelf()
	if l := readProcessLimit(); l.applies {
		n = min(n, l.room()-1)
	}
	if n <= 0 {
		return
	}
	var locked, done sync.WaitGroup
	release := make(chan struct{})
	locked.Add(n)
	done.Add(n)
	for range n {
		go func() {
			defer done.Done()
			runtime.LockOSThread()
			locked.Done()
			<-release
			runtime.UnlockOSThread()
		}()
	}
	locked.Wait()
	close(release)
	done.Wait()
}

// tasksOf counts the tasks (threads) of the processes whose real user is uid, as RLIMIT_NPROC does.
func tasksOf(uid int) int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		if real, _ := statusField(string(b), "Uid"); real == strconv.Itoa(uid) {
			threads, _ := statusField(string(b), "Threads")
			t, _ := strconv.Atoi(threads)
			n += max(t, 1)
		}
	}
	return n
}

func threadsOfSelf() int {
	b, _ := os.ReadFile("/proc/self/status")
	threads, _ := statusField(string(b), "Threads")
	n, _ := strconv.Atoi(threads)
	return n
}

// statusField returns the first word of a /proc/PID/status field.
func statusField(status, key string) (string, bool) {
	for _, line := range strings.Split(status, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			if f := strings.Fields(v); len(f) > 0 {
				return f[0], true
			}
		}
	}
	return "", false
}

func hasCapability(status string, bit uint) bool {
	hex, ok := statusField(status, "CapEff")
	if !ok {
		return false
	}
	caps, err := strconv.ParseUint(hex, 16, 64)
	return err == nil && caps&(1<<bit) != 0
}
