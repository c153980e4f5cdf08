package activation_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/activation"
)

// The test binary impersonates the processes these tests need, as os/exec's tests do: forkd's
// shim (when os.Args[1] is activation.ShimArg, exactly as forkd's main dispatches), and the
// helpers below, chosen by helperEnv.
const helperEnv = "FORKD_ACTIVATION_TEST_HELPER"

const (
	helperApp         = "app"          // a worker app: reports what it inherited
	helperFromSystemd = "from-systemd" // a master under systemd: reports FromSystemd's result
	helperOpen        = "open"         // the same through Open
)

// unset marks an environment variable that is not set in a report.
const unset = "<unset>"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == activation.ShimArg {
		activation.RunShim(os.Args[2:])
	}
	switch mode := os.Getenv(helperEnv); mode {
	case "":
		// Whatever descriptors the test process inherited without close-on-exec (from a shell or
		// a CI runner) would leak into every child and spoil the checks on what a worker
		// inherits. A forkd master must do the same at startup.
		if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
			fmt.Fprintf(os.Stderr, "close_range: %v\n", err)
			os.Exit(2)
		}
		os.Exit(m.Run())
	case helperApp:
		// First thing: the descriptors the exec handed over.
		os.Exit(runApp(inheritedFDs()))
	case helperFromSystemd, helperOpen:
		os.Exit(runFromSystemd(mode))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, mode)
		os.Exit(2)
	}
}

// inheritedFDs lists this process's descriptors that are not close-on-exec. Those came through
// exec: everything the Go runtime and the os package open for themselves (the epoll instance, the
// directory read here) is close-on-exec, so it is left out however early or late this runs.
func inheritedFDs() []int {
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

func getenv(key string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return unset
}

// appReport is what the app helper saw.
type appReport struct {
	PID          int
	Args         []string
	Env          map[string]string
	InheritedFDs []int
}

var reportedEnv = []string{
	activation.EnvListenPID, activation.EnvListenFDs, activation.EnvListenFDNames,
	activation.EnvWatchdogPID, activation.EnvWatchdogUSec,
}

// runApp writes its report to stdout, and when it got listeners also accepts one connection on
// fd 3 and writes the report there: proof that the socket serves.
func runApp(inherited []int) int {
	report := appReport{PID: os.Getpid(), Args: os.Args, Env: map[string]string{}, InheritedFDs: inherited}
	for _, key := range reportedEnv {
		report.Env[key] = getenv(key)
	}
	out, err := json.Marshal(report)
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(append(out, '\n'))
	if n, _ := strconv.Atoi(os.Getenv(activation.EnvListenFDs)); n > 0 {
		conn, _, err := unix.Accept(activation.ListenFDsStart)
		if err != nil {
			fmt.Fprintf(os.Stderr, "accept on fd %d: %v\n", activation.ListenFDsStart, err)
			return 3
		}
		if _, err := unix.Write(conn, out); err != nil {
			fmt.Fprintf(os.Stderr, "write: %v\n", err)
			return 3
		}
		unix.Close(conn)
	}
	return 0
}

// systemdReport is what the from-systemd and open helpers saw.
type systemdReport struct {
	PID       int
	Listeners []activation.Listener
	Activated bool
	Err       string
	EnvAfter  map[string]string
	// CloseOnExec is, for each descriptor LISTEN_FDS announced, whether it is close-on-exec after
	// the call.
	CloseOnExec map[int]bool
}

func runFromSystemd(mode string) int {
	report := systemdReport{PID: os.Getpid(), EnvAfter: map[string]string{}, CloseOnExec: map[int]bool{}}
	announced, _ := strconv.Atoi(os.Getenv(activation.EnvListenFDs))

	var err error
	if mode == helperOpen {
		report.Listeners, report.Activated, err = activation.Open(openConfig)
	} else {
		report.Listeners, err = activation.FromSystemd()
	}
	if err != nil {
		report.Err = err.Error()
	}
	for _, key := range []string{activation.EnvListenPID, activation.EnvListenFDs, activation.EnvListenFDNames} {
		report.EnvAfter[key] = getenv(key)
	}
	for fd := activation.ListenFDsStart; fd < activation.ListenFDsStart+announced; fd++ {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		report.CloseOnExec[fd] = err == nil && flags&unix.FD_CLOEXEC != 0
	}
	if err := json.NewEncoder(os.Stdout).Encode(report); err != nil {
		panic(err)
	}
	return 0
}

// testBinary is the path of this test binary, for re-executing it.
func testBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return self
}

// baseEnv is the environment every child starts from: nothing inherited from the test process but
// PATH (and GOCOVERDIR, so coverage runs stay quiet).
func baseEnv(helper string) []string {
	env := []string{"PATH=" + os.Getenv("PATH"), helperEnv + "=" + helper}
	if dir, ok := os.LookupEnv("GOCOVERDIR"); ok {
		env = append(env, "GOCOVERDIR="+dir)
	}
	return env
}

// child is a process a test started with startChild.
type child struct {
	pid            int
	pidfd          int
	stdout, stderr *os.File
	reaped         bool
}

// hangTimeout bounds how long a child may run before the test kills it. It only keeps a broken
// test from hanging; no test depends on it.
const hangTimeout = 2 * time.Minute

// startChild starts argv[0] (a path, no PATH search) with exactly env, in dir ("" for the test's
// own), with stdin on /dev/null, stdout and stderr in files, and extraFiles as fds 3, 4, ...
// It uses syscall.StartProcess with raw descriptors, as forkd's master does.
func startChild(t *testing.T, argv, env []string, dir string, extraFiles []uintptr) *child {
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
	c := &child{pid: pid, pidfd: pidfd, stdout: stdout, stderr: stderr}
	t.Cleanup(func() {
		if !c.reaped {
			_ = unix.PidfdSendSignal(c.pidfd, unix.SIGKILL, nil, 0)
			c.wait(t)
		}
	})
	return c
}

// wait reaps the child and returns its exit status (-1 when a signal killed it) and output.
func (c *child) wait(t *testing.T) (exitCode int, stdout, stderr string) {
	t.Helper()
	done := make(chan struct{})
	var guard sync.WaitGroup
	guard.Go(func() {
		select {
		case <-done:
		case <-time.After(hangTimeout):
			t.Errorf("child %d still running after %v; killing it", c.pid, hangTimeout)
			_ = unix.PidfdSendSignal(c.pidfd, unix.SIGKILL, nil, 0)
		}
	})
	var status unix.WaitStatus
	for {
		_, err := unix.Wait4(c.pid, &status, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("wait4(%d): %v", c.pid, err)
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
