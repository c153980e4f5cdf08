package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// deadline bounds every wait for a condition. It is generous because it only matters when a test
// fails; no test asserts how fast anything happens.
const deadline = 30 * time.Second

// datagram is one notification a fakeMaster received.
type datagram struct {
	// pid is the sender, from SCM_CREDENTIALS.
	pid   int
	state string
}

func (d datagram) has(line string) bool {
	return slices.Contains(strings.Split(d.state, "\n"), line)
}

// fakeMaster plays the forkd master for workers the test starts: a NOTIFY_SOCKET with
// SO_PASSCRED, as the master's own, and a listening TCP socket to pass as fd 3.
type fakeMaster struct {
	t          *testing.T
	notifyPath string
	listener   *net.TCPListener

	mu        sync.Mutex
	datagrams []datagram
	// changed is closed, and replaced, whenever a datagram arrives.
	changed chan struct{}
}

func newFakeMaster(t *testing.T) *fakeMaster {
	t.Helper()
	m := &fakeMaster{t: t, notifyPath: filepath.Join(t.TempDir(), "notify.sock"), changed: make(chan struct{})}
	conn := listenNotify(t, m.notifyPath)
	go func() {
		for {
			d, err := receive(conn)
			if err != nil {
				return
			}
			m.mu.Lock()
			m.datagrams = append(m.datagrams, d)
			close(m.changed)
			m.changed = make(chan struct{})
			m.mu.Unlock()
		}
	}()
	var err error
	m.listener, err = net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	t.Cleanup(func() { m.listener.Close() })
	return m
}

// listenNotify opens a notify socket at addr with SO_PASSCRED, as forkd's master does.
func listenNotify(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	raw, err := conn.SyscallConn()
	require.NoError(t, err)
	var sockErr error
	require.NoError(t, raw.Control(func(fd uintptr) {
		sockErr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}))
	require.NoError(t, sockErr)
	return conn
}

// receive reads one datagram from a socket with SO_PASSCRED.
func receive(conn *net.UnixConn) (datagram, error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return datagram{}, err
	}
	d := datagram{state: string(buf[:n])}
	messages, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return datagram{}, err
	}
	for _, message := range messages {
		if cred, err := unix.ParseUnixCredentials(&message); err == nil {
			d.pid = int(cred.Pid)
		}
	}
	return d, nil
}

// waitUntil waits until check, called with every datagram so far, returns true.
func (m *fakeMaster) waitUntil(what string, check func([]datagram) bool) {
	m.t.Helper()
	timeout := time.After(deadline)
	for {
		m.mu.Lock()
		done := check(m.datagrams)
		changed := m.changed
		m.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
		case <-timeout:
			m.mu.Lock()
			defer m.mu.Unlock()
			m.t.Fatalf("waited %v for %s; datagrams: %+v", deadline, what, m.datagrams)
		}
	}
}

// waitFor waits for a datagram from pid carrying line, and returns it.
func (m *fakeMaster) waitFor(pid int, line string) datagram {
	m.t.Helper()
	var found datagram
	m.waitUntil(fmt.Sprintf("%q from pid %d", line, pid), func(all []datagram) bool {
		for _, d := range all {
			if d.pid == pid && d.has(line) {
				found = d
				return true
			}
		}
		return false
	})
	return found
}

// workerEnv is the environment for a helper: the test's own, minus anything a supervisor sets.
func workerEnv(helper string, env ...string) []string {
	var clean []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "LISTEN_"), strings.HasPrefix(name, "WATCHDOG_"),
			strings.HasPrefix(name, "FORKD_"), name == "NOTIFY_SOCKET":
			continue
		}
		clean = append(clean, kv)
	}
	return append(append(clean, helperEnv+"="+helper), env...)
}

// process is a helper the test started.
type process struct {
	cmd *exec.Cmd
	// stdout is complete once exited is closed.
	stdout bytes.Buffer
	// exited is closed once cmd.Wait has returned; cmd.ProcessState is set then.
	exited chan struct{}
}

// startWorker starts helper as a worker with files as fds 3, 4, .... Through a shell that execs it
// in place, it gets LISTEN_PID and WATCHDOG_PID set to its own PID, as forkd's spawn shim does.
// The worker is killed when the test ends, if it is still running.
func startWorker(t *testing.T, helper string, files []*os.File, env ...string) *process {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ WATCHDOG_PID=$$ exec "$0"`, os.Args[0])
	cmd.Env = workerEnv(helper, env...)
	cmd.ExtraFiles = files
	return start(t, cmd)
}

// start starts cmd, collecting its stdout, and kills it when the test ends if it is still running.
func start(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd, exited: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = &p.stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	require.NoError(t, cmd.Start())
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// wait waits for p to exit, and returns its exit code.
func (p *process) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(deadline):
		t.Fatalf("process %d did not exit within %v", p.cmd.Process.Pid, deadline)
		return -1
	}
}

func TestWorkerUnderFakeMaster(t *testing.T) {
	m := newFakeMaster(t)
	listenerFile, err := m.listener.File()
	require.NoError(t, err)
	defer listenerFile.Close()

	worker := startWorker(t, "serve", []*os.File{listenerFile},
		"LISTEN_FDS=1", "LISTEN_FDNAMES=http", "NOTIFY_SOCKET="+m.notifyPath,
		"FORKD_WORKER=2", "FORKD_GENERATION=7", "WATCHDOG_USEC=200000")
	pid := worker.cmd.Process.Pid

	m.waitFor(pid, "READY=1")
	m.waitFor(pid, "STATUS=serving")

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://" + m.listener.Addr().String()
	for range 3 {
		assert.Equal(t, "worker 2 generation 7", get(t, client, url+"/"))
	}
	m.waitFor(pid, "X_FORKD_REQUESTS=3")

	m.waitUntil("three heartbeats", func(all []datagram) bool {
		heartbeats := 0
		for _, d := range all {
			if d.pid == pid && d.has("WATCHDOG=1") {
				heartbeats++
			}
		}
		return heartbeats >= 3
	})

	// A request in flight when SIGTERM arrives completes, and then the worker exits 0.
	slow := make(chan string, 1)
	go func() {
		resp, err := client.Get(url + "/slow")
		if err != nil {
			slow <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			slow <- "error: " + err.Error()
			return
		}
		slow <- resp.Status + ": " + string(body)
	}()
	m.waitFor(pid, "STATUS=slow request in flight")
	require.NoError(t, worker.cmd.Process.Signal(syscall.SIGTERM))
	m.waitFor(pid, "STOPPING=1")
	select {
	case got := <-slow:
		assert.Equal(t, "200 OK: slow request done", got)
	case <-time.After(deadline):
		t.Fatal("the slow request never completed")
	}
	assert.Equal(t, 0, worker.wait(t))

	m.mu.Lock()
	defer m.mu.Unlock()
	for _, d := range m.datagrams {
		assert.Equal(t, pid, d.pid, "every datagram comes from the worker itself: %q", d.state)
	}
}

func get(t *testing.T, client *http.Client, url string) string {
	t.Helper()
	resp, err := client.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	return string(body)
}

// TestWorkerNoticesMasterGone starts a "master" helper that starts an "orphan" worker and then
// exits: the orphan's context must end with ErrMasterGone, and the orphan exit.
func TestWorkerNoticesMasterGone(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  []string
	}{
		{"pidfd", nil},
		{"getppid fallback", []string{noPidfdEnv + "=1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := newFakeMaster(t)
			// Only the orphan will hold the write end once the master is gone, so EOF on the read
			// end means the orphan has exited.
			orphanOutput, orphanStdout, err := os.Pipe()
			require.NoError(t, err)
			defer orphanOutput.Close()

			cmd := exec.Command(os.Args[0])
			cmd.Env = workerEnv("master", append(tt.env, "NOTIFY_SOCKET="+m.notifyPath, "FORKD_WORKER=0")...)
			cmd.Stdout = orphanStdout
			masterStdin, err := cmd.StdinPipe()
			require.NoError(t, err)
			master := start(t, cmd)
			orphanStdout.Close()

			var orphanPID int
			m.waitUntil("READY=1 from the orphan", func(all []datagram) bool {
				for _, d := range all {
					if d.pid != master.cmd.Process.Pid && d.has(NotifyReady) {
						orphanPID = d.pid
						return true
					}
				}
				return false
			})
			// The orphan is not our child once the master is gone; a pidfd names it safely for
			// the cleanup, whatever happens to its PID.
			orphanPidfd, err := unix.PidfdOpen(orphanPID, 0)
			require.NoError(t, err)
			t.Cleanup(func() {
				unix.PidfdSendSignal(orphanPidfd, unix.SIGKILL, nil, 0)
				unix.Close(orphanPidfd)
			})

			require.NoError(t, masterStdin.Close())
			require.Equal(t, 0, master.wait(t), "the master exits")

			require.NoError(t, orphanOutput.SetReadDeadline(time.Now().Add(deadline)))
			output, err := io.ReadAll(orphanOutput)
			require.NoError(t, err, "the orphan exits once its master is gone")
			assert.Equal(t, fmt.Sprintf("orphan %d stopping: %v\n", orphanPID, ErrMasterGone), string(output))
		})
	}
}

// runReport starts the report helper and decodes what it printed.
func runReport(t *testing.T, cmd *exec.Cmd) report {
	t.Helper()
	p := start(t, cmd)
	require.Equal(t, 0, p.wait(t))
	var r report
	require.NoError(t, json.Unmarshal(p.stdout.Bytes(), &r), p.stdout.String())
	return r
}

// TestSocketActivationWithoutForkd passes two sockets as systemd would for a .socket unit with two
// Listen= lines: no FORKD_WORKER, no NOTIFY_SOCKET.
func TestSocketActivationWithoutForkd(t *testing.T) {
	web, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer web.Close()
	adminPath := filepath.Join(t.TempDir(), "admin.sock")
	admin, err := net.ListenUnix("unix", &net.UnixAddr{Name: adminPath, Net: "unix"})
	require.NoError(t, err)
	defer admin.Close()
	webFile, err := web.File()
	require.NoError(t, err)
	defer webFile.Close()
	adminFile, err := admin.File()
	require.NoError(t, err)
	defer adminFile.Close()

	t.Run("named", func(t *testing.T) {
		cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0"`, os.Args[0])
		cmd.Env = workerEnv("report", "LISTEN_FDS=2", "LISTEN_FDNAMES=web:admin")
		cmd.ExtraFiles = []*os.File{webFile, adminFile}
		r := runReport(t, cmd)
		assert.Equal(t, report{
			Index:       -1,
			Generation:  0,
			ListenEnv:   map[string]string{},
			CloseOnExec: []bool{true, true},
			Listeners: map[string][]string{
				"web":   {web.Addr().String()},
				"admin": {adminPath},
			},
			ReadySent: false,
		}, r)
	})

	t.Run("unnamed", func(t *testing.T) {
		cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0"`, os.Args[0])
		cmd.Env = workerEnv("report", "LISTEN_FDS=2")
		cmd.ExtraFiles = []*os.File{webFile, adminFile}
		r := runReport(t, cmd)
		assert.Equal(t, map[string][]string{"unknown": {web.Addr().String(), adminPath}}, r.Listeners)
	})

	t.Run("meant for another process", func(t *testing.T) {
		cmd := exec.Command(os.Args[0])
		cmd.Env = workerEnv("report", "LISTEN_PID=1", "LISTEN_FDS=2")
		cmd.ExtraFiles = []*os.File{webFile, adminFile}
		r := runReport(t, cmd)
		assert.Empty(t, r.Listeners)
		assert.Empty(t, r.ListenEnv, "LISTEN_* are unset all the same")
		assert.Equal(t, []bool{false, false}, r.CloseOnExec, "fds that are not ours are left alone")
	})
}

func TestListenersRejectsDatagramSocket(t *testing.T) {
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	require.NoError(t, err)
	defer udp.Close()
	udpFile, err := udp.File()
	require.NoError(t, err)
	defer udpFile.Close()

	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0"`, os.Args[0])
	cmd.Env = workerEnv("report", "LISTEN_FDS=1", "LISTEN_FDNAMES=dns")
	cmd.ExtraFiles = []*os.File{udpFile}
	r := runReport(t, cmd)
	assert.Nil(t, r.Listeners)
	assert.Contains(t, r.ListenersErr, "worker: passed fd 3 (dns) is not a stream socket to accept on")
}

// clearSupervisorEnv makes the test process look as if no supervisor started it.
func clearSupervisorEnv(t *testing.T) {
	for _, name := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET",
		"WATCHDOG_USEC", "WATCHDOG_PID", EnvWorker, EnvGeneration} {
		t.Setenv(name, "")
	}
}

func TestOutsideForkd(t *testing.T) {
	clearSupervisorEnv(t)
	w, err := New()
	require.NoError(t, err)

	assert.Equal(t, -1, w.Index())
	assert.Equal(t, 0, w.Generation())
	listeners, err := w.Listeners()
	assert.NoError(t, err)
	assert.Empty(t, listeners)
	byName, err := w.ListenersByName()
	assert.NoError(t, err)
	assert.Empty(t, byName)

	sent, err := w.Notify(NotifyReady)
	assert.False(t, sent)
	assert.NoError(t, err)
	assert.NoError(t, w.Ready())
	assert.NoError(t, w.Status("serving %d", 1))
	assert.NoError(t, w.Stopping())
	w.AddRequests(2)
	assert.Equal(t, uint64(2), w.Requests())

	select {
	case <-w.MasterGone():
		t.Fatal("MasterGone closed outside forkd")
	default:
	}

	parent, cancel := context.WithCancelCause(context.Background())
	ctx := w.Run(parent)
	assert.NoError(t, ctx.Err())
	stopped := errors.New("test over")
	cancel(stopped)
	<-ctx.Done()
	assert.ErrorIs(t, context.Cause(ctx), stopped)
}

func TestNotify(t *testing.T) {
	dir := t.TempDir()
	abstract := fmt.Sprintf("@forkd-worker-test-%d", os.Getpid())
	tests := []struct {
		name     string
		socket   string
		listen   string
		wantSent bool
		wantErr  string
	}{
		{"path", filepath.Join(dir, "notify.sock"), filepath.Join(dir, "notify.sock"), true, ""},
		{"abstract", abstract, abstract, true, ""},
		{"unset", "", "", false, ""},
		{"relative path", "notify.sock", "", false, `worker: NOTIFY_SOCKET="notify.sock" is neither an absolute path nor an @abstract name`},
		{"nobody listening", filepath.Join(dir, "gone.sock"), "", false, "worker: notify: dial unixgram"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearSupervisorEnv(t)
			t.Setenv("NOTIFY_SOCKET", tt.socket)
			var conn *net.UnixConn
			if tt.listen != "" {
				conn = listenNotify(t, tt.listen)
			}
			w, err := New()
			require.NoError(t, err)

			sent, err := w.Notify("READY=1\nSTATUS=up")
			assert.Equal(t, tt.wantSent, sent)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				assert.Error(t, w.Ready(), "Ready reports the same failure")
				return
			}
			require.NoError(t, err)
			if conn == nil {
				return
			}
			d, err := receive(conn)
			require.NoError(t, err)
			assert.Equal(t, datagram{pid: os.Getpid(), state: "READY=1\nSTATUS=up"}, d)

			require.NoError(t, w.Status("line one\nline %d", 2))
			d, err = receive(conn)
			require.NoError(t, err)
			assert.Equal(t, "STATUS=line one line 2", d.state)

			require.NoError(t, w.Stopping())
			d, err = receive(conn)
			require.NoError(t, err)
			assert.Equal(t, "STOPPING=1", d.state)
		})
	}
}

func TestNewRejectsMalformedEnvironment(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	tests := []struct {
		env     []string
		wantErr string
	}{
		{[]string{"FORKD_WORKER=one"}, `worker: FORKD_WORKER="one": strconv.Atoi`},
		{[]string{"FORKD_WORKER=-2"}, `worker: FORKD_WORKER=-2: want an index >= 0`},
		{[]string{"FORKD_GENERATION=x"}, `worker: FORKD_GENERATION="x"`},
		{[]string{"WATCHDOG_USEC=soon"}, `worker: WATCHDOG_USEC="soon"`},
		{[]string{"WATCHDOG_USEC=0"}, `worker: WATCHDOG_USEC must be a positive number of microseconds`},
		{[]string{"WATCHDOG_USEC=1000", "WATCHDOG_PID=me"}, `worker: WATCHDOG_PID="me"`},
		{[]string{"LISTEN_PID=me", "LISTEN_FDS=1"}, `worker: LISTEN_PID="me"`},
		// The cases below name this process in LISTEN_PID, so each must fail before New touches
		// the test binary's own fd 3.
		{[]string{"LISTEN_PID=" + self, "LISTEN_FDS=many"}, `worker: LISTEN_FDS="many"`},
		{[]string{"LISTEN_PID=" + self, "LISTEN_FDS=-1"}, `worker: LISTEN_FDS=-1: want a count >= 0`},
		{[]string{"LISTEN_PID=" + self, "LISTEN_FDS=1", "LISTEN_FDNAMES=a:b"}, `worker: LISTEN_FDNAMES="a:b" names 2 sockets, LISTEN_FDS=1`},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.env, " "), func(t *testing.T) {
			clearSupervisorEnv(t)
			for _, kv := range tt.env {
				name, value, _ := strings.Cut(kv, "=")
				t.Setenv(name, value)
			}
			w, err := New()
			assert.Nil(t, w)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			for _, name := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
				_, set := os.LookupEnv(name)
				assert.False(t, set, "%s is unset even when New fails", name)
			}
		})
	}
}

func TestWatchdogFromEnv(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	tests := []struct {
		usec, pid string
		want      time.Duration
	}{
		{"", "", 0},
		{"", self, 0},
		{"200000", "", 200 * time.Millisecond},
		{"200000", self, 200 * time.Millisecond},
		{"200000", "1", 0},
	}
	for _, tt := range tests {
		t.Setenv("WATCHDOG_USEC", tt.usec)
		t.Setenv("WATCHDOG_PID", tt.pid)
		got, err := watchdogFromEnv()
		require.NoError(t, err)
		assert.Equal(t, tt.want, got, "WATCHDOG_USEC=%q WATCHDOG_PID=%q", tt.usec, tt.pid)
	}
}

// TestRunReportsRequests runs the report loop in this process: with heartbeats the count rides on
// them, without heartbeats it is sent on its own.
func TestRunReportsRequests(t *testing.T) {
	for _, tt := range []struct {
		name      string
		watchdog  string
		wantState string
	}{
		{"with heartbeats", "20000", "WATCHDOG=1\nX_FORKD_REQUESTS=5"},
		{"without heartbeats", "", "X_FORKD_REQUESTS=5"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clearSupervisorEnv(t)
			path := filepath.Join(t.TempDir(), "notify.sock")
			conn := listenNotify(t, path)
			t.Setenv("NOTIFY_SOCKET", path)
			t.Setenv("WATCHDOG_USEC", tt.watchdog)
			w, err := New()
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			w.AddRequests(2)
			w.AddRequests(3)
			w.Run(ctx)

			require.NoError(t, conn.SetReadDeadline(time.Now().Add(deadline)))
			for {
				d, err := receive(conn)
				require.NoError(t, err, "waiting for %q", tt.wantState)
				if strings.Contains(d.state, NotifyRequestsPrefix) {
					assert.Equal(t, tt.wantState, d.state)
					break
				}
				assert.Equal(t, NotifyWatchdog, d.state, "heartbeats between counts carry no count")
			}
		})
	}
}
