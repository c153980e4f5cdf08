package notify_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/notify"
)

// The test binary doubles as a worker that notifies through go-systemd, a real sd_notify SDK,
// when helperEnv is set.
const (
	helperEnv  = "FORKD_NOTIFY_TEST_HELPER"
	messageEnv = "FORKD_NOTIFY_TEST_MESSAGE"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "sd_notify" {
		sent, err := daemon.SdNotify(false, os.Getenv(messageEnv))
		if !sent || err != nil {
			fmt.Fprintf(os.Stderr, "SdNotify: sent=%v err=%v\n", sent, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// hangTimeout bounds a wait that should end at once; it only keeps a broken test from hanging.
const hangTimeout = time.Minute

func listen(t *testing.T, addr string) *notify.Socket {
	t.Helper()
	s, err := notify.Listen(addr)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	return s
}

// receive calls Receive, failing the test instead of hanging when nothing arrives.
func receive(t *testing.T, s *notify.Socket) notify.Datagram {
	t.Helper()
	type result struct {
		d   notify.Datagram
		err error
	}
	done := make(chan result, 1)
	go func() {
		d, err := s.Receive()
		done <- result{d, err}
	}()
	select {
	case r := <-done:
		require.NoError(t, r.err)
		return r.d
	case <-time.After(hangTimeout):
		t.Fatalf("no datagram after %v", hangTimeout)
		return notify.Datagram{}
	}
}

func TestReceiveOwnCredentials(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	s := listen(t, path)
	assert.Equal(t, path, s.Addr())

	// notify.Send attaches no credentials; SO_PASSCRED makes the kernel add them.
	require.NoError(t, notify.Send(s.Addr(), "READY=1\nSTATUS=up"))
	d := receive(t, s)
	assert.Equal(t, notify.Datagram{
		PID: os.Getpid(), UID: os.Getuid(), GID: os.Getgid(), Data: []byte("READY=1\nSTATUS=up"),
	}, d)
}

func TestReceiveChildCredentials(t *testing.T) {
	s := listen(t, notify.NewAbstractAddr())
	self, err := os.Executable()
	require.NoError(t, err)

	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(),
		helperEnv+"=sd_notify",
		messageEnv+"=READY=1\nX_FORKD_REQUESTS=7",
		"NOTIFY_SOCKET="+s.Addr(),
	)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "helper output:\n%s", out)

	d := receive(t, s)
	assert.Equal(t, cmd.Process.Pid, d.PID, "the sender is the child, not this process")
	assert.NotEqual(t, os.Getpid(), d.PID)
	msg, err := notify.Parse(d.Data)
	require.NoError(t, err)
	assert.True(t, msg.Ready)
	assert.Equal(t, uint64(7), msg.Requests)
}

func TestAbstractAddress(t *testing.T) {
	addr := notify.NewAbstractAddr()
	assert.Regexp(t, regexp.MustCompile(`^@forkd/`+strconv.Itoa(os.Getpid())+`/[0-9a-f]{16}$`), addr)
	assert.NotEqual(t, addr, notify.NewAbstractAddr(), "addresses must not repeat")

	s := listen(t, addr)
	assert.Equal(t, addr, s.Addr())
	require.NoError(t, notify.Send(addr, notify.Watchdog))
	d := receive(t, s)
	assert.Equal(t, []byte(notify.Watchdog), d.Data)
	assert.Equal(t, os.Getpid(), d.PID)

	// The abstract name is taken while the socket lives.
	_, err := notify.Listen(addr)
	assert.ErrorIs(t, err, syscall.EADDRINUSE)
}

// TestPathSocketOnlyForItsOwner: a path socket's file is 0600 whatever the umask, so another user
// cannot send to it, here with systemd-notify(1) run as nobody; its owner (and root) can.
func TestPathSocketOnlyForItsOwner(t *testing.T) {
	dir, err := os.MkdirTemp("", "forkd-notify-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755)) // nothing but the socket's own mode stands in the way
	old := unix.Umask(0)
	path := filepath.Join(dir, "notify.sock")
	s, err := notify.Listen(path)
	unix.Umask(old)
	require.NoError(t, err)
	t.Cleanup(func() { s.Close() })
	info, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	if os.Geteuid() != 0 {
		t.Skip("sending as another user needs root")
	}
	notifyTool, err := exec.LookPath("systemd-notify")
	if err != nil {
		t.Skip("systemd-notify is not installed (Debian: systemd)")
	}
	cmd := exec.Command(notifyTool, "--no-block", "STATUS=from nobody")
	cmd.Env = []string{"NOTIFY_SOCKET=" + path}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	assert.Error(t, err, "nobody could send to a 0600 socket: %s", out)
	assert.Contains(t, string(out), "Permission denied")

	require.NoError(t, notify.Send(path, "STATUS=from its owner"))
	d := receive(t, s)
	assert.Equal(t, "STATUS=from its owner", string(d.Data), "nothing from nobody came before it")
}

// TestSetReadDeadlineDrains: before the deadline, what is queued is still read; after it, Receive
// fails, so a reader can empty a socket before closing it.
func TestSetReadDeadlineDrains(t *testing.T) {
	s := listen(t, notify.NewAbstractAddr())
	require.NoError(t, notify.Send(s.Addr(), "STOPPING=1"))
	require.NoError(t, notify.Send(s.Addr(), "STATUS=late"))
	require.NoError(t, s.SetReadDeadline(time.Now().Add(hangTimeout)))
	assert.Equal(t, "STOPPING=1", string(receive(t, s).Data))
	assert.Equal(t, "STATUS=late", string(receive(t, s).Data))
	require.NoError(t, s.SetReadDeadline(time.Now()))
	_, err := s.Receive()
	assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
}

func TestListenMakesPathAbsolute(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	s := listen(t, "notify.sock")
	assert.Equal(t, filepath.Join(dir, "notify.sock"), s.Addr())
}

func TestCloseRemovesSocketFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	s, err := notify.Listen(path)
	require.NoError(t, err)
	assert.FileExists(t, path)
	require.NoError(t, s.Close())
	_, err = os.Lstat(path)
	assert.True(t, errors.Is(err, os.ErrNotExist), "socket file left behind: %v", err)
	assert.ErrorIs(t, s.Close(), net.ErrClosed)
}

func TestListenErrors(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing")
	require.NoError(t, os.WriteFile(existing, nil, 0o644))

	_, err := notify.Listen("")
	assert.ErrorContains(t, err, "notify: listen: empty address")
	_, err = notify.Listen(existing)
	assert.ErrorIs(t, err, syscall.EADDRINUSE)
	assert.FileExists(t, existing, "Listen must not remove what is in its way")
	_, err = notify.Listen(filepath.Join(dir, "missing", "notify.sock"))
	assert.ErrorContains(t, err, "notify: listen on ")
	assert.ErrorIs(t, err, syscall.ENOENT)
}

func TestSendErrors(t *testing.T) {
	err := notify.Send(filepath.Join(t.TempDir(), "nobody.sock"), notify.Ready)
	assert.ErrorContains(t, err, "notify: send to ")
	assert.ErrorIs(t, err, syscall.ENOENT)
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(entries)
}

func TestReleaseClosesPassedFDs(t *testing.T) {
	s := listen(t, notify.NewAbstractAddr())
	// What sd_pid_notify_with_fds(3) does.
	sender, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(sender)

	for _, count := range []int{1, 2, 253} {
		t.Run(strconv.Itoa(count), func(t *testing.T) {
			// A non-blocking pipe: once every copy of the write end is closed, a read returns
			// EOF at once; while a copy lives anywhere in this process, it returns EAGAIN.
			var pipe [2]int
			require.NoError(t, unix.Pipe2(pipe[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
			readEnd, writeEnd := pipe[0], pipe[1]
			defer unix.Close(readEnd)

			passed := make([]int, count)
			for i := range passed {
				passed[i] = writeEnd
			}
			before := openFDs(t)
			err := unix.Sendmsg(sender, []byte("FDSTORE=1\nFDNAME=db"), unix.UnixRights(passed...), &unix.SockaddrUnix{Name: s.Addr()}, 0)
			require.NoError(t, err)
			d := receive(t, s)
			assert.Equal(t, count, d.FDs)
			assert.Greater(t, openFDs(t), before, "passed descriptors are held until Release")
			d.Release()
			d.Release()
			assert.Equal(t, os.Getpid(), d.PID)
			assert.Equal(t, "FDSTORE=1\nFDNAME=db", string(d.Data))
			assert.Equal(t, before, openFDs(t), "received descriptors leaked")

			require.NoError(t, unix.Close(writeEnd))
			n, err := unix.Read(readEnd, make([]byte, 1))
			assert.NoError(t, err, "a copy of the pipe's write end is still open")
			assert.Zero(t, n)
		})
	}
}

func TestReceiveTruncated(t *testing.T) {
	s := listen(t, notify.NewAbstractAddr())
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: s.Addr(), Net: "unixgram"})
	require.NoError(t, err)
	defer conn.Close()

	huge := "STATUS=" + strings.Repeat("x", 70<<10)
	_, err = conn.Write([]byte(huge))
	require.NoError(t, err)
	d := receive(t, s)
	assert.True(t, d.Truncated)
	assert.Len(t, d.Data, notify.MaxMessageSize+1)
	assert.Equal(t, os.Getpid(), d.PID)
	_, err = notify.Parse(d.Data)
	assert.ErrorContains(t, err, "exceeds the limit", "a truncated datagram must never parse")

	// The largest valid message arrives whole, and the socket goes on working.
	largest := "STATUS=" + strings.Repeat("y", notify.MaxMessageSize-len("STATUS="))
	_, err = conn.Write([]byte(largest))
	require.NoError(t, err)
	d = receive(t, s)
	assert.False(t, d.Truncated)
	assert.Equal(t, largest, string(d.Data))
	msg, err := notify.Parse(d.Data)
	require.NoError(t, err)
	assert.True(t, msg.HasStatus)
}

func TestReceiveEmptyDatagram(t *testing.T) {
	s := listen(t, notify.NewAbstractAddr())
	require.NoError(t, notify.Send(s.Addr(), ""))
	d := receive(t, s)
	assert.Empty(t, d.Data)
	assert.False(t, d.Truncated)
	assert.Equal(t, os.Getpid(), d.PID)
}

func TestCloseUnblocksReceive(t *testing.T) {
	s, err := notify.Listen(notify.NewAbstractAddr())
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := s.Receive()
		done <- err
	}()
	// Whether Receive is already waiting or not yet called, it must end with net.ErrClosed.
	require.NoError(t, s.Close())
	select {
	case err := <-done:
		assert.ErrorIs(t, err, net.ErrClosed)
		assert.ErrorContains(t, err, "notify: receive: ")
	case <-time.After(hangTimeout):
		t.Fatalf("Receive still blocked %v after Close", hangTimeout)
	}
	_, err = s.Receive()
	assert.ErrorIs(t, err, net.ErrClosed)
}

func TestSendFDsPassesDescriptors(t *testing.T) {
	s, err := notify.Listen(notify.NewAbstractAddr())
	require.NoError(t, err)
	defer s.Close()
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	require.NoError(t, notify.SendFDs(s.Addr(), "FDSTORE=1\nFDNAME=http", []int{int(w.Fd())}))
	d, err := s.Receive()
	require.NoError(t, err)
	defer d.Release()
	assert.Equal(t, "FDSTORE=1\nFDNAME=http", string(d.Data))
	assert.Equal(t, 1, d.FDs)
}
