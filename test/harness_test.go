// Package test holds forkd's integration tests: real forkd binaries supervising real worker
// processes on real sockets, driven by real signals and forkctl.
package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/internal/proctest"
	"github.com/forkd/forkd/pkg/control"
	"github.com/forkd/forkd/pkg/notify"
)

// bin holds the binaries built once by TestMain: forkd, forkctl, testworker, hello.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "forkd-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	code := func() int {
		defer os.RemoveAll(dir)
		for name, pkg := range map[string]string{
			"forkd":      "../cmd/forkd",
			"forkctl":    "../cmd/forkctl",
			"testworker": "./testworker",
		} {
			args := []string{"build", "-o", filepath.Join(dir, name)}
			if raceEnabled && name == "forkd" {
				// The master's driver runs goroutines around one loop: let the race detector watch it.
				args = append(args, "-race")
			}
			cmd := exec.Command("go", append(args, pkg)...)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n", name, err)
				return 1
			}
		}
		return m.Run()
	}()
	os.Exit(code)
}

// deadline bounds every wait for a condition: generous, because a busy 2-core CI machine is slow,
// and a passing test never waits for it.
const deadline = 60 * time.Second

// forkd is one master under test.
type forkd struct {
	t      *testing.T
	dir    string
	socket string
	cmd    *exec.Cmd
	output *proctest.Output
	done   chan struct{}
	err    error // Wait's result, valid after done is closed
	client *control.Client
	// seen collects every worker PID observed, so cleanup can kill leftovers by PID.
	seen map[int]bool
}

// options for startForkd.
type options struct {
	config     string   // HCL body; the control socket and a listen block are added unless set
	args       []string // extra forkd flags
	extraFiles []*os.File
	env        []string
	// activation passes extraFiles the way systemd does: LISTEN_FDS, LISTEN_FDNAMES and
	// LISTEN_PID set to forkd's own PID.
	activation bool
	fdNames    string
	// forkdPath runs another forkd binary than the one TestMain built.
	forkdPath string
	// systemd plays systemd's side of sd_notify(3): forkd gets NOTIFY_SOCKET pointing at it, and,
	// with watchdog set, WATCHDOG_USEC and WATCHDOG_PID (its own PID).
	systemd  *notify.Socket
	watchdog time.Duration
	// asNobody runs forkd (and so its workers) as the unprivileged user nobody (65534): the
	// test's directory is handed to it.
	asNobody bool
	// cgroupFD, when set (not 0), starts forkd in that cgroup (an O_PATH descriptor of its
	// directory), as systemd starts a unit in its own.
	cgroupFD int
}

// nobody is the unprivileged user of asNobody, and of senders that are not forkd's.
const nobody = 65534

// worker returns the HCL command line running testworker with flags.
func worker(flags ...string) string {
	argv := append([]string{filepath.Join(bin, "testworker")}, flags...)
	return `command = [` + quoteAll(argv) + `]`
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

func startForkd(t *testing.T, o options) *forkd {
	t.Helper()
	dir := t.TempDir()
	if o.asNobody {
		if os.Geteuid() != 0 {
			t.Skip("running forkd as nobody needs root")
		}
		// The test's directory and the binaries must be reachable by nobody.
		for _, d := range []string{filepath.Dir(dir), bin} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chown(dir, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	f := &forkd{t: t, dir: dir, socket: filepath.Join(dir, "control.sock"), output: &proctest.Output{},
		done: make(chan struct{}), seen: map[int]bool{}}
	cfg := o.config
	if !strings.Contains(cfg, "control {") {
		cfg += fmt.Sprintf("\ncontrol {\n  socket = %q\n}\n", f.socket)
	}
	if !strings.Contains(cfg, "notify {") && len(dir) > 70 {
		// The workers' notify sockets go beside the control socket, unless the test's name makes
		// that directory too long for socket paths.
		short, err := os.MkdirTemp("", "forkd-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(short) })
		if o.asNobody {
			if err := os.Chown(short, nobody, nobody); err != nil {
				t.Fatal(err)
			}
		}
		cfg += fmt.Sprintf("\nnotify {\n  directory = %q\n}\n", short)
	}
	if !strings.Contains(cfg, "listen ") && !o.activation {
		cfg += "\nlisten \"http\" {\n  address = \"tcp://127.0.0.1:0\"\n}\n"
	}
	path := filepath.Join(dir, "forkd.hcl")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--config", path}, o.args...)
	forkdPath := filepath.Join(bin, "forkd")
	if o.forkdPath != "" {
		forkdPath = o.forkdPath
	}
	var cmd *exec.Cmd
	switch {
	case o.activation:
		// LISTEN_PID must be forkd's own PID, known only after fork: a shell sets it and execs
		// forkd in place, as systemd does between fork and exec.
		cmd = exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, forkdPath}, args...)...)
		cmd.Env = append(os.Environ(), fmt.Sprintf("LISTEN_FDS=%d", len(o.extraFiles)))
		if o.fdNames != "" {
			cmd.Env = append(cmd.Env, "LISTEN_FDNAMES="+o.fdNames)
		}
	case o.watchdog > 0:
		cmd = exec.Command("/bin/sh", append([]string{"-c", `WATCHDOG_PID=$$ exec "$0" "$@"`, forkdPath}, args...)...)
		cmd.Env = append(os.Environ(), fmt.Sprintf("WATCHDOG_USEC=%d", o.watchdog.Microseconds()))
	default:
		cmd = exec.Command(forkdPath, args...)
		cmd.Env = os.Environ()
	}
	if o.systemd != nil {
		cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+o.systemd.Addr())
	}
	cmd.Env = append(cmd.Env, o.env...)
	cmd.SysProcAttr = diesWithTheTest()
	if o.asNobody {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: nobody, Gid: nobody}
	}
	if o.cgroupFD > 0 {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, o.cgroupFD
	}
	cmd.ExtraFiles = o.extraFiles
	cmd.Stdout, cmd.Stderr = f.output, f.output
	// Workers share forkd's output pipe: one that outlives forkd (stopped with SIGSTOP, say) must
	// not keep Wait from returning.
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.cmd = cmd
	f.client = control.NewClient(f.socket)
	go func() {
		f.err = cmd.Wait()
		close(f.done)
	}()
	t.Cleanup(f.cleanup)
	return f
}

// diesWithTheTest makes the forkd a test starts die with the test binary (PR_SET_PDEATHSIG,
// which survives forkd's hot-restart exec): a binary that times out or is killed runs no
// Cleanup, and a forkd left behind would keep serving, and keep the descriptors it inherited
// (such as a `flock` lock the run was started under) open for ever.
func diesWithTheTest() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// startQuickMode runs forkd in quick mode with args (its flags, "--" and the app) in dir, and
// returns it; socket is its control socket.
func startQuickMode(t *testing.T, dir, socket string, args ...string) *forkd {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "forkd"), args...)
	cmd.Dir = dir
	return startCommand(t, cmd, dir, socket)
}

// startCommand starts cmd, a forkd (or a command that runs one, such as unshare), and returns it;
// socket is its control socket.
func startCommand(t *testing.T, cmd *exec.Cmd, dir, socket string) *forkd {
	t.Helper()
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = diesWithTheTest()
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f := &forkd{t: t, dir: dir, socket: socket, cmd: cmd, output: out, done: make(chan struct{}),
		client: control.NewClient(socket), seen: map[int]bool{}}
	go func() { f.err = cmd.Wait(); close(f.done) }()
	t.Cleanup(f.cleanup)
	return f
}

func (f *forkd) cleanup() {
	select {
	case <-f.done:
	default:
		f.cmd.Process.Signal(syscall.SIGKILL)
	}
	for pid := range f.seen {
		// Only processes this test started, by PID, and only if they are still ours: a
		// worker's PID whose /proc entry names our testworker.
		if isTestProcess(pid) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	<-f.done
	if f.t.Failed() {
		f.t.Logf("forkd output:\n%s", f.output.String())
	}
}

// startForkdOf starts forkd and makes sure no worker whose command line names runner outlives the
// test: the harness's own cleanup kills leftover workers only when they run a test binary.
func startForkdOf(t *testing.T, o options, runner string) *forkd {
	t.Helper()
	f := startForkd(t, o)
	t.Cleanup(func() {
		select {
		case <-f.done:
		default:
			f.cmd.Process.Signal(syscall.SIGKILL)
			<-f.done
		}
		for pid := range f.seen {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && strings.Contains(string(cmdline), runner) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return f
}

func isTestProcess(pid int) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	return err == nil && strings.HasPrefix(exe, bin)
}

// status asks the control API; it fails the test if forkd does not answer.
func (f *forkd) status() control.Status {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := f.client.Status(ctx)
	if err != nil {
		f.t.Fatalf("status: %v\nforkd output:\n%s", err, f.output.String())
	}
	f.remember(st)
	return st
}

func (f *forkd) remember(st control.Status) {
	for _, w := range st.WorkerList {
		if w.PID != 0 {
			f.seen[w.PID] = true
		}
	}
}

// waitFor polls the status until cond holds. Polling a status API is what an operator does; the
// interval only bounds how quickly a passing test notices.
func (f *forkd) waitFor(what string, cond func(control.Status) bool) control.Status {
	f.t.Helper()
	end := time.Now().Add(deadline)
	var last control.Status
	var lastErr error
	for time.Now().Before(end) {
		select {
		case <-f.done:
			f.t.Fatalf("forkd exited (%v) while waiting for %s\noutput:\n%s", f.err, what, f.output.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := f.client.Status(ctx)
		cancel()
		if err == nil {
			f.remember(st)
			last = st
			if cond(st) {
				return st
			}
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	f.t.Fatalf("timed out waiting for %s; last status %+v (error %v)\noutput:\n%s", what, last, lastErr, f.output.String())
	return last
}

// waitReady waits until every desired worker is ready and the cluster is running.
func (f *forkd) waitReady(n int) control.Status {
	f.t.Helper()
	return f.waitFor(fmt.Sprintf("%d ready workers", n), func(st control.Status) bool {
		return st.Phase == control.PhaseRunning && st.Ready == n && st.Workers == n
	})
}

// waitExit waits for forkd to exit and returns its exit code.
func (f *forkd) waitExit() int {
	f.t.Helper()
	select {
	case <-f.done:
	case <-time.After(deadline):
		f.t.Fatalf("forkd did not exit\noutput:\n%s", f.output.String())
	}
	return f.cmd.ProcessState.ExitCode()
}

func (f *forkd) signal(sig syscall.Signal) {
	f.t.Helper()
	if err := f.cmd.Process.Signal(sig); err != nil {
		f.t.Fatal(err)
	}
}

// addr is the first listener's TCP address.
func (f *forkd) addr() string {
	f.t.Helper()
	st := f.status()
	if len(st.Listeners) == 0 {
		f.t.Fatal("no listeners")
	}
	_, addr, _ := strings.Cut(st.Listeners[0].Address, "://")
	return addr
}

// forkctl runs the forkctl binary against this forkd and returns its output and exit code.
func (f *forkd) forkctl(args ...string) (string, int) {
	f.t.Helper()
	return runForkctl(f.t, append([]string{"--socket", f.socket}, args...)...)
}

func runForkctl(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(bin, "forkctl"), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatal(err)
	}
	return string(out), 0
}

// httpClient makes a new connection per request, so each request may land on any worker.
var httpClient = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true},
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := httpClient.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

// processGone reports whether pid has exited: no /proc entry, or a zombie waiting for its parent
// (after forkd's death that parent is init, which reaps on its own schedule).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}

func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	end := time.Now().Add(deadline)
	for _, pid := range pids {
		for !processGone(pid) {
			if time.Now().After(end) {
				t.Fatalf("process %d still running", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func workerPIDs(st control.Status) []int {
	var pids []int
	for _, w := range st.WorkerList {
		if w.PID != 0 {
			pids = append(pids, w.PID)
		}
	}
	return pids
}

// listenTCP binds a loopback TCP socket for socket-activation tests, returning it as a file.
func listenTCP(t *testing.T) (*os.File, string) {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	t.Cleanup(func() { f.Close() })
	return f, addr
}
