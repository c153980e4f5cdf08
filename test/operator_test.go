package test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// What an operator meets first: quick mode as the README shows it, and the messages of commands
// that cannot do what they were asked.

// freePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// plainApp copies examples/plain/app.py, an app that speaks neither sd_notify nor a forkd SDK, into
// a new directory as app.py, and returns the directory.
func plainApp(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("..", "examples", "plain", "app.py"))
	require.NoError(t, err)
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "app.py"), src, 0o644))
	return dir
}

// TestREADMEQuickModeExample runs the README's quick-mode line, `forkd --workers 4 --listen
// tcp://127.0.0.1:8080 -- python3 app.py`, with a plain app: the python3 first on PATH (the app
// needs only the standard library), a free port instead of 8080, and a control socket of its own
// so that it does not meet other forkds. It used to wait 60 s for a READY=1 that never came, kill
// every worker and start over.
func TestREADMEQuickModeExample(t *testing.T) {
	t.Parallel()
	python, err := exec.LookPath("python3")
	require.NoError(t, err)
	t.Logf("python3 is %s", python)
	dir := plainApp(t)
	socket := filepath.Join(dir, "control.sock")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	f := startQuickMode(t, dir, socket,
		"--workers", "4", "--listen", "tcp://"+addr, "--socket", socket, "--", "python3", "app.py")
	f.waitReady(4)
	assert.Contains(t, get(t, "http://"+addr+"/"), "hello from pid")
}

// TestQuickModeMessagesNameFlags: in quick mode there is no file, so advice names the flags.
func TestQuickModeMessagesNameFlags(t *testing.T) {
	t.Parallel()
	dir := plainApp(t)
	socket := filepath.Join(dir, "control.sock")
	f := startQuickMode(t, dir, socket, "--workers", "1", "--listen", "tcp://127.0.0.1:0", "--socket", socket,
		"--readiness", "notify", "--boot-timeout", "1s", "--", "python3", "app.py")
	waitUntil(t, "the boot timeout", func() bool { return strings.Contains(f.output.String(), "did not become ready") })
	assert.Contains(t, f.output.String(), "an app that does not speak sd_notify needs --readiness started")

	out, code := f.forkctl("refork")
	assert.Equal(t, 1, code, out)
	assert.Contains(t, out, "a refork needs fork-worker mode (--fork-worker, and an app on a forkd SDK)")
}

// TestReforkInExecMode: forkctl refork used to answer "not ready" in exec mode; it says what is
// wrong and what to do.
func TestReforkInExecMode(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n"})
	f.waitReady(2)
	out, code := f.forkctl("refork")
	assert.Equal(t, 1, code, out)
	assert.Equal(t, "forkctl: forkd runs in exec mode, and a refork needs fork-worker mode (a fork_worker block in the config, "+
		"and an app on a forkd SDK); to replace every worker, use forkctl reload\n", out)

	// With a fork_worker block, but an app that cannot fork.
	g := startForkd(t, options{config: worker() + "\nworkers = 2\nfork_worker {}\n"})
	g.waitReady(2)
	out, code = g.forkctl("refork")
	assert.Equal(t, 1, code, out)
	assert.Contains(t, out, "forkd runs in exec mode, because worker 0 did not say it can fork")
	assert.NotContains(t, out, "not ready")
}

// TestSecondQuickModeInstance: two quick-mode forkds would share the default control socket of
// their name; the second says so, and how to name it apart. forkctl --name reaches each.
func TestSecondQuickModeInstance(t *testing.T) {
	t.Parallel()
	name := fmt.Sprintf("forkd-test-%d", os.Getpid())
	socket := filepath.Join("/run/forkd", name, "control.sock")
	if os.Geteuid() != 0 {
		t.Skip("the default control socket of a non-root forkd depends on XDG_RUNTIME_DIR; this test runs as root")
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(socket)) })
	dir := t.TempDir()
	app := filepath.Join(bin, "testworker")
	first := startQuickMode(t, dir, socket, "--name", name, "--workers", "1", "--listen", "tcp://127.0.0.1:0", "--", app)
	first.waitReady(1)

	cmd := exec.Command(filepath.Join(bin, "forkd"), "--name", name, "--workers", "1", "--listen", "tcp://127.0.0.1:0", "--", app)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	assert.Equal(t, 1, ee.ExitCode())
	assert.Contains(t, string(out), "another forkd already runs as instance")
	assert.Contains(t, string(out), fmt.Sprintf("(control socket %s): give this one a name of its own with --name NAME, "+
		"and reach it with forkctl --name NAME", socket))

	status, code := runForkctl(t, "--name", name, "status")
	require.Equal(t, 0, code, status)
	assert.Contains(t, status, "1/1 ready")
}

// TestPortInUseIsReportedOnce: a port already in use was printed twice, with the internal prefix
// "activation:".
func TestPortInUseIsReportedOnce(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	dir := t.TempDir()
	cmd := exec.Command(filepath.Join(bin, "forkd"), "--workers", "1", "--listen", "tcp://"+l.Addr().String(),
		"--socket", filepath.Join(dir, "control.sock"), "--", filepath.Join(bin, "testworker"))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	assert.Equal(t, 1, ee.ExitCode())
	assert.Equal(t, 1, strings.Count(string(out), "address already in use"), "%s", out)
	assert.Contains(t, string(out), fmt.Sprintf(`listener \"listen0\" (tcp://%s): bind: address already in use`, l.Addr()))
	assert.NotContains(t, string(out), "activation:")
}

// TestForkdCheckWithoutArgument: `forkd check` alone printed cobra's bare "accepts 1 arg(s),
// received 0".
func TestForkdCheckWithoutArgument(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(filepath.Join(bin, "forkd"), "check").CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	assert.Equal(t, 2, ee.ExitCode())
	assert.Equal(t, "forkd: check takes one argument, the config file, like forkd check /etc/forkd/app.hcl; got 0\n", string(out))
}
