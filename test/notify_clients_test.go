package test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
)

// Third-party sd_notify clients as workers: each must get its READY=1 and STATUS= to forkd as it
// does to systemd, with NOTIFY_SOCKET as forkd sets it. Debian 12 packages: systemd
// (systemd-notify), python3-systemd, python3-sdnotify, puma with ruby-sd-notify.

// debianPython is the interpreter Debian's python3-* packages are installed for (the first python3
// on PATH may be another build that does not see them).
const debianPython = "/usr/bin/python3"

// requireTool skips the test when a client is missing, saying which package brings it.
func requireTool(t *testing.T, check *exec.Cmd, pkg string) {
	t.Helper()
	if out, err := check.CombinedOutput(); err != nil {
		t.Skipf("%s is not usable (%v: %s): apt-get install -y %s", check.Path, err, strings.TrimSpace(string(out)), pkg)
	}
}

// waitStatusLines waits until every worker is ready with STATUS= "up PID", its own PID: each
// worker's notification reached forkd and was attributed to that worker, not another.
func waitStatusLines(t *testing.T, f *forkd, workers int) control.Status {
	t.Helper()
	return f.waitFor(fmt.Sprintf("%d workers ready, each with its own status", workers), func(st control.Status) bool {
		if st.Phase != control.PhaseRunning || st.Ready != workers {
			return false
		}
		for _, w := range st.WorkerList {
			if w.StatusLine != fmt.Sprintf("up %d", w.PID) {
				return false
			}
		}
		return true
	})
}

// TestSystemdNotifyWorkers: a shell worker that says it is ready with systemd-notify(1), as root
// and as an unprivileged user, waiting for the message to be processed (the default: a barrier,
// BARRIER=1 with a pipe) or not (--no-block). Unprivileged, systemd-notify cannot send with its
// parent's PID (that needs CAP_SYS_ADMIN), so the sender is systemd-notify itself, which with
// --no-block exits at once: forkd must still know whose it is. A reload repeats it all with new
// workers.
func TestSystemdNotifyWorkers(t *testing.T) {
	t.Parallel()
	requireTool(t, exec.Command("systemd-notify", "--version"), "systemd")
	for _, tc := range []struct {
		name    string
		nobody  bool
		noBlock bool
	}{
		{"root", false, false},
		{"root, --no-block", false, true},
		{"nobody", true, false},
		{"nobody, --no-block", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := "--ready"
			if tc.noBlock {
				args += " --no-block"
			}
			// sh's $$ is the worker's own PID; exec keeps it for the serving process.
			script := fmt.Sprintf(`systemd-notify %s --status="up $$" && exec sleep 600`, args)
			f := startForkd(t, options{asNobody: tc.nobody, config: fmt.Sprintf(`
command = ["/bin/sh", "-c", %q]
workers = 8
`, script)})
			waitStatusLines(t, f, 8)
			out, code := f.forkctl("reload", "--wait")
			require.Equal(t, 0, code, out)
			st := waitStatusLines(t, f, 8)
			assert.Equal(t, 2, st.Generation)
			assert.Zero(t, st.DroppedNotifications, "every notification was the worker's")
		})
	}
}

// TestPythonNotifyClients: Python workers that notify with python3-systemd (libsystemd's
// sd_notify) and with python3-sdnotify (pure Python).
func TestPythonNotifyClients(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, module, pkg, notify string
	}{
		{"python3-systemd", "systemd.daemon", "python3-systemd",
			`from systemd import daemon; assert daemon.notify("READY=1\nSTATUS=up %d" % os.getpid())`},
		{"python3-sdnotify", "sdnotify", "python3-sdnotify",
			`import sdnotify; sdnotify.SystemdNotifier(debug=True).notify("READY=1\nSTATUS=up %d" % os.getpid())`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			requireTool(t, exec.Command(debianPython, "-c", "import "+tc.module), tc.pkg)
			script := "import os, signal\n" + tc.notify + "\nsignal.pause()\n"
			f := startForkd(t, options{config: fmt.Sprintf(`
command = [%q, "-c", %q]
workers = 2
`, debianPython, script)})
			waitStatusLines(t, f, 2)
			assert.Zero(t, f.status().DroppedNotifications)
		})
	}
}

// TestStockPumaUnderForkd: stock Puma 5.6, as forkd's exec-mode worker, on forkd's socket
// (LISTEN_FDS) with its systemd plugin, which Puma loads when the sd_notify gem (Debian's
// ruby-sd-notify) is there and NOTIFY_SOCKET is set: its READY=1 makes the worker ready, and the
// workers serve.
func TestStockPumaUnderForkd(t *testing.T) {
	t.Parallel()
	requireTool(t, exec.Command("ruby", "-e", `require "puma"; require "sd_notify"`), "puma ruby-sd-notify")
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "config.ru"),
		[]byte(`run ->(env) { [200, {"content-type" => "text/plain"}, ["puma #{Process.pid}\n"]] }`+"\n"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "puma.rb"), []byte("bind_to_activated_sockets 'only'\nthreads 1, 2\n"), 0o644))
	f := startForkd(t, options{config: fmt.Sprintf(`
command   = ["puma", "-C", "puma.rb", "config.ru"]
directory = %q
workers   = 2
`, dir)})
	st := f.waitReady(2)
	assert.Contains(t, f.output.String(), "Enabling systemd notification integration", "Puma's systemd plugin is on")
	for _, w := range st.WorkerList {
		assert.Zero(t, w.Restarts, "worker %d restarted: %s", w.Index, w.LastExit)
	}
	pids := map[string]bool{}
	for _, w := range st.WorkerList {
		pids[fmt.Sprintf("puma %d\n", w.PID)] = true
	}
	body := get(t, "http://"+f.addr()+"/")
	assert.True(t, pids[body], "served by one of the workers: %q", body)

	out, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	assert.Equal(t, 2, f.waitReady(2).Generation)
}

// TestNotifyFloodFromAnotherUser: each worker leaves a process running as nobody that floods the
// worker's NOTIFY_SOCKET with STATUS=hijacked (systemd-notify in a loop, for as long as the worker
// lives). That process is a descendant of the worker, so only its uid tells it apart: forkd must
// refuse it by uid before it looks at who it is, and the workers' own READY=1 must still arrive
// during the flood (a reload replaces every worker). With the default socket files, nobody cannot
// even reach the socket; with notify.abstract, it can, and forkd drops what it sends.
func TestNotifyFloodFromAnotherUser(t *testing.T) {
	t.Parallel()
	requireTool(t, exec.Command("systemd-notify", "--version"), "systemd")
	requireTool(t, exec.Command("setpriv", "--version"), "util-linux")
	if os.Geteuid() != 0 {
		t.Skip("sending as nobody needs root")
	}
	flood := fmt.Sprintf(`W=$$ setpriv --reuid=%[1]d --regid=%[1]d --clear-groups sh -c 'while [ -d /proc/$W ]; do systemd-notify --no-block STATUS=hijacked 2>/dev/null; done' &
systemd-notify --ready --status=serving && exec sleep 600`, nobody)
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			t.Parallel()
			f := startForkd(t, options{config: fmt.Sprintf(`
command = ["/bin/sh", "-c", %q]
workers = 2
notify {
  abstract = %v
}
`, flood, abstract)})
			serving := func(st control.Status) bool {
				for _, w := range st.WorkerList {
					require.NotEqual(t, "hijacked", w.StatusLine, "a datagram from another uid was taken for the worker's")
					if w.StatusLine != "serving" {
						return false
					}
				}
				return st.Phase == control.PhaseRunning && st.Ready == 2
			}
			f.waitFor("the workers serving", serving)
			if abstract {
				f.waitFor("the flood dropped", func(st control.Status) bool { return st.DroppedNotifications > 100 })
				assert.Contains(t, f.output.String(), "sender uid 65534 is refused")
				assert.Regexp(t, `forkd_notify_dropped_total\{reason="refused_uid"\} [1-9][0-9]{2,}\n`, f.scrapeControlSocket())
			}
			out, code := f.forkctl("reload", "--wait")
			require.Equal(t, 0, code, "the new workers' READY=1 got through the flood: %s", out)
			st := f.waitFor("the new workers serving", serving)
			assert.Equal(t, 2, st.Generation)
			if !abstract {
				assert.Zero(t, st.DroppedNotifications, "nobody cannot reach a socket file of forkd's")
			}
		})
	}
}

// TestLateNotificationsAreNotDropped: a worker that says READY=1, flushes a burst of STATUS= and
// STOPPING=1, and exits at once: much of it is read after the master reaped the worker. It is
// the worker's, late, and must not be counted as a stranger's.
func TestLateNotificationsAreNotDropped(t *testing.T) {
	t.Parallel()
	requireTool(t, exec.Command(debianPython, "-c", "pass"), "python3")
	script := `import os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
a = os.environ["NOTIFY_SOCKET"]
s.connect("\0" + a[1:] if a.startswith("@") else a)
s.send(b"READY=1")
for i in range(50):
    s.send(b"STATUS=leaving %d" % i)
s.send(b"STOPPING=1")
os._exit(0)
`
	f := startForkd(t, options{config: fmt.Sprintf(`
command = [%q, "-c", %q]
workers = 2
restart {
  backoff_min = "10ms"
  backoff_max = "20ms"
}
`, debianPython, script)})
	st := f.waitFor("40 short lives", func(st control.Status) bool {
		n := 0
		for _, w := range st.WorkerList {
			n += w.Restarts
		}
		return n >= 40
	})
	assert.Zero(t, st.DroppedNotifications, "late notifications counted as a stranger's")
	assert.NotZero(t, st.LateNotifications, "none was read after its worker's exit: the test proves nothing")
}

// TestRequestCountIsBounded: X_FORKD_REQUESTS is a cumulative count: 2^64-1 is refused (the
// datagram is dropped, saying why), and a count that goes back is ignored. X_FORKD_BUSY is bounded
// too: one over a million is dropped the same way.
func TestRequestCountIsBounded(t *testing.T) {
	t.Parallel()
	requireTool(t, exec.Command("systemd-notify", "--version"), "systemd")
	script := `systemd-notify --ready --status=up X_FORKD_REQUESTS=100 &&
systemd-notify X_FORKD_REQUESTS=18446744073709551615 &&
systemd-notify X_FORKD_BUSY=2 && systemd-notify X_FORKD_BUSY=1000001 &&
systemd-notify X_FORKD_REQUESTS=50 STATUS=counted && exec sleep 600`
	f := startForkd(t, options{config: fmt.Sprintf("command = [\"/bin/sh\", \"-c\", %q]\nworkers = 1\n", script)})
	st := f.waitFor("the last status", func(st control.Status) bool {
		return st.Ready == 1 && st.WorkerList[0].StatusLine == "counted"
	})
	assert.Equal(t, uint64(100), st.WorkerList[0].Requests)
	require.NotNil(t, st.WorkerList[0].BusyThreads, "X_FORKD_BUSY=2 taken")
	assert.Equal(t, 2, *st.WorkerList[0].BusyThreads, "X_FORKD_BUSY=1000001 dropped")
	assert.Equal(t, uint64(2), st.DroppedNotifications)
	assert.Contains(t, f.output.String(), "more requests at once than a worker can serve")
	assert.Contains(t, f.output.String(), "more requests than a worker can have served")
	assert.Contains(t, f.output.String(), "X_FORKD_REQUESTS=50 after 100: a cumulative count never goes back")
	metrics := f.scrapeControlSocket()
	assert.Contains(t, metrics, `forkd_notify_dropped_total{reason="unparsable"} 2`+"\n")
	assert.Regexp(t, `forkd_worker_busy_threads\{generation="1",index="0",role="worker"\} 2\n`, metrics)
	assert.Contains(t, metrics, `forkd_notify_dropped_total{reason="unknown_sender"} 0`+"\n")
}
