package systemd

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// env is one run of the suite: the booted container and what was installed in it.
type env struct {
	repo       string
	c          *container
	deb        string
	demoAddr   string // forkd@demo.socket, from the host: the Python demo in fork-worker mode
	helloAddr  string // forkd@hello.socket: the Go demo in exec mode
	singleAddr string // forkd.socket, the single-app units (moved off their 127.0.0.1:8080)
	bindAddr   string // forkd-fdstore.service: forkd binds it itself (no socket unit), fd store
	systemd    int    // the container's systemd version
	timings    []string
}

// scenario is one test against the running container. Scenarios run in order and share the
// container, but each makes sure of the state it needs (ensureRunning), so any of them can run
// alone with FORKD_E2E_RUN.
type scenario struct {
	name    string
	timeout time.Duration
	run     func(e *env, t *testing.T, ctx context.Context)
}

func TestSystemd(t *testing.T) {
	if os.Getenv("FORKD_E2E") != "1" {
		t.Skip("the end-to-end suite under a real systemd runs with FORKD_E2E=1, as root: make e2e")
	}
	required := os.Getenv("FORKD_E2E_REQUIRED") == "1"
	// cannotRun errors skip (or fail under FORKD_E2E_REQUIRED=1); anything else is a failure.
	check := func(what string, err error) {
		t.Helper()
		if err == nil {
			return
		}
		var cr *cannotRun
		if errors.As(err, &cr) {
			if required {
				t.Fatalf("cannot run the systemd suite (FORKD_E2E_REQUIRED=1): %s: %v", what, err)
			}
			t.Skipf("cannot run the systemd suite here: %s: %v", what, err)
		}
		t.Fatalf("%s: %v", what, err)
	}
	start := time.Now()
	e := &env{}
	phase := func(name string, t0 time.Time) {
		s := fmt.Sprintf("%s: %.1fs", name, time.Since(t0).Seconds())
		e.timings = append(e.timings, s)
		t.Log(s)
	}
	defer func() {
		e.timings = append(e.timings, fmt.Sprintf("total: %.1fs", time.Since(start).Seconds()))
		t.Logf("timings: %s", strings.Join(e.timings, ", "))
	}()
	ctx := t.Context()

	var err error
	e.repo, err = filepath.Abs("../..")
	check("repository", err)
	t0 := time.Now()
	check("host", checkHost(ctx, t.Logf))
	phase("host tools", t0)

	e.deb = os.Getenv("FORKD_E2E_DEB")
	if e.deb == "" {
		debs, _ := filepath.Glob(filepath.Join(e.repo, "packaging/dist/forkd_*.deb"))
		if len(debs) != 1 {
			t.Fatalf("want one packaging/dist/forkd_*.deb, found %d: build it with make package (make e2e does), or set FORKD_E2E_DEB", len(debs))
		}
		e.deb = debs[0]
	}
	if !filepath.IsAbs(e.deb) {
		e.deb = filepath.Join(e.repo, e.deb) // go test runs in test/systemd; paths are the repository's
	}
	if _, err := os.Stat(e.deb); err != nil {
		t.Fatalf("the package to test: %v (make package builds it)", err)
	}
	t.Logf("package: %s", e.deb)

	cacheDir := envOr("FORKD_E2E_CACHE", "/var/cache/forkd-e2e")
	suite := envOr("FORKD_E2E_SUITE", "bookworm")
	t0 = time.Now()
	rootfs, err := openRootfs(ctx, cacheDir, suite, envOr("FORKD_E2E_MIRROR", hostMirror()), t.Logf)
	check("rootfs", err)
	defer rootfs.release()
	phase("rootfs", t0)

	cleanStale(t.Logf)
	t0 = time.Now()
	e.c, err = newContainer(rootfs.dir, t.Logf)
	if e.c != nil {
		// Registered before anything can fail: the container always goes away.
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("container console (last lines):\n%s", tail(readFile(e.c.console), 40))
			}
			if e.c.keep && e.c.leader != 0 {
				t.Logf("FORKD_E2E_KEEP=1: the container stays up. Enter it with\n  nsenter -t %d -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb bash\n"+
					"stop it with: kill %d (the next run removes what is left)", e.c.leader, e.c.cmd.Process.Pid)
				return
			}
			e.c.shutdown()
		})
	}
	check("container root", err)
	e.c.keep = os.Getenv("FORKD_E2E_KEEP") == "1"
	check("demo apps", e.prepare(ctx))
	phase("prepare", t0)

	// The package goes in with chroot before the container boots: the install path of an image
	// build, where systemd is installed but not running.
	if !t.Run("install-without-systemd", e.installWithoutSystemd) {
		t.FailNow()
	}
	check("demo config", e.configure())

	t0 = time.Now()
	bootCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err = e.c.boot(bootCtx)
	cancel()
	if err != nil {
		check("boot", cannot("systemd did not boot in systemd-nspawn: %v", err))
	}
	phase("boot", t0)
	out, _, _, _ := e.c.exec(ctx, 10*time.Second, "systemctl", "--version")
	fmt.Sscanf(out, "systemd %d", &e.systemd)
	t.Logf("container: systemd %d, machine %s, leader pid %d, root %s", e.systemd, e.c.name, e.c.leader, e.c.root)

	var only *regexp.Regexp
	if s := os.Getenv("FORKD_E2E_RUN"); s != "" {
		only = regexp.MustCompile(s)
	}
	for _, sc := range scenarios() {
		if only != nil && !only.MatchString(sc.name) {
			continue
		}
		t0 := time.Now()
		t.Run(sc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), sc.timeout)
			defer cancel()
			sc.run(e, t, ctx)
		})
		phase(sc.name, t0)
	}
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// prepare puts the package and the demo apps into the container's root: the Python SDK and
// examples/python/app.py (as release 1 of /opt/forkd-demo, plus a broken release 2), and
// examples/hello built statically.
func (e *env) prepare(ctx context.Context) error {
	root := e.c.root
	if err := copyFile(e.deb, filepath.Join(root, "root/forkd.deb")); err != nil {
		return err
	}
	demo := filepath.Join(root, "opt/forkd-demo")
	sdkDir := filepath.Join(e.repo, "sdk/python")
	var sdk []string
	err := filepath.WalkDir(filepath.Join(sdkDir, "forkd"), func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".py") {
			sdk = append(sdk, path)
		}
		return err
	})
	if err != nil || len(sdk) == 0 {
		return fmt.Errorf("no Python SDK in sdk/python/forkd (%v)", err)
	}
	for _, f := range sdk {
		rel, _ := filepath.Rel(sdkDir, f)
		if err := copyFile(f, filepath.Join(demo, "sdk", rel)); err != nil {
			return err
		}
	}
	app, err := os.ReadFile(filepath.Join(e.repo, "examples/python/app.py"))
	if err != nil {
		return err
	}
	if err := writeFile(filepath.Join(demo, "releases/1/app.py"), string(app)+printRoute); err != nil {
		return err
	}
	// A release that cannot boot: its import fails, as a bad deploy's would.
	if err := writeFile(filepath.Join(demo, "releases/2-broken/app.py"),
		"raise RuntimeError('e2e: this release is broken on purpose')\n"); err != nil {
		return err
	}
	if err := os.Symlink("releases/1", filepath.Join(demo, "current")); err != nil {
		return err
	}
	return buildStatic(ctx, e.repo, "./examples/hello", filepath.Join(demo, "hello"))
}

// buildStatic builds the repository's package pkg as a static binary at out, for the container.
func buildStatic(ctx context.Context, repo, pkg, out string) error {
	// go test puts the go command's GOROOT/bin first in PATH; /usr/local/go is the README's.
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = "/usr/local/go/bin/go"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %v\n%s", pkg, err, output)
	}
	return nil
}

// printRoute is added to the Python demo app: GET /print?msg=M&ms=N writes one line with M to
// stdout and one to stderr, saying which worker wrote them and its JOURNAL_STREAM, then answers as
// GET / does after N milliseconds (so that concurrent requests reach different workers). The
// worker-output scenario looks for the lines in the journal.
const printRoute = `

# Added by test/systemd (e2e_test.go): GET /print for the worker-output scenario.
import sys as _e2e_sys

_e2e_app = app


def app(environ, start_response):
    if environ.get("PATH_INFO") != "/print":
        return _e2e_app(environ, start_response)
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    where = "worker %d (pid %d) JOURNAL_STREAM=%s" % (
        forkd.worker_index(), os.getpid(), os.environ.get("JOURNAL_STREAM", ""))
    msg = query.get("msg", [""])[0]
    print("e2e stdout %s from %s" % (msg, where), flush=True)
    print("e2e stderr %s from %s" % (msg, where), file=_e2e_sys.stderr, flush=True)
    time.sleep(int(query.get("ms", ["0"])[0]) / 1000)
    return respond(start_response, "200 OK", hello())
`

// Ports from the host's free ones: the container shares the host's network namespace.
func freePort() (string, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// configure writes the demo instances' configs and socket drop-ins, once the package is in.
func (e *env) configure() error {
	var err error
	if e.demoAddr, err = freePort(); err != nil {
		return err
	}
	if e.helloAddr, err = freePort(); err != nil {
		return err
	}
	if e.singleAddr, err = freePort(); err != nil {
		return err
	}
	if e.bindAddr, err = freePort(); err != nil {
		return err
	}
	files := map[string]string{
		// fork-worker mode on gunicorn's threaded worker (forkd.gunicorn, Debian's
		// python3-gunicorn); no automatic refork, so that only the scenarios start rollouts.
		"etc/forkd/demo.hcl": `# forkd@demo: the Python demo app in fork-worker mode (test/systemd)
command   = ["/usr/bin/python3", "-m", "forkd.gunicorn", "-k", "gthread", "--threads", "4", "app:app"]
directory = "/opt/forkd-demo/current"
env       = { PYTHONPATH = "/opt/forkd-demo/sdk", DEMO_ALLOC_MB = "8" }
workers   = 3

timeouts {
  boot     = "30s"
  worker   = "10s"
  shutdown = "15s"
}

fork_worker {
  refork_after = []
}
`,
		"etc/forkd/hello.hcl": `# forkd@hello: the Go demo app in exec mode (test/systemd)
command = ["/opt/forkd-demo/hello"]
workers = 2

timeouts {
  boot     = "30s"
  worker   = "10s"
  shutdown = "15s"
}
`,
		// forkd@plain keeps the template socket's default, /run/forkd/plain.sock.
		"etc/forkd/plain.hcl": "command = [\"/opt/forkd-demo/hello\"]\nworkers = 1\n",
		// The single-app units, forkd.service and forkd.socket.
		"etc/forkd/forkd.hcl":                           "command = [\"/opt/forkd-demo/hello\"]\nworkers = 2\n",
		"etc/systemd/system/forkd.socket.d/10-e2e.conf": "[Socket]\nListenStream=\nListenStream=" + e.singleAddr + "\n",
		// forkd-fdstore.service (the fd-store scenario makes the unit): forkd binds the socket.
		"etc/forkd/fdstore.hcl": `# forkd-fdstore.service: forkd binds its own socket, no socket unit (test/systemd)
command = ["/opt/forkd-demo/hello"]
workers = 2

listen "http" {
  address = "tcp://` + e.bindAddr + `"
}

timeouts {
  boot     = "30s"
  worker   = "10s"
  shutdown = "15s"
}
`,
		// A config forkd refuses: the unit must fail with 78 and not be restarted.
		"etc/forkd/broken.hcl": "command = [\"python3\"]\nworkers = 0\n",

		"etc/systemd/system/forkd@demo.socket.d/10-e2e.conf":  "[Socket]\nListenStream=\nListenStream=" + e.demoAddr + "\n",
		"etc/systemd/system/forkd@hello.socket.d/10-e2e.conf": "[Socket]\nListenStream=\nListenStream=" + e.helloAddr + "\n",
		// The watchdog scenario freezes forkd@hello's master: a short WatchdogSec= makes it quick.
		"etc/systemd/system/forkd@hello.service.d/10-e2e.conf": "[Service]\nWatchdogSec=2\n",
	}
	for path, content := range files {
		if err := writeFile(filepath.Join(e.c.root, path), content); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}

func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o644)
}

// ---- helpers that run things in the container

// run runs argv in the container and fails the test unless it exits 0; it returns stdout.
func (e *env) run(t *testing.T, ctx context.Context, argv ...string) string {
	t.Helper()
	out, errOut, code, err := e.c.exec(ctx, 2*time.Minute, argv...)
	if err != nil || code != 0 {
		t.Fatalf("%s: exit %d, %v\nstdout: %s\nstderr: %s", strings.Join(argv, " "), code, err, out, errOut)
	}
	return out
}

// sh runs a shell script in the container and returns its stdout, failing the test on error.
func (e *env) sh(t *testing.T, ctx context.Context, script string, args ...string) string {
	t.Helper()
	return e.run(t, ctx, append([]string{"sh", "-c", script, "sh"}, args...)...)
}

// show returns systemd's properties of unit.
func (e *env) show(t *testing.T, ctx context.Context, unit string, props ...string) map[string]string {
	t.Helper()
	argv := []string{"systemctl", "show", unit}
	for _, p := range props {
		argv = append(argv, "-p", p)
	}
	m := map[string]string{}
	for _, line := range strings.Split(e.run(t, ctx, argv...), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m
}

func (e *env) prop(t *testing.T, ctx context.Context, unit, prop string) string {
	t.Helper()
	return e.show(t, ctx, unit, prop)[prop]
}

// status is forkctl's status of instance, as JSON, taken inside the container.
func (e *env) status(t *testing.T, ctx context.Context, instance string) control.Status {
	t.Helper()
	out := e.run(t, ctx, "forkctl", "--socket", "/run/forkd/"+instance+"/control.sock", "status", "-o", "json")
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("forkctl status -o json: %v\n%s", err, out)
	}
	return st
}

// journal returns the journal entries journalctl selects with args, as JSON objects.
func (e *env) journal(t *testing.T, ctx context.Context, args ...string) []map[string]any {
	t.Helper()
	out := e.run(t, ctx, append([]string{"journalctl", "--no-pager", "-o", "json"}, args...)...)
	var entries []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("journalctl -o json: %v: %s", err, sc.Text())
		}
		entries = append(entries, m)
	}
	return entries
}

// journalText is the unit's journal as text, since the cursor (empty: everything).
func (e *env) journalText(t *testing.T, ctx context.Context, unit, cursor string) string {
	t.Helper()
	argv := []string{"journalctl", "--no-pager", "-o", "cat", "-u", unit}
	if cursor != "" {
		argv = append(argv, "--after-cursor", cursor)
	}
	return e.run(t, ctx, argv...)
}

// waitJournal waits until the unit's journal since cursor has a line containing substr, and
// returns that journal. systemd's own lines (such as "Reloaded ...") can reach the journal a little
// after the systemctl command that caused them has returned.
func (e *env) waitJournal(t *testing.T, ctx context.Context, unit, cursor, substr string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		journal := e.journalText(t, ctx, unit, cursor)
		if strings.Contains(journal, substr) {
			return journal, true
		}
		select {
		case <-ctx.Done():
			return journal, false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cursor is the journal's current end, to read only what comes after it.
func (e *env) cursor(t *testing.T, ctx context.Context) string {
	t.Helper()
	out := e.run(t, ctx, "journalctl", "--no-pager", "-n", "0", "--show-cursor")
	_, c, _ := strings.Cut(out, "-- cursor: ")
	return strings.TrimSpace(c)
}

func field(entry map[string]any, name string) string {
	s, _ := entry[name].(string)
	return s
}

// waitFor polls cond until it holds, every interval, failing the test when ctx ends first.
func waitFor(t *testing.T, ctx context.Context, what string, interval time.Duration, cond func() (bool, string)) {
	t.Helper()
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last seen: %s)", what, ctx.Err(), last)
		case <-time.After(interval):
		}
	}
}

// ensureRunning makes sure forkd@instance runs with every worker ready: it starts the socket, and
// lets the first connection (to addr, from the host) start the service. With addr empty, it only
// waits.
func (e *env) ensureRunning(t *testing.T, ctx context.Context, instance, addr string) control.Status {
	t.Helper()
	unit := "forkd@" + instance + ".service"
	if addr != "" && e.prop(t, ctx, unit, "ActiveState") != "active" {
		e.run(t, ctx, "systemctl", "start", "forkd@"+instance+".socket")
		if code, body, err := get(ctx, addr, "/", 60*time.Second); err != nil || code != 200 {
			t.Fatalf("first request to %s: %d %q %v\n%s", addr, code, body, err, e.journalText(t, ctx, unit, ""))
		}
	}
	return e.waitReady(t, ctx, unit, instance)
}

// waitReady waits until unit is active and its forkd (control socket /run/forkd/instance/) has
// every worker ready.
func (e *env) waitReady(t *testing.T, ctx context.Context, unit, instance string) control.Status {
	t.Helper()
	var st control.Status
	waitFor(t, ctx, unit+" active with every worker ready", 100*time.Millisecond, func() (bool, string) {
		state := e.prop(t, ctx, unit, "ActiveState")
		if state != "active" {
			return false, "ActiveState=" + state
		}
		st = e.status(t, ctx, instance)
		return st.Phase == control.PhaseRunning && st.Ready == st.Workers, fmt.Sprintf("phase %s, %d/%d ready", st.Phase, st.Ready, st.Workers)
	})
	return st
}

// workerPIDs maps each worker index to its current (not replacement, not detached) PID.
func workerPIDs(st control.Status) map[int]int {
	m := map[int]int{}
	for _, w := range st.WorkerList {
		if !w.Replacement && !w.Detached && w.PID != 0 {
			m[w.Index] = w.PID
		}
	}
	return m
}

// stateMonitor records the ActiveState/SubState values a unit goes through while it runs.
type stateMonitor struct {
	cancel context.CancelFunc
	done   chan struct{}
	states map[string]int
}

func (e *env) monitor(ctx context.Context, unit string) *stateMonitor {
	ctx, cancel := context.WithCancel(ctx)
	m := &stateMonitor{cancel: cancel, done: make(chan struct{}), states: map[string]int{}}
	go func() {
		defer close(m.done)
		for ctx.Err() == nil {
			out, _, code, err := e.c.exec(ctx, 10*time.Second, "systemctl", "show", "-P", "ActiveState", "-P", "SubState", unit)
			if err == nil && code == 0 {
				m.states[strings.Join(strings.Fields(out), "/")]++
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return m
}

func (m *stateMonitor) stop() map[string]int {
	m.cancel()
	<-m.done
	return m.states
}

// checkLoad stops l and fails the test unless every request succeeded.
func checkLoad(t *testing.T, l *load, what string) {
	t.Helper()
	l.stop()
	ok, failed, errs := l.counts()
	t.Logf("load during %s: %d requests, %d failed", what, ok, failed)
	if failed > 0 {
		t.Errorf("%d of %d requests failed (%d of them refused) during %s; first failures:\n%s", failed, ok+failed,
			l.refusedCount(), what, strings.Join(errs, "\n"))
	}
	if ok == 0 {
		t.Errorf("no request succeeded during %s", what)
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}
