package shim_test

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"fmt"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/fds"
	"github.com/forkd/forkd/internal/proctest"
	"github.com/forkd/forkd/pkg/activation"
	"github.com/forkd/forkd/pkg/shim"
)

// The test binary impersonates the processes these tests need, as os/exec's tests do: forkd's
// shim (when os.Args[1] is shim.Arg, exactly as forkd's main dispatches), and a worker app that
// reports what it inherited (when helperEnv is set).
const helperEnv = "FORKD_SHIM_TEST_APP"

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == shim.Arg {
		shim.Run(os.Args[2:])
	}
	if os.Getenv(helperEnv) != "" {
		// First thing: the descriptors the exec handed over.
		os.Exit(runApp(proctest.InheritedFDs()))
	}
	// Whatever descriptors the test process inherited without close-on-exec (from a shell or a CI
	// runner) would leak into every child and spoil the checks on what a worker inherits. A forkd
	// master does the same at startup.
	fds.CloseOnExecFrom(3)
	os.Exit(m.Run())
}

// unset marks an environment variable that is not set in a report.
const unset = proctest.Unset

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
		report.Env[key] = proctest.Getenv(key)
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

func baseEnv() []string { return proctest.Env(helperEnv, "app") }

// listeners binds specs for a test, and closes them when it ends.
func listeners(t *testing.T, specs ...activation.Spec) (ls []activation.Listener) {
	t.Helper()
	ls, err := activation.Bind(specs)
	t.Cleanup(func() { activation.CloseAll(ls) })
	require.NoError(t, err)
	return ls
}

func TestArgv(t *testing.T) {
	assert.Equal(t,
		[]string{"/proc/self/exe", shim.Arg, "bundle", "exec", "puma"},
		shim.Argv("/proc/self/exe", []string{"bundle", "exec", "puma"}))
}

// setEnv returns env with key set to value, replacing an entry already there.
func setEnv(env []string, key, value string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+value)
}

// spawnWorker starts app through the shim the way forkd's master does, with ls as fds 3, 4, ...
func spawnWorker(t *testing.T, app []string, env []string, dir string, ls []activation.Listener) *proctest.Child {
	t.Helper()
	self := proctest.Binary(t)
	return proctest.Start(t, shim.Argv(self, app), append(env, activation.WorkerEnv(ls)...), dir, activation.WorkerFiles(ls))
}

func decodeAppReport(t *testing.T, data string) appReport {
	t.Helper()
	var report appReport
	require.NoError(t, json.Unmarshal([]byte(data), &report), "report: %q", data)
	return report
}

func TestShimExecsAppInPlace(t *testing.T) {
	ls := listeners(t,
		activation.Spec{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"},
		activation.Spec{Name: "admin", Network: "unix", Address: filepath.Join(t.TempDir(), "admin.sock")},
	)
	self := proctest.Binary(t)
	env := append(baseEnv(),
		"WATCHDOG_USEC=30000000",
		// Left over in the master's environment, meant for the master: the shim must replace them.
		"LISTEN_PID=1", "WATCHDOG_PID=1",
	)
	c := spawnWorker(t, []string{self, "app-arg", "--flag"}, env, "", ls)

	// The app accepts one connection on fd 3 and writes its report there. The connection
	// completes from the backlog whenever the app gets to accept.
	conn, err := net.Dial("tcp4", ls[0].Address)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(proctest.HangTimeout)))
	received := make(chan []byte, 1)
	go func() {
		data, _ := io.ReadAll(conn)
		received <- data
	}()

	code, stdout, stderr := c.Wait(t)
	if code != 0 {
		conn.Close()
		t.Fatalf("app exited with %d; stderr:\n%s", code, stderr)
	}
	fromSocket := decodeAppReport(t, string(<-received))
	fromStdout := decodeAppReport(t, stdout)
	assert.Equal(t, fromStdout, fromSocket)

	pid := strconv.Itoa(c.PID)
	assert.Equal(t, c.PID, fromSocket.PID, "the app must keep the PID the master spawned")
	assert.Equal(t, []string{self, "app-arg", "--flag"}, fromSocket.Args)
	assert.Equal(t, map[string]string{
		activation.EnvListenPID:     pid,
		activation.EnvListenFDs:     "2",
		activation.EnvListenFDNames: "web:admin",
		activation.EnvWatchdogPID:   pid,
		activation.EnvWatchdogUSec:  "30000000",
	}, fromSocket.Env)
	assert.Equal(t, []int{0, 1, 2, 3, 4}, fromSocket.InheritedFDs, "the app must get stdio and the listeners, nothing else")
	assert.Empty(t, stderr)
}

func TestShimFindsCommand(t *testing.T) {
	self := proctest.Binary(t)
	dir := t.TempDir()
	require.NoError(t, os.Symlink(self, filepath.Join(dir, "forkd-test-app")))
	empty := t.TempDir()

	for _, tc := range []struct {
		name, path, dir, argv0 string
	}{
		{"in PATH", "/nonexistent:" + empty + ":" + dir, "", "forkd-test-app"},
		{"relative to the working directory", empty, dir, "./forkd-test-app"},
		{"empty PATH entry is the working directory", empty + "::/nonexistent", dir, "forkd-test-app"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// No listeners and no WATCHDOG_USEC: stale LISTEN_PID and WATCHDOG_PID must go.
			env := append(setEnv(baseEnv(), "PATH", tc.path), "LISTEN_PID=1", "WATCHDOG_PID=1")
			c := spawnWorker(t, []string{tc.argv0, "x"}, env, tc.dir, nil)
			code, stdout, stderr := c.Wait(t)
			require.Equal(t, 0, code, "stderr:\n%s", stderr)
			report := decodeAppReport(t, stdout)
			assert.Equal(t, c.PID, report.PID)
			assert.Equal(t, []string{tc.argv0, "x"}, report.Args, "argv[0] is passed on as written")
			assert.Equal(t, map[string]string{
				activation.EnvListenPID:     unset,
				activation.EnvListenFDs:     unset,
				activation.EnvListenFDNames: unset,
				activation.EnvWatchdogPID:   unset,
				activation.EnvWatchdogUSec:  unset,
			}, report.Env)
			assert.Equal(t, []int{0, 1, 2}, report.InheritedFDs)
		})
	}
}

func TestShimFailures(t *testing.T) {
	self := proctest.Binary(t)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "not-executable"), []byte("#!/bin/sh\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "garbage"), []byte("\x00\x01\x02 not a program"), 0o755))
	regular, err := os.Create(filepath.Join(dir, "regular"))
	require.NoError(t, err)
	defer regular.Close()
	web := listeners(t, activation.Spec{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"})[0]

	for _, tc := range []struct {
		name  string
		app   []string
		env   []string
		files []uintptr
		code  int
		want  string
	}{
		{"no command", nil, nil, nil, shim.ExitNotFound, "no command given"},
		{"not in PATH", []string{"forkd-no-such-command"}, nil, nil, shim.ExitNotFound,
			"forkd-no-such-command: command not found in PATH=" + dir},
		{"no such file", []string{"./no-such-file"}, nil, nil, shim.ExitNotFound,
			"exec ./no-such-file: no such file or directory"},
		{"not executable", []string{"not-executable"}, nil, nil, shim.ExitCannotExec,
			"exec " + dir + "/not-executable: permission denied"},
		{"not a program", []string{"garbage"}, nil, nil, shim.ExitCannotExec,
			"exec " + dir + "/garbage: exec format error"},
		{"listener missing", []string{self}, []string{"LISTEN_FDS=2"}, []uintptr{uintptr(web.FD)}, shim.ExitCannotExec,
			"LISTEN_FDS=2 but fd 4 is"},
		{"listener not a socket", []string{self}, []string{"LISTEN_FDS=1"}, []uintptr{regular.Fd()}, shim.ExitCannotExec,
			"LISTEN_FDS=1 but fd 3 is a regular file, not a socket"},
		{"LISTEN_FDS not a number", []string{self}, []string{"LISTEN_FDS=many"}, nil, shim.ExitCannotExec,
			`LISTEN_FDS="many" is not a count of descriptors`},
		{"LISTEN_FDNAMES does not match", []string{self}, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=a:b"}, []uintptr{uintptr(web.FD)},
			shim.ExitCannotExec, `LISTEN_FDNAMES="a:b" does not name LISTEN_FDS=1 descriptors`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := append(setEnv(baseEnv(), "PATH", dir), tc.env...)
			c := proctest.Start(t, shim.Argv(self, tc.app), env, dir, tc.files)
			code, stdout, stderr := c.Wait(t)
			assert.Equal(t, tc.code, code)
			assert.Empty(t, stdout, "the app must not have run")
			assert.True(t, strings.HasPrefix(stderr, "forkd-shim: "), "stderr: %q", stderr)
			t.Log(strings.TrimSpace(stderr))
			assert.Contains(t, stderr, tc.want)
		})
	}
}

// With FORKD_KSM=1 the app runs opted in to KSM as a whole (ksm_merge_any), which it inherits
// across the shim's exec; without it, it does not.
func TestShimOptsInToKSM(t *testing.T) {
	if _, err := os.Stat("/proc/self/ksm_stat"); err != nil {
		t.Skip("this kernel has no /proc/PID/ksm_stat (Linux 6.1+ with CONFIG_KSM)")
	}
	if _, err := unix.PrctlRetInt(unix.PR_GET_MEMORY_MERGE, 0, 0, 0, 0); err != nil {
		t.Skipf("this kernel has no PR_SET_MEMORY_MERGE (Linux 6.4+): %v", err)
	}
	for _, tc := range []struct {
		env, want string
	}{{"1", "ksm_merge_any: yes"}, {"", "ksm_merge_any: no"}} {
		env := proctest.Env(shim.EnvKSM, tc.env)
		c := spawnWorker(t, []string{"/bin/cat", "/proc/self/ksm_stat"}, env, "", nil)
		code, stdout, stderr := c.Wait(t)
		require.Equal(t, 0, code, "stderr:\n%s", stderr)
		assert.Contains(t, stdout, tc.want, "FORKD_KSM=%q", tc.env)
	}
}
