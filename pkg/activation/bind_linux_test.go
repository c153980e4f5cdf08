package activation_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/activation"
)

// bind binds ls and closes the listeners when the test ends.
func bind(t *testing.T, ls ...activation.Spec) []activation.Listener {
	t.Helper()
	listeners, err := activation.Bind(ls)
	require.NoError(t, err)
	t.Cleanup(func() { activation.CloseAll(listeners) })
	return listeners
}

// requireListening dials address and checks that the connection is established: the kernel
// completes it from the backlog, no accept needed.
func requireListening(t *testing.T, network, address string) {
	t.Helper()
	conn, err := net.Dial(network, address)
	require.NoError(t, err, "dial %s %s", network, address)
	conn.Close()
}

func sockoptInt(t *testing.T, fd, level, opt int) int {
	t.Helper()
	v, err := unix.GetsockoptInt(fd, level, opt)
	require.NoError(t, err)
	return v
}

// requireMasterSocket checks what the master needs of every listener: close-on-exec in the master,
// and still in blocking mode, as systemd would pass it.
func requireMasterSocket(t *testing.T, fd int) {
	t.Helper()
	fdFlags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	require.NoError(t, err)
	assert.NotZero(t, fdFlags&unix.FD_CLOEXEC, "fd %d is not close-on-exec", fd)
	statusFlags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	require.NoError(t, err)
	assert.Zero(t, statusFlags&unix.O_NONBLOCK, "fd %d is non-blocking", fd)
	assert.Equal(t, 1, sockoptInt(t, fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN), "fd %d is not listening", fd)
}

func port(t *testing.T, address string) uint16 {
	t.Helper()
	ap, err := netip.ParseAddrPort(address)
	require.NoError(t, err)
	require.NotZero(t, ap.Port(), "port 0 reported in %s", address)
	return ap.Port()
}

func hasIPv6Loopback() bool {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func abstractName(t *testing.T) string {
	var b [8]byte
	rand.Read(b[:])
	return "@forkd-test/" + t.Name() + "/" + hex.EncodeToString(b[:])
}

func TestBindTCP4(t *testing.T) {
	ls := bind(t, activation.Spec{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"})
	require.Len(t, ls, 1)
	l := ls[0]
	assert.Equal(t, "web", l.Name)
	assert.Equal(t, "tcp4", l.Network)
	assert.True(t, strings.HasPrefix(l.Address, "127.0.0.1:"), l.Address)
	port(t, l.Address)
	requireMasterSocket(t, l.FD)
	assert.Equal(t, 1, sockoptInt(t, l.FD, unix.SOL_SOCKET, unix.SO_REUSEADDR))
	assert.Equal(t, 0, sockoptInt(t, l.FD, unix.SOL_SOCKET, unix.SO_REUSEPORT))
	requireListening(t, "tcp4", l.Address)
}

func TestBindTCP6(t *testing.T) {
	if !hasIPv6Loopback() {
		t.Skip("no IPv6 loopback")
	}
	ls := bind(t, activation.Spec{Name: "web6", Network: "tcp6", Address: "[::1]:0"})
	l := ls[0]
	assert.Equal(t, "tcp6", l.Network)
	assert.True(t, strings.HasPrefix(l.Address, "[::1]:"), l.Address)
	port(t, l.Address)
	requireMasterSocket(t, l.FD)
	assert.Equal(t, 1, sockoptInt(t, l.FD, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY))
	requireListening(t, "tcp6", l.Address)

	// tcp6 with no host is [::], still IPv6-only.
	l = bind(t, activation.Spec{Name: "any6", Network: "tcp6", Address: ":0"})[0]
	assert.Equal(t, "tcp6", l.Network)
	assert.True(t, strings.HasPrefix(l.Address, "[::]:"), l.Address)
	assert.Equal(t, 1, sockoptInt(t, l.FD, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY))
	_, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strings.TrimPrefix(l.Address, "[::]:")))
	assert.Error(t, err, "an IPv6-only socket took an IPv4 connection")
}

func TestBindDualStack(t *testing.T) {
	l := bind(t, activation.Spec{Name: "web", Network: "tcp", Address: ":0"})[0]
	requireMasterSocket(t, l.FD)
	p := port(t, l.Address)
	requireListening(t, "tcp4", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p).String())
	if !hasIPv6Loopback() {
		// Without IPv6 in the kernel "tcp" falls back to 0.0.0.0; with IPv6 merely lacking a
		// loopback address it is still [::].
		if l.Network == "tcp4" {
			assert.True(t, strings.HasPrefix(l.Address, "0.0.0.0:"), l.Address)
			return
		}
	}
	assert.Equal(t, "tcp", l.Network)
	assert.True(t, strings.HasPrefix(l.Address, "[::]:"), l.Address)
	assert.Equal(t, 0, sockoptInt(t, l.FD, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY))
	if hasIPv6Loopback() {
		requireListening(t, "tcp6", netip.AddrPortFrom(netip.IPv6Loopback(), p).String())
	}

	// An explicit IPv4 host makes plain "tcp" an IPv4 socket, and Network says so.
	l = bind(t, activation.Spec{Name: "v4", Network: "tcp", Address: "127.0.0.1:0"})[0]
	assert.Equal(t, "tcp4", l.Network)
}

func TestBindUnixMode(t *testing.T) {
	dir := t.TempDir()
	// A umask that would leave the file more open than 0600 and more closed than 0666: Bind must
	// set the mode itself.
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)

	for _, tc := range []struct {
		mode os.FileMode
		want os.FileMode
	}{
		{0o600, 0o600},
		{0o660, 0o660},
		{0, activation.DefaultSocketMode},
	} {
		path := filepath.Join(dir, tc.mode.String()+".sock")
		l := bind(t, activation.Spec{Name: "app", Network: "unix", Address: path, Mode: tc.mode})[0]
		assert.Equal(t, "unix", l.Network)
		assert.Equal(t, path, l.Address)
		requireMasterSocket(t, l.FD)
		info, err := os.Lstat(path)
		require.NoError(t, err)
		assert.Equal(t, os.ModeSocket, info.Mode().Type())
		assert.Equal(t, tc.want, info.Mode().Perm(), "mode %v", tc.mode)
		requireListening(t, "unix", path)
	}
}

func TestBindUnixAbstract(t *testing.T) {
	name := abstractName(t)
	l := bind(t, activation.Spec{Name: "internal", Network: "unix", Address: name})[0]
	assert.Equal(t, "unix", l.Network)
	assert.Equal(t, name, l.Address)
	requireMasterSocket(t, l.FD)
	requireListening(t, "unix", name)
}

func TestBindUnixRemovesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sock")
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	require.NoError(t, err)
	old.SetUnlinkOnClose(false)
	require.NoError(t, old.Close())
	info, err := os.Lstat(path)
	require.NoError(t, err, "the stale socket file should outlive its socket")
	require.Equal(t, os.ModeSocket, info.Mode().Type())

	l := bind(t, activation.Spec{Name: "app", Network: "unix", Address: path})[0]
	requireListening(t, "unix", path)

	// The connection lands on the new socket.
	conn, err := net.Dial("unix", path)
	require.NoError(t, err)
	defer conn.Close()
	accepted, _, err := unix.Accept(l.FD)
	require.NoError(t, err)
	unix.Close(accepted)
}

func TestBindUnixRefusesSocketInUse(t *testing.T) {
	dir := t.TempDir()
	for _, network := range []string{"unix", "unixgram"} {
		t.Run(network, func(t *testing.T) {
			path := filepath.Join(dir, network+".sock")
			var closer interface{ Close() error }
			var err error
			if network == "unix" {
				closer, err = net.Listen(network, path)
			} else {
				closer, err = net.ListenPacket(network, path)
			}
			require.NoError(t, err)
			defer closer.Close()

			_, err = activation.Bind([]activation.Spec{{Name: "app", Network: "unix", Address: path}})
			require.Error(t, err)
			assert.ErrorIs(t, err, syscall.EADDRINUSE)
			assert.Contains(t, err.Error(), "in use")
			assert.True(t, strings.HasPrefix(err.Error(), "activation: "), err.Error())

			// The other process's socket is untouched and still serves.
			info, err := os.Lstat(path)
			require.NoError(t, err)
			assert.Equal(t, os.ModeSocket, info.Mode().Type())
			if network == "unix" {
				requireListening(t, "unix", path)
			}
		})
	}
}

func TestBindUnixRefusesNonSocket(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "app.sock")
	require.NoError(t, os.WriteFile(file, []byte("precious"), 0o644))
	_, err := activation.Bind([]activation.Spec{{Name: "app", Network: "unix", Address: file}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "is a regular file, not a socket")
	content, err := os.ReadFile(file)
	require.NoError(t, err)
	assert.Equal(t, "precious", string(content))

	sub := filepath.Join(dir, "subdir")
	require.NoError(t, os.Mkdir(sub, 0o755))
	_, err = activation.Bind([]activation.Spec{{Name: "app", Network: "unix", Address: sub}})
	assert.ErrorContains(t, err, "is a directory, not a socket")
	assert.DirExists(t, sub)
}

func TestBindReusePort(t *testing.T) {
	first := bind(t, activation.Spec{Name: "a", Network: "tcp4", Address: "127.0.0.1:0", ReusePort: true})[0]
	assert.Equal(t, 1, sockoptInt(t, first.FD, unix.SOL_SOCKET, unix.SO_REUSEPORT))

	// Two sockets with SO_REUSEPORT share the port.
	second := bind(t, activation.Spec{Name: "b", Network: "tcp4", Address: first.Address, ReusePort: true})[0]
	assert.Equal(t, first.Address, second.Address)

	// A third without it cannot join them.
	_, err := activation.Bind([]activation.Spec{{Name: "c", Network: "tcp4", Address: first.Address}})
	assert.ErrorIs(t, err, syscall.EADDRINUSE)

	// Nor can one with it join a socket without it.
	plain := bind(t, activation.Spec{Name: "d", Network: "tcp4", Address: "127.0.0.1:0"})[0]
	_, err = activation.Bind([]activation.Spec{{Name: "e", Network: "tcp4", Address: plain.Address, ReusePort: true}})
	assert.ErrorIs(t, err, syscall.EADDRINUSE)
}

func TestBindBacklogAndNames(t *testing.T) {
	ls := bind(t,
		activation.Spec{Network: "tcp4", Address: "127.0.0.1:0", Backlog: 1},
		activation.Spec{Name: "second one", Network: "tcp4", Address: "127.0.0.1:0"},
	)
	assert.Equal(t, activation.UnknownName, ls[0].Name, "an empty name gets systemd's default")
	assert.Equal(t, "second one", ls[1].Name)
	assert.Equal(t, []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=unknown:second one"}, activation.WorkerEnv(ls))
}

func TestBindRejectsInvalidListeners(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name     string
		listener activation.Spec
		want     string
	}{
		{"unknown network", activation.Spec{Name: "x", Network: "udp", Address: ":53"}, `unsupported network "udp"`},
		{"colon in name", activation.Spec{Name: "a:b", Network: "tcp4", Address: "127.0.0.1:0"}, "without ':'"},
		{"control character in name", activation.Spec{Name: "a\nb", Network: "tcp4", Address: "127.0.0.1:0"}, "printable ASCII"},
		{"long name", activation.Spec{Name: strings.Repeat("n", 256), Network: "tcp4", Address: "127.0.0.1:0"}, "longer than 255"},
		{"unix reuse_port", activation.Spec{Name: "x", Network: "unix", Address: filepath.Join(dir, "x.sock"), ReusePort: true}, "tcp listeners only"},
		{"unix path too long", activation.Spec{Name: "x", Network: "unix", Address: "/" + strings.Repeat("p", 110)}, "longer than 107 bytes"},
		{"empty unix path", activation.Spec{Name: "x", Network: "unix"}, "empty unix socket address"},
		{"missing directory", activation.Spec{Name: "x", Network: "unix", Address: filepath.Join(dir, "missing", "x.sock")}, "bind: no such file or directory"},
		{"bad port", activation.Spec{Name: "x", Network: "tcp4", Address: "127.0.0.1:http-nonexistent-service"}, "unknown port"},
		{"IPv6 host for tcp4", activation.Spec{Name: "x", Network: "tcp4", Address: "[::1]:0"}, "address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls, err := activation.Bind([]activation.Spec{tc.listener})
			assert.Nil(t, ls)
			require.Error(t, err)
			t.Log(err)
			assert.True(t, strings.HasPrefix(err.Error(), "activation: listener "), err.Error())
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// openFDs lists this process's open descriptors with what they refer to.
func openFDs(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	var fds []string
	for _, e := range entries {
		// The directory's own descriptor is closed by now, and drops out.
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			fds = append(fds, e.Name()+" -> "+target)
		}
	}
	return fds
}

func TestBindClosesEverythingOnError(t *testing.T) {
	dir := t.TempDir()
	taken := bind(t, activation.Spec{Name: "taken", Network: "tcp4", Address: "127.0.0.1:0"})[0]

	for _, tc := range []struct {
		name   string
		ls     []activation.Spec
		failed string
	}{
		{"bind fails on a unix socket", []activation.Spec{
			{Name: "first", Network: "unix", Address: filepath.Join(dir, "first.sock")},
			{Name: "second", Network: "tcp4", Address: "127.0.0.1:0"},
			{Name: "third", Network: "unix", Address: filepath.Join(dir, "missing", "third.sock")},
		}, "third"},
		{"bind fails on a tcp socket", []activation.Spec{
			{Name: "first", Network: "unix", Address: filepath.Join(dir, "first.sock")},
			{Name: "second", Network: "tcp4", Address: taken.Address},
		}, "second"},
		{"invalid listener", []activation.Spec{
			{Name: "first", Network: "unix", Address: filepath.Join(dir, "first.sock")},
			{Name: "second", Network: "tcp4", Address: "127.0.0.1:0"},
			{Name: "third", Network: "sctp", Address: "127.0.0.1:0"},
		}, "third"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := openFDs(t)
			listeners, err := activation.Bind(tc.ls)
			require.Error(t, err)
			assert.Nil(t, listeners)
			assert.Contains(t, err.Error(), `listener "`+tc.failed+`"`)
			assert.Equal(t, before, openFDs(t), "descriptors leaked")
			_, err = os.Lstat(filepath.Join(dir, "first.sock"))
			assert.True(t, errors.Is(err, os.ErrNotExist), "the socket file Bind created is still there: %v", err)
		})
	}
}

func TestOpenBindsWhenNotActivated(t *testing.T) {
	t.Setenv(activation.EnvListenPID, "")
	listeners, activated, err := activation.Open([]activation.Spec{{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"}})
	require.NoError(t, err)
	t.Cleanup(func() { activation.CloseAll(listeners) })
	assert.False(t, activated)
	require.Len(t, listeners, 1)
	assert.Equal(t, "web", listeners[0].Name)
}

func TestWorkerEnvAndFiles(t *testing.T) {
	assert.Nil(t, activation.WorkerEnv(nil), "no listeners, no LISTEN_* variables")
	assert.Empty(t, activation.WorkerFiles(nil))

	ls := []activation.Listener{
		{Name: "web", FD: 7, Network: "tcp", Address: "[::]:80"},
		{Name: "admin", FD: 9, Network: "unix", Address: "/run/admin.sock"},
	}
	assert.Equal(t, []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=web:admin"}, activation.WorkerEnv(ls))
	assert.Equal(t, []uintptr{7, 9}, activation.WorkerFiles(ls))
	assert.Equal(t, "web=tcp://[::]:80", ls[0].String())
}
