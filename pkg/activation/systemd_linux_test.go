package activation_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/proctest"
	"github.com/forkd/forkd/pkg/activation"
)

// openConfig is what the open helper passes to Open; socket activation must make it irrelevant.
var openConfig = []activation.Spec{{Name: "from-config", Network: "tcp4", Address: "127.0.0.1:0"}}

// setListenPID is how systemd's exec sets LISTEN_PID: to the PID of the process it is about to
// exec. sh's $$ is that PID, since exec keeps it.
const setListenPID = `export LISTEN_PID=$$; exec "$0" "$@"`

// activate runs a helper the way systemd runs a socket-activated service: files as fds 3, 4, ...,
// LISTEN_FDS, LISTEN_FDNAMES (unless names is nil), and LISTEN_PID set to the helper's own PID
// (unless listenPID overrides it). It returns the helper's report and PID.
func activate(t *testing.T, helper string, files []uintptr, names []string, listenPID string) (systemdReport, int) {
	t.Helper()
	env := append(baseEnv(helper), activation.EnvListenFDs+"="+strconv.Itoa(len(files)))
	if names != nil {
		env = append(env, activation.EnvListenFDNames+"="+strings.Join(names, ":"))
	}
	argv := []string{"/bin/sh", "-c", setListenPID, proctest.Binary(t)}
	if listenPID != "" {
		env = append(env, activation.EnvListenPID+"="+listenPID)
		argv = []string{proctest.Binary(t)}
	}
	c := proctest.Start(t, argv, env, "", files)
	code, stdout, stderr := c.Wait(t)
	require.Equal(t, 0, code, "helper failed; stderr:\n%s", stderr)
	var report systemdReport
	require.NoError(t, json.Unmarshal([]byte(stdout), &report), "stdout: %q", stdout)
	return report, c.PID
}

// renumbered returns the listeners as the child sees them: as fds 3, 4, ...
func renumbered(ls []activation.Listener) []activation.Listener {
	out := make([]activation.Listener, len(ls))
	for i, l := range ls {
		l.FD = activation.ListenFDsStart + i
		out[i] = l
	}
	return out
}

var listenEnvCleared = map[string]string{
	activation.EnvListenPID:     unset,
	activation.EnvListenFDs:     unset,
	activation.EnvListenFDNames: unset,
}

func TestFromSystemd(t *testing.T) {
	dir := t.TempDir()
	cfg := []activation.Spec{
		{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"},
		{Name: "admin", Network: "unix", Address: filepath.Join(dir, "admin.sock")},
		{Name: "internal", Network: "unix", Address: abstractName(t)},
		{Name: "dual", Network: "tcp", Address: ":0"},
	}
	if hasIPv6Loopback() {
		cfg = append(cfg, activation.Spec{Name: "web6", Network: "tcp6", Address: "[::1]:0"})
	}
	ls := bind(t, cfg...)

	// systemd passes datagram sockets too (ListenDatagram=); forkd hands them on.
	dgram, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(dgram)
	dgramName := abstractName(t)
	require.NoError(t, unix.Bind(dgram, &unix.SockaddrUnix{Name: dgramName}))
	ls = append(ls, activation.Listener{Name: "dgram", FD: dgram, Network: "unixgram", Address: dgramName})

	names := make([]string, len(ls))
	for i, l := range ls {
		names[i] = l.Name
	}
	report, pid := activate(t, helperFromSystemd, activation.WorkerFiles(ls), names, "")

	assert.Empty(t, report.Err)
	assert.Equal(t, pid, report.PID)
	assert.Equal(t, renumbered(ls), report.Listeners)
	assert.Equal(t, listenEnvCleared, report.EnvAfter)
	for fd, cloexec := range report.CloseOnExec {
		assert.True(t, cloexec, "fd %d is not close-on-exec", fd)
	}
	assert.Len(t, report.CloseOnExec, len(ls))
}

func TestFromSystemdWithoutNames(t *testing.T) {
	ls := bind(t,
		activation.Spec{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"},
		activation.Spec{Name: "api", Network: "tcp4", Address: "127.0.0.1:0"},
	)
	report, _ := activate(t, helperFromSystemd, activation.WorkerFiles(ls), nil, "")
	require.Empty(t, report.Err)
	require.Len(t, report.Listeners, 2)
	for _, l := range report.Listeners {
		assert.Equal(t, activation.UnknownName, l.Name)
	}
}

func TestFromSystemdIgnoresAnotherPID(t *testing.T) {
	ls := bind(t, activation.Spec{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"})
	// PID 1 is never the helper: the variables were meant for some ancestor.
	report, _ := activate(t, helperFromSystemd, activation.WorkerFiles(ls), []string{"web"}, "1")
	assert.Empty(t, report.Err)
	assert.Nil(t, report.Listeners)
	assert.Equal(t, listenEnvCleared, report.EnvAfter, "the variables must be removed even when they are not ours")
	assert.Equal(t, map[int]bool{3: false}, report.CloseOnExec, "a descriptor that is not ours must be left alone")
}

func TestOpenWhenActivated(t *testing.T) {
	ls := bind(t, activation.Spec{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"})
	report, _ := activate(t, helperOpen, activation.WorkerFiles(ls), []string{"web"}, "")
	require.Empty(t, report.Err)
	assert.True(t, report.Activated)
	assert.Equal(t, renumbered(ls), report.Listeners, "the config's listeners must be ignored")
}

func TestFromSystemdRejectsUnusableDescriptors(t *testing.T) {
	file, err := os.Create(filepath.Join(t.TempDir(), "not-a-socket"))
	require.NoError(t, err)
	defer file.Close()

	// Accept=yes hands a connection over instead of the listening socket.
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])

	web := bind(t, activation.Spec{Name: "web", Network: "tcp4", Address: "127.0.0.1:0"})[0]

	for _, tc := range []struct {
		name  string
		files []uintptr
		env   string
		want  string
	}{
		{"regular file", []uintptr{file.Fd()}, "", `fd 3 ("file") from systemd: is a regular file, not a socket`},
		{"connection", []uintptr{uintptr(pair[0])}, "", `fd 3 ("file") from systemd: is a connection, not a listening socket`},
		{"second descriptor missing", []uintptr{uintptr(web.FD)}, "2", "fd 4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			names := []string{"file"}
			if tc.env == "2" {
				names = []string{"web", "missing"}
			}
			report := activateWithCount(t, tc.files, names, tc.env)
			assert.Nil(t, report.Listeners)
			assert.True(t, strings.HasPrefix(report.Err, "activation: "), report.Err)
			t.Log(report.Err)
			assert.Contains(t, report.Err, tc.want)
			assert.Equal(t, listenEnvCleared, report.EnvAfter)
		})
	}
}

// activateWithCount is activate with LISTEN_FDS overridden (count != ""), to announce more
// descriptors than were passed.
func activateWithCount(t *testing.T, files []uintptr, names []string, count string) systemdReport {
	t.Helper()
	if count == "" {
		count = strconv.Itoa(len(files))
	}
	env := append(baseEnv(helperFromSystemd),
		activation.EnvListenFDs+"="+count,
		activation.EnvListenFDNames+"="+strings.Join(names, ":"))
	c := proctest.Start(t, []string{"/bin/sh", "-c", setListenPID, proctest.Binary(t)}, env, "", files)
	code, stdout, stderr := c.Wait(t)
	require.Equal(t, 0, code, "helper failed; stderr:\n%s", stderr)
	var report systemdReport
	require.NoError(t, json.Unmarshal([]byte(stdout), &report), "stdout: %q", stdout)
	return report
}

// These cases fail on the variables alone, before any descriptor is looked at, so they can run
// in the test process itself.
func TestFromSystemdRejectsMalformedVariables(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		name              string
		pid, fds, fdNames string
		want              string
	}{
		{"PID not a number", "self", "1", "", `LISTEN_PID="self" is not a PID`},
		{"FDS not a number", self, "two", "", `LISTEN_FDS="two" is not a count`},
		{"FDS negative", self, "-1", "", `LISTEN_FDS="-1" is not a count`},
		{"too few names", self, "2", "web", "LISTEN_FDNAMES has 1 names for LISTEN_FDS=2"},
		{"too many names", self, "1", "web:api", "LISTEN_FDNAMES has 2 names for LISTEN_FDS=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(activation.EnvListenPID, tc.pid)
			t.Setenv(activation.EnvListenFDs, tc.fds)
			t.Setenv(activation.EnvListenFDNames, tc.fdNames)
			ls, err := activation.FromSystemd()
			assert.Nil(t, ls)
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), "activation: "+tc.want), err.Error())
			for _, key := range []string{activation.EnvListenPID, activation.EnvListenFDs, activation.EnvListenFDNames} {
				_, ok := os.LookupEnv(key)
				assert.False(t, ok, "%s still set", key)
			}
		})
	}
}

func TestFromSystemdNotActivated(t *testing.T) {
	for _, tc := range []struct {
		name     string
		pid, fds string
	}{
		{"nothing set", "", ""},
		{"another PID", "1", "1"},
		{"no LISTEN_FDS", strconv.Itoa(os.Getpid()), ""},
		{"zero descriptors", strconv.Itoa(os.Getpid()), "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(activation.EnvListenPID, tc.pid)
			t.Setenv(activation.EnvListenFDs, tc.fds)
			ls, err := activation.FromSystemd()
			assert.NoError(t, err)
			assert.Nil(t, ls)
		})
	}
}
