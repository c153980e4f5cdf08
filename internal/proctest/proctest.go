// Package proctest helps tests that start processes the way forkd's master does: with
// syscall.StartProcess and raw descriptors, often the test binary itself impersonating a worker or
// a master (as os/exec's tests do), and reaped by the test with wait4.
package proctest

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Binary is the path of the running test binary, for re-executing it.
func Binary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return self
}

// Env is the environment a child starts from: nothing inherited from the test process but PATH
// (and GOCOVERDIR, so coverage runs stay quiet), plus key=value, which tells the test binary what
// to impersonate.
func Env(key, value string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), key + "=" + value}
	if dir, ok := os.LookupEnv("GOCOVERDIR"); ok {
		env = append(env, "GOCOVERDIR="+dir)
	}
	return env
}

// Unset is what Getenv returns for a variable that is not set.
const Unset = "<unset>"

// Getenv returns the value of key in this process's environment, or Unset, for a report of what a
// child saw.
func Getenv(key string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return Unset
}

// InheritedFDs lists this process's descriptors that are not close-on-exec. Those came through
// exec: everything the Go runtime and the os package open for themselves (the epoll instance, the
// directory read here) is close-on-exec, so it is left out however early or late this runs.
func InheritedFDs() []int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		panic(err)
	}
	var fds []int
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // the directory's own descriptor (closed by now), or the runtime's
		}
		fds = append(fds, fd)
	}
	slices.Sort(fds)
	return fds
}

// Child is a process a test started with Start.
type Child struct {
	PID            int
	pidfd          int
	stdout, stderr *os.File
	reaped         bool
}

// HangTimeout bounds how long a child may run before the test kills it. It only keeps a broken
// test from hanging; no test depends on it.
const HangTimeout = 2 * time.Minute

// Start starts argv[0] (a path, no PATH search) with exactly env, in dir ("" for the test's own),
// with stdin on /dev/null, stdout and stderr in files, and extraFiles as fds 3, 4, ... The child
// is killed and reaped when the test ends, unless Wait reaped it.
func Start(t *testing.T, argv, env []string, dir string, extraFiles []uintptr) *Child {
	t.Helper()
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	tmp := t.TempDir()
	stdout, err := os.Create(filepath.Join(tmp, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := os.Create(filepath.Join(tmp, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdout.Close(); stderr.Close() })

	// Fd is harmless on these: /dev/null and regular files have no blocking mode to lose.
	files := append([]uintptr{stdin.Fd(), stdout.Fd(), stderr.Fd()}, extraFiles...)
	pidfd := -1
	pid, _, err := syscall.StartProcess(argv[0], argv, &syscall.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: files,
		Sys:   &syscall.SysProcAttr{PidFD: &pidfd},
	})
	if err != nil {
		t.Fatalf("starting %q: %v", argv, err)
	}
	c := &Child{PID: pid, pidfd: pidfd, stdout: stdout, stderr: stderr}
	t.Cleanup(func() {
		if !c.reaped {
			_ = unix.PidfdSendSignal(c.pidfd, unix.SIGKILL, nil, 0)
			c.Wait(t)
		}
	})
	return c
}

// Wait reaps the child and returns its exit status (-1 when a signal killed it) and output.
func (c *Child) Wait(t *testing.T) (exitCode int, stdout, stderr string) {
	t.Helper()
	done := make(chan struct{})
	var guard sync.WaitGroup
	guard.Go(func() {
		select {
		case <-done:
		case <-time.After(HangTimeout):
			t.Errorf("child %d still running after %v; killing it", c.PID, HangTimeout)
			_ = unix.PidfdSendSignal(c.pidfd, unix.SIGKILL, nil, 0)
		}
	})
	var status unix.WaitStatus
	for {
		_, err := unix.Wait4(c.PID, &status, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("wait4(%d): %v", c.PID, err)
		}
		break
	}
	c.reaped = true
	close(done)
	guard.Wait() // the pidfd is not closed under a PidfdSendSignal
	unix.Close(c.pidfd)

	exitCode = -1
	if status.Exited() {
		exitCode = status.ExitStatus()
	}
	out, err := os.ReadFile(c.stdout.Name())
	if err != nil {
		t.Fatal(err)
	}
	errOut, err := os.ReadFile(c.stderr.Name())
	if err != nil {
		t.Fatal(err)
	}
	return exitCode, string(out), string(errOut)
}
