package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// forkctlBinary is forkctl as built by TestMain; the tests run it as an operator would.
var forkctlBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "forkctl-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	forkctlBinary = filepath.Join(dir, "forkctl")
	build := exec.Command("go", "build", "-o", forkctlBinary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building forkctl:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is how a forkctl run ended.
type result struct {
	code           int
	stdout, stderr string
}

// forkctl runs the binary with args; env entries are added to an environment without
// FORKD_SOCKET.
func forkctl(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return startForkctl(t, env, args...)()
}

// startForkctl starts forkctl as forkctl does, and returns a function that waits for it to end.
// Both must be called from the test's goroutine.
func startForkctl(t *testing.T, env []string, args ...string) func() result {
	t.Helper()
	cmd := exec.Command(forkctlBinary, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, socketEnv+"=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("running forkctl %s: %v", strings.Join(args, " "), err)
	}
	return func() result {
		t.Helper()
		err := cmd.Wait()
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			t.Fatalf("running forkctl %s: %v", strings.Join(args, " "), err)
		}
		return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
	}
}

// fakeBackend records commands and answers with its fields.
type fakeBackend struct {
	status    control.Status
	statusErr error
	// statusBlocks makes Status wait until its context ends.
	statusBlocks bool
	stopErr      error
	stops        chan control.StopRequest
	scaleErr     error
	scales       chan control.ScaleRequest
	// rolloutErr is the answer of Refork, Reload and Restart; without it they answer with
	// generation 4.
	rolloutErr error
	// rolloutBlocks makes Refork, Reload and Restart wait until their context ends, as a rollout
	// with Wait that takes long, or a restart whose exec cuts the connection, do.
	rolloutBlocks bool
	reforks       chan control.ReforkRequest
	reloads       chan control.ReloadRequest
	restarts      chan control.RestartRequest
	// queuedBehind, when set, is what a reload or refork without Wait waits for.
	queuedBehind string
	// events is what Events streams.
	events *control.EventHub
	// servedPerStatus, when set, adds this many requests to worker 0's count at each Status.
	servedPerStatus uint64
	statusCalls     atomic.Uint64
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		status:   sampleStatus(),
		stops:    make(chan control.StopRequest, 10),
		scales:   make(chan control.ScaleRequest, 10),
		reforks:  make(chan control.ReforkRequest, 10),
		reloads:  make(chan control.ReloadRequest, 10),
		restarts: make(chan control.RestartRequest, 10),
		events:   control.NewEventHub(),
	}
}

func (b *fakeBackend) Events(ctx context.Context, req control.EventsRequest) (<-chan control.Event, error) {
	return b.events.Subscribe(ctx, req)
}

func (b *fakeBackend) Status(ctx context.Context) (control.Status, error) {
	if b.statusBlocks {
		<-ctx.Done()
		return control.Status{}, ctx.Err()
	}
	st := b.status
	if n := b.statusCalls.Add(1); b.servedPerStatus > 0 {
		st.WorkerList = slices.Clone(st.WorkerList)
		st.WorkerList[0].Requests += n * b.servedPerStatus
	}
	return st, b.statusErr
}

func (b *fakeBackend) Stop(_ context.Context, req control.StopRequest) error {
	b.stops <- req
	return b.stopErr
}

func (b *fakeBackend) Scale(_ context.Context, req control.ScaleRequest) (control.ScaleResponse, error) {
	b.scales <- req
	if b.scaleErr != nil {
		return control.ScaleResponse{}, b.scaleErr
	}
	const current = 4
	if req.Workers != 0 {
		return control.ScaleResponse{Workers: req.Workers, Previous: current}, nil
	}
	return control.ScaleResponse{Workers: current + req.Delta, Previous: current}, nil
}

// rollout answers a rollout command: with rolloutErr, after ctx if rolloutBlocks, else generation 4.
func (b *fakeBackend) rollout(ctx context.Context) (int, error) {
	if b.rolloutBlocks {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	if b.rolloutErr != nil {
		return 0, b.rolloutErr
	}
	return 4, nil
}

func (b *fakeBackend) Refork(ctx context.Context, req control.ReforkRequest) (control.ReforkResponse, error) {
	b.reforks <- req
	gen, err := b.rollout(ctx)
	return control.ReforkResponse{Generation: gen}, err
}

func (b *fakeBackend) Reload(ctx context.Context, req control.ReloadRequest) (control.ReloadResponse, error) {
	b.reloads <- req
	gen, err := b.rollout(ctx)
	return control.ReloadResponse{Generation: gen, Queued: b.queuedBehind}, err
}

func (b *fakeBackend) Restart(ctx context.Context, req control.RestartRequest) (control.RestartResponse, error) {
	b.restarts <- req
	gen, err := b.rollout(ctx)
	return control.RestartResponse{Generation: gen}, err
}

// serve runs a control server for b on a socket in a temporary directory and returns the socket.
func serve(t *testing.T, b control.Backend) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "control.sock")
	serveAt(t, b, socket)
	return socket
}

// serveAt runs a control server for b on socket.
func serveAt(t *testing.T, b control.Backend, socket string) {
	t.Helper()
	l, err := control.Listen(socket)
	require.NoError(t, err)
	srv := control.NewServer(b, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
		require.NoError(t, <-served)
	})
}

func sampleStatus() control.Status {
	started := time.Now().Add(-(2*time.Hour + 5*time.Minute)).UTC().Truncate(time.Second)
	return control.Status{
		Name:            "demo",
		Version:         "forkd 9.9.9 (abcdef123456, go1.26.8)",
		MasterPID:       4242,
		StartedAt:       started,
		Uptime:          control.Duration(2*time.Hour + 5*time.Minute),
		Phase:           control.PhaseRunning,
		Generation:      3,
		Workers:         2,
		Ready:           1,
		Mode:            control.ModeExec,
		SocketActivated: true,
		Listeners:       []control.Listener{{Name: "http", Address: "tcp://0.0.0.0:8080"}},
		StatusLine:      "1/2 workers ready",
		WorkerList: []control.Worker{
			{Index: 0, PID: 4300, Generation: 3, State: control.WorkerReady, StartedAt: started,
				Uptime: control.Duration(2*time.Hour + 4*time.Minute + 59*time.Second), StatusLine: "serving\tlots",
				Requests: 1523},
			{Index: 1, Generation: 3, State: control.WorkerBackoff, Restarts: 5, LastExit: "exit status 1",
				NextRestart: time.Now().Add(time.Hour).UTC()},
		},
		DroppedNotifications: 7,
		Strays:               2,
	}
}

func TestStatusTable(t *testing.T) {
	socket := serve(t, newFakeBackend())

	r := forkctl(t, nil, "--socket", socket, "status")
	require.Equal(t, 0, r.code, r.stderr)
	require.Empty(t, r.stderr)

	header, table, ok := strings.Cut(r.stdout, "\n\n")
	require.True(t, ok, "a blank line separates the summary from the workers:\n%s", r.stdout)
	header += "\n"
	for _, line := range []string{
		"name:                  demo",
		"master pid:            4242",
		"uptime:                2h5m",
		"phase:                 running (generation 3)",
		"mode:                  exec",
		"workers:               1/2 ready",
		"listeners:             http tcp://0.0.0.0:8080 (socket-activated)",
		"dropped notifications: 7",
		"strays:                2 (left behind by workers, being stopped)",
		"status:                1/2 workers ready",
	} {
		require.Contains(t, header, line+"\n")
	}

	rows := strings.Split(strings.TrimSuffix(table, "\n"), "\n")
	require.Len(t, rows, 3, table)
	require.Equal(t, []string{"INDEX", "PID", "GEN", "ROLE", "STATE", "UPTIME", "RESTARTS", "REQUESTS", "PSS", "SHARED", "PRIVATE", "STATUS"},
		strings.Fields(rows[0]))
	require.Equal(t, []string{"0", "4300", "3", "exec", "ready", "2h4m", "0", "1523", "-", "-", "-", "serving", "lots"},
		strings.Fields(rows[1]))
	// The status column starts where its header does.
	require.Equal(t, strings.Index(rows[0], "STATUS"), strings.Index(rows[1], "serving"))
	require.Regexp(t, `^1 +- +3 +- +backoff +- +5 +0 +- +- +- +restarting in (59m\d+s|1h); last exit.*$`, rows[2])
}

func TestStatusJSON(t *testing.T) {
	b := newFakeBackend()
	socket := serve(t, b)

	r := forkctl(t, nil, "--socket", socket, "status", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "{\n  \"name\": \"demo\",\n")
	require.Contains(t, r.stdout, `"uptime": "2h5m0s"`)

	var got control.Status
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &got))
	require.Equal(t, b.status.Name, got.Name)
	require.Equal(t, b.status.WorkerList, got.WorkerList)
	require.True(t, b.status.StartedAt.Equal(got.StartedAt))
}

func TestStop(t *testing.T) {
	b := newFakeBackend()
	socket := serve(t, b)

	r := forkctl(t, nil, "--socket", socket, "stop")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "forkd is stopping\n", r.stdout)
	require.Equal(t, control.StopRequest{}, <-b.stops)

	r = forkctl(t, nil, "stop", "--immediate", "--wait", "--socket", socket)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "forkd stopped\n", r.stdout)
	require.Equal(t, control.StopRequest{Immediate: true, Wait: true}, <-b.stops)
}

func TestScale(t *testing.T) {
	b := newFakeBackend()
	socket := serve(t, b)

	tests := []struct {
		args []string
		want control.ScaleRequest
		says string
	}{
		{[]string{"scale", "8"}, control.ScaleRequest{Workers: 8}, "scaled from 4 to 8 workers\n"},
		{[]string{"scale", "4"}, control.ScaleRequest{Workers: 4}, "already at 4 workers\n"},
		{[]string{"scale", "+2"}, control.ScaleRequest{Delta: 2}, "scaled from 4 to 6 workers\n"},
		{[]string{"scale", "-1"}, control.ScaleRequest{Delta: -1}, "scaled from 4 to 3 workers\n"},
		{[]string{"scale", "-3", "--timeout", "1m"}, control.ScaleRequest{Delta: -3}, "scaled from 4 to 1 workers\n"},
		{[]string{"scale", "--", "-2"}, control.ScaleRequest{Delta: -2}, "scaled from 4 to 2 workers\n"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			r := forkctl(t, nil, append([]string{"--socket", socket}, tt.args...)...)
			require.Equal(t, 0, r.code, r.stderr)
			require.Equal(t, tt.says, r.stdout)
			require.Equal(t, tt.want, <-b.scales)
		})
	}
}

// A refusal from forkd is printed as its message alone, with exit code 1.
func TestServerErrors(t *testing.T) {
	b := newFakeBackend()
	b.stopErr = control.ErrStopping
	b.scaleErr = &control.Error{Code: 400, Message: "at most 1024 workers"}
	socket := serve(t, b)

	r := forkctl(t, nil, "--socket", socket, "stop")
	require.Equal(t, 1, r.code)
	require.Equal(t, "forkctl: forkd is stopping\n", r.stderr)
	<-b.stops

	r = forkctl(t, nil, "--socket", socket, "scale", "5000")
	require.Equal(t, 1, r.code)
	require.Equal(t, "forkctl: at most 1024 workers\n", r.stderr)
	<-b.scales
}

func TestTimeout(t *testing.T) {
	b := newFakeBackend()
	b.statusBlocks = true
	socket := serve(t, b)

	r := forkctl(t, nil, "--socket", socket, "--timeout", "200ms", "status")
	require.Equal(t, 1, r.code)
	require.Contains(t, r.stderr, "forkctl: no answer from forkd within 200ms (see --timeout)")
}

// --timeout 0 waits without limit, as a zero timeout does for kubectl and timeout(1); a negative
// one is refused before anything is sent.
func TestTimeoutZeroAndNegative(t *testing.T) {
	b := newFakeBackend()
	socket := serve(t, b)

	r := forkctl(t, nil, "--socket", socket, "--timeout", "0", "status")
	require.Equal(t, 0, r.code, r.stderr)

	r = forkctl(t, nil, "--socket", socket, "--timeout", "-1s", "scale", "+1")
	require.Equal(t, exitUsage, r.code, r.stderr)
	require.Contains(t, r.stderr, "forkctl: --timeout -1s is negative: give how long to wait, like 30s or 2m, or 0 for no limit\n")
	select {
	case req := <-b.scales:
		t.Fatalf("a command with a negative --timeout reached forkd: %+v", req)
	default:
	}
}

func TestNotRunning(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	stale := filepath.Join(dir, "stale.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	require.NoError(t, unix.Bind(fd, &unix.SockaddrUnix{Name: stale}))
	require.NoError(t, unix.Close(fd))

	tests := []struct {
		name       string
		env        []string
		args       []string
		message    string
		hint       string
		socketPath string
	}{
		{"missing, --socket", nil, []string{"--socket", missing, "status"},
			"no control socket at", "the socket path came from --socket", missing},
		{"stale, --socket", nil, []string{"stop", "--socket", stale},
			"nothing listening on", "the socket path came from --socket", stale},
		{"$FORKD_SOCKET", []string{socketEnv + "=" + missing}, []string{"scale", "+1"},
			"no control socket at", "the socket path came from $FORKD_SOCKET", missing},
		{"--socket beats $FORKD_SOCKET", []string{socketEnv + "=" + missing}, []string{"-s", stale, "status"},
			"nothing listening on", "the socket path came from --socket", stale},
		{"reload --wait", nil, []string{"--socket", missing, "reload", "--wait"},
			"no control socket at", "the socket path came from --socket", missing},
		{"restart --wait", []string{socketEnv + "=" + stale}, []string{"restart", "--wait"},
			"nothing listening on", "the socket path came from $FORKD_SOCKET", stale},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := forkctl(t, tt.env, tt.args...)
			require.Equal(t, exitNotRunning, r.code, r.stderr)
			require.Equal(t, fmt.Sprintf("forkctl: forkd is not running (%s %s)\nforkctl: hint: %s\n",
				tt.message, tt.socketPath, tt.hint), r.stderr)
			require.Empty(t, r.stdout)
		})
	}
}

func TestNotRunningAtDefaultSocket(t *testing.T) {
	if _, err := os.Stat(defaultSocket("forkd")); err == nil {
		t.Skipf("something is at the default socket %s", defaultSocket("forkd"))
	}
	r := forkctl(t, nil, "status")
	require.Equal(t, exitNotRunning, r.code, r.stderr)
	require.Contains(t, r.stderr, "(no control socket at "+defaultSocket("forkd")+")")
	require.Contains(t, r.stderr, "hint: the socket path is the default one")
}

func TestBadArguments(t *testing.T) {
	socket := serve(t, newFakeBackend())

	tests := [][]string{
		{"scale", "abc"},
		{"scale", "0"},
		{"scale", "+0"},
		{"scale", "-0"},
		{"scale", "1.5"},
		{"scale"},
		{"scale", "1", "2"},
		{"status", "extra"},
		{"status", "-o", "yaml"},
		{"status", "--bogus"},
		{"stop", "--wait=maybe"},
		{"refork", "now"},
		{"reload", "--wait=maybe"},
		{"phased-restart", "--immediate"},
		{"restart", "-w"},
		{"--timeout", "soon", "status"},
		{"--timeout", "-1s", "status"},
		{"--timeout=-5m", "reload", "--wait"},
		{"frobnicate"},
		{"check"},
	}
	for _, args := range tests {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			r := forkctl(t, nil, append([]string{"--socket", socket}, args...)...)
			require.Equal(t, exitUsage, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
			require.Regexp(t, `^forkctl: .+\nRun 'forkctl( \w+)? --help' for usage.\n$`, r.stderr)
		})
	}
}

func TestVersion(t *testing.T) {
	socket := serve(t, newFakeBackend())

	r := forkctl(t, nil, "--socket", socket, "version")
	require.Equal(t, 0, r.code, r.stderr)
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	require.Len(t, lines, 2, r.stdout)
	require.Regexp(t, `^client: forkctl \S+ \((.+, )?go.+\)$`, lines[0])
	require.Equal(t, "server: forkd 9.9.9 (abcdef123456, go1.26.8), pid 4242, at "+socket, lines[1])

	// Without a forkd, the server line says so; that is an answer, not a failure.
	none := filepath.Join(t.TempDir(), "none.sock")
	r = forkctl(t, nil, "--socket", none, "version")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, lines[0]+"\nserver: not running (no control socket at "+none+")\n", r.stdout)
	require.Empty(t, r.stderr)
}

func TestCompletion(t *testing.T) {
	r := forkctl(t, nil, "completion", "bash")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "__start_forkctl")

	r = forkctl(t, nil, "__complete", "status", "-o", "")
	require.Equal(t, 0, r.code, r.stderr)
	require.True(t, strings.HasPrefix(r.stdout, "table\njson\n"), r.stdout)

	r = forkctl(t, nil, "__complete", "re")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `^refork\tRe-fork .*\nreload\tReplace .*\nrestart\tHot-restart .*\n:4\n`, r.stdout)

	// The rollout commands take no arguments, so there are no files to offer; their flag is.
	for _, name := range []string{"refork", "reload", "phased-restart", "restart"} {
		r = forkctl(t, nil, "__complete", name, "")
		require.Equal(t, 0, r.code, r.stderr)
		require.True(t, strings.HasPrefix(r.stdout, ":4\n"), "%s: %q", name, r.stdout)
		r = forkctl(t, nil, "__complete", name, "--w")
		require.Equal(t, 0, r.code, r.stderr)
		require.True(t, strings.HasPrefix(r.stdout, "--wait\t"), "%s: %q", name, r.stdout)
	}
}

// writeConfig writes a forkd config file into a new temporary directory.
func writeConfig(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(text), 0o644))
	return path
}

func TestCheck(t *testing.T) {
	valid := writeConfig(t, "demo.hcl", "command = [\"sh\", \"-c\", \"exec sleep 1000\"]\nworkers = 3\n")
	r := forkctl(t, nil, "check", valid)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, valid+": ok (3 workers, 0 listeners, readiness notify)\n", r.stdout)
	require.Empty(t, r.stderr)

	invalid := writeConfig(t, "bad.hcl", "command = [\"sh\"]\nworkers = \"many\"\nfrobnicate = true\n")
	r = forkctl(t, nil, "check", invalid)
	require.Equal(t, exitConfig, r.code, r.stderr)
	require.Empty(t, r.stdout, "diagnostics go to stderr")
	require.Contains(t, r.stderr, invalid+":2,")
	require.Contains(t, r.stderr, invalid+":3,")
	require.Contains(t, r.stderr, "frobnicate")

	r = forkctl(t, nil, "check", filepath.Join(t.TempDir(), "missing.hcl"))
	require.Equal(t, exitConfig, r.code, r.stderr)
	require.Contains(t, r.stderr, "missing.hcl")
}

// --config names the forkd whose control socket to use; it yields to --socket and $FORKD_SOCKET.
func TestSocketFromConfig(t *testing.T) {
	config := writeConfig(t, "demo.hcl", "command = [\"sh\"]\ncontrol { socket = \"run/control.sock\" }\n")
	socket := filepath.Join(filepath.Dir(config), "run", "control.sock")

	r := forkctl(t, nil, "--config", config, "status")
	require.Equal(t, exitNotRunning, r.code, r.stderr)
	require.Equal(t, "forkctl: forkd is not running (no control socket at "+socket+")\n"+
		"forkctl: hint: the socket path is the control socket of "+config+" (--config)\n", r.stderr)

	b := newFakeBackend()
	serveAt(t, b, socket)
	r = forkctl(t, nil, "-c", config, "scale", "+1")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, control.ScaleRequest{Delta: 1}, <-b.scales)

	elsewhere := filepath.Join(t.TempDir(), "elsewhere.sock")
	r = forkctl(t, []string{socketEnv + "=" + elsewhere}, "--config", config, "status")
	require.Equal(t, exitNotRunning, r.code, r.stderr)
	require.Contains(t, r.stderr, elsewhere)
}

// --name NAME reaches the forkd instance NAME at its default socket, as forkd --name NAME (or
// forkd@NAME under systemd) puts it.
func TestSocketFromName(t *testing.T) {
	name := fmt.Sprintf("forkctl-test-%d", os.Getpid())
	socket := defaultSocket(name)
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(socket)) })

	r := forkctl(t, nil, "--name", name, "status")
	require.Equal(t, exitNotRunning, r.code, r.stderr)
	require.Contains(t, r.stderr, "(no control socket at "+socket+")")
	require.Contains(t, r.stderr, fmt.Sprintf("hint: the socket path is the default one of instance %q (--name)", name))

	b := newFakeBackend()
	serveAt(t, b, socket)
	r = forkctl(t, nil, "--name", name, "scale", "+1")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, control.ScaleRequest{Delta: 1}, <-b.scales)

	r = forkctl(t, nil, "--name", "../etc", "status")
	require.Equal(t, exitUsage, r.code, r.stderr)
	require.Contains(t, r.stderr, `forkctl: --name: "../etc" may contain only letters, digits and "_.@-", not '/'`)

	r = forkctl(t, nil, "--name", name, "--socket", socket, "status")
	require.Equal(t, exitUsage, r.code, r.stderr)
	require.Contains(t, r.stderr, "none of the others can be")
}

func TestInvalidConfigForSocket(t *testing.T) {
	// Only a file that does not parse stops forkctl: the rest of a config (workers = 0 here) is
	// forkd's business, not forkctl's.
	config := writeConfig(t, "demo.hcl", "command = [\"sh\"]\nworkers = = 0\n")

	r := forkctl(t, nil, "--config", config, "status")
	require.Equal(t, exitConfig, r.code, r.stderr)
	require.Regexp(t, `^forkctl: config: `+regexp.QuoteMeta(config)+`:2,.*\nforkctl: hint: forkctl check `+
		regexp.QuoteMeta(config)+` lists every problem\n$`, r.stderr)
}

// forkdExitingBackend plays a forkd that exits as soon as its workers are drained, before its reply
// to stop --wait gets out: the connection drops and the socket disappears.
type forkdExitingBackend struct {
	*fakeBackend
	server *control.Server
}

func (b *forkdExitingBackend) Stop(ctx context.Context, req control.StopRequest) error {
	b.stops <- req
	gone, cancel := context.WithCancel(context.Background())
	cancel()
	// With its context already done, Shutdown cuts every connection, this one included.
	go b.server.Shutdown(gone)
	<-ctx.Done()
	return ctx.Err()
}

func TestStopWaitWhenForkdExitsBeforeReplying(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "control.sock")
	l, err := control.Listen(socket)
	require.NoError(t, err)
	b := &forkdExitingBackend{fakeBackend: newFakeBackend()}
	b.server = control.NewServer(b, nil)
	served := make(chan error, 1)
	go func() { served <- b.server.Serve(l) }()

	r := forkctl(t, nil, "--socket", socket, "stop", "--wait")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "forkd stopped\n", r.stdout)
	require.Equal(t, control.StopRequest{Wait: true}, <-b.stops)
	require.NoError(t, <-served)
}
