package activation_test

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

	"github.com/forkd/forkd/pkg/activation"
	"github.com/forkd/forkd/pkg/config"
)

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
func spawnWorker(t *testing.T, app []string, env []string, dir string, ls []activation.Listener) *child {
	t.Helper()
	self := testBinary(t)
	return startChild(t, activation.ShimArgv(self, app), append(env, activation.WorkerEnv(ls)...), dir, activation.WorkerFiles(ls))
}

func decodeAppReport(t *testing.T, data string) appReport {
	t.Helper()
	var report appReport
	require.NoError(t, json.Unmarshal([]byte(data), &report), "report: %q", data)
	return report
}

func TestShimExecsAppInPlace(t *testing.T) {
	ls := bind(t,
		config.Listener{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"},
		config.Listener{Name: "admin", Network: "unix", Address: filepath.Join(t.TempDir(), "admin.sock")},
	)
	self := testBinary(t)
	env := append(baseEnv(helperApp),
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
	require.NoError(t, conn.SetDeadline(time.Now().Add(hangTimeout)))
	received := make(chan []byte, 1)
	go func() {
		data, _ := io.ReadAll(conn)
		received <- data
	}()

	code, stdout, stderr := c.wait(t)
	if code != 0 {
		conn.Close()
		t.Fatalf("app exited with %d; stderr:\n%s", code, stderr)
	}
	fromSocket := decodeAppReport(t, string(<-received))
	fromStdout := decodeAppReport(t, stdout)
	assert.Equal(t, fromStdout, fromSocket)

	pid := strconv.Itoa(c.pid)
	assert.Equal(t, c.pid, fromSocket.PID, "the app must keep the PID the master spawned")
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
	self := testBinary(t)
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
			env := append(setEnv(baseEnv(helperApp), "PATH", tc.path), "LISTEN_PID=1", "WATCHDOG_PID=1")
			c := spawnWorker(t, []string{tc.argv0, "x"}, env, tc.dir, nil)
			code, stdout, stderr := c.wait(t)
			require.Equal(t, 0, code, "stderr:\n%s", stderr)
			report := decodeAppReport(t, stdout)
			assert.Equal(t, c.pid, report.PID)
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
	self := testBinary(t)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "not-executable"), []byte("#!/bin/sh\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "garbage"), []byte("\x00\x01\x02 not a program"), 0o755))
	regular, err := os.Create(filepath.Join(dir, "regular"))
	require.NoError(t, err)
	defer regular.Close()
	web := bind(t, config.Listener{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"})[0]

	for _, tc := range []struct {
		name  string
		app   []string
		env   []string
		files []uintptr
		code  int
		want  string
	}{
		{"no command", nil, nil, nil, activation.ShimExitNotFound, "no command given"},
		{"not in PATH", []string{"forkd-no-such-command"}, nil, nil, activation.ShimExitNotFound,
			"forkd-no-such-command: command not found in PATH=" + dir},
		{"no such file", []string{"./no-such-file"}, nil, nil, activation.ShimExitNotFound,
			"exec ./no-such-file: no such file or directory"},
		{"not executable", []string{"not-executable"}, nil, nil, activation.ShimExitCannotExec,
			"exec " + dir + "/not-executable: permission denied"},
		{"not a program", []string{"garbage"}, nil, nil, activation.ShimExitCannotExec,
			"exec " + dir + "/garbage: exec format error"},
		{"listener missing", []string{self}, []string{"LISTEN_FDS=2"}, []uintptr{uintptr(web.FD)}, activation.ShimExitCannotExec,
			"LISTEN_FDS=2 but fd 4 is"},
		{"listener not a socket", []string{self}, []string{"LISTEN_FDS=1"}, []uintptr{regular.Fd()}, activation.ShimExitCannotExec,
			"LISTEN_FDS=1 but fd 3 is a regular file, not a socket"},
		{"LISTEN_FDS not a number", []string{self}, []string{"LISTEN_FDS=many"}, nil, activation.ShimExitCannotExec,
			`LISTEN_FDS="many" is not a count of descriptors`},
		{"LISTEN_FDNAMES does not match", []string{self}, []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=a:b"}, []uintptr{uintptr(web.FD)},
			activation.ShimExitCannotExec, `LISTEN_FDNAMES="a:b" does not name LISTEN_FDS=1 descriptors`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := append(setEnv(baseEnv(helperApp), "PATH", dir), tc.env...)
			c := startChild(t, activation.ShimArgv(self, tc.app), env, dir, tc.files)
			code, stdout, stderr := c.wait(t)
			assert.Equal(t, tc.code, code)
			assert.Empty(t, stdout, "the app must not have run")
			assert.True(t, strings.HasPrefix(stderr, "forkd-shim: "), "stderr: %q", stderr)
			t.Log(strings.TrimSpace(stderr))
			assert.Contains(t, stderr, tc.want)
		})
	}
}
