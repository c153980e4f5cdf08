package control

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// makeStaleSocket leaves a socket file at path that nobody listens on, as a forkd that was killed
// does.
func makeStaleSocket(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrUnix{Name: path}))
}

func TestListenSocketMode(t *testing.T) {
	// A permissive umask must not leak into the socket's mode.
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	socket := filepath.Join(t.TempDir(), "control.sock")
	l, err := Listen(socket)
	require.NoError(t, err)
	defer l.Close()

	info, err := os.Stat(socket)
	require.NoError(t, err)
	require.Equal(t, fs.ModeSocket, info.Mode().Type())
	require.Equal(t, fs.FileMode(0o600), info.Mode().Perm())
}

func TestListenCreatesParentDirectory(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)

	dir := filepath.Join(t.TempDir(), "run", "forkd")
	l, err := Listen(filepath.Join(dir, "control.sock"))
	require.NoError(t, err)
	defer l.Close()

	info, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o755), info.Mode().Perm())
}

func TestListenRefusesLiveSocket(t *testing.T) {
	s := startServer(t, &fakeBackend{})

	_, err := Listen(s.socket)
	require.ErrorIs(t, err, ErrAlreadyRunning)
	require.EqualError(t, err, "control: forkd is already running on "+s.socket)

	// The running forkd keeps its socket.
	_, err = s.client.Status(context.Background())
	require.NoError(t, err)
}

func TestListenReplacesStaleSocket(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	makeStaleSocket(t, socket)

	s := startServerAt(t, &fakeBackend{}, socket)
	_, err := s.client.Status(context.Background())
	require.NoError(t, err)
}

func TestListenRefusesNonSocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "control.sock")
	require.NoError(t, os.WriteFile(file, []byte("precious"), 0o644))

	_, err := Listen(file)
	require.ErrorContains(t, err, "exists and is not a socket")
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Equal(t, "precious", string(data), "Listen must leave a file that is not a socket alone")

	_, err = Listen(dir)
	require.ErrorContains(t, err, "exists and is not a socket")
}

func TestListenRefusesTooLongPath(t *testing.T) {
	_, err := Listen(filepath.Join(t.TempDir(), strings.Repeat("x", 120)+".sock"))
	require.ErrorContains(t, err, "is too long")
}

func TestListenerIsCloseOnExecAndUnlinksOnClose(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	l, err := Listen(socket)
	require.NoError(t, err)

	raw, err := l.(*net.UnixListener).SyscallConn()
	require.NoError(t, err)
	var flags int
	var flagsErr error
	require.NoError(t, raw.Control(func(fd uintptr) {
		flags, flagsErr = unix.FcntlInt(fd, unix.F_GETFD, 0)
	}))
	require.NoError(t, flagsErr)
	require.NotZero(t, flags&unix.FD_CLOEXEC, "the control socket must not leak into workers")

	require.NoError(t, l.Close())
	require.NoFileExists(t, socket)
}

// A client running as another uid reaches the server (the socket is widened to 0666 for this test)
// and is turned away by the peer-credential check.
func TestPeerWithAnotherUIDIsForbidden(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	const nobody = 65534
	defer func(mode uint32) { socketMode = mode }(socketMode)
	socketMode = 0o666

	// t.TempDir's directories are 0700, so nobody could reach neither the socket nor a binary.
	dir, err := os.MkdirTemp("", "forkd-control-peer-")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	client := filepath.Join(dir, "control.test")
	copyExecutable(t, client)

	s := startServerAt(t, &fakeBackend{}, filepath.Join(dir, "control.sock"))

	cmd := exec.Command(client)
	cmd.Env = append(os.Environ(), peerClientEnv+"="+s.socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "peer client: %s", stderr.String())

	var got peerOutcome
	require.NoError(t, json.Unmarshal(stdout.Bytes(), &got), "peer client said %q", stdout.String())
	require.Equal(t, peerOutcome{
		UID:     nobody,
		Code:    http.StatusForbidden,
		Message: "uid 65534 may not use forkd's control API (allowed: root)",
	}, got)
}

func copyExecutable(t *testing.T, dst string) {
	t.Helper()
	self, err := os.Executable()
	require.NoError(t, err)
	in, err := os.Open(self)
	require.NoError(t, err)
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(out, in)
	require.NoError(t, err)
	require.NoError(t, out.Close())
}
