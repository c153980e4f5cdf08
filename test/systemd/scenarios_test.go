package systemd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

func scenarios() []scenario {
	return []scenario{
		{"install-with-systemd", 2 * time.Minute, (*env).installWithSystemd},
		{"socket-activation", 2 * time.Minute, (*env).socketActivation},
		{"journal-fields", time.Minute, (*env).journalFields},
		{"worker-output", time.Minute, (*env).workerOutput},
		{"hardening", time.Minute, (*env).hardening},
		{"refork-under-load", 2 * time.Minute, (*env).reforkUnderLoad},
		{"reload-under-load", 3 * time.Minute, (*env).reloadUnderLoad},
		{"reload-broken-release", 3 * time.Minute, (*env).reloadBrokenRelease},
		{"reload-exec-mode", 3 * time.Minute, (*env).reloadExecMode},
		{"hot-restart", 2 * time.Minute, (*env).hotRestart},
		{"notify-reload", 3 * time.Minute, (*env).notifyReload},
		{"default-sockets", time.Minute, (*env).defaultSockets},
		{"stop-drains", 2 * time.Minute, (*env).stopDrains},
		{"bad-config", time.Minute, (*env).badConfig},
		{"watchdog", 2 * time.Minute, (*env).watchdog},
		{"fd-store", 4 * time.Minute, (*env).fdStore},
		{"cgroup-delegation", 2 * time.Minute, (*env).cgroupDelegation},
		{"worker-cgroups", 3 * time.Minute, (*env).workerCgroups},
		{"remove", 2 * time.Minute, (*env).remove},
	}
}

// installWithoutSystemd installs the .deb with chroot before the container boots: systemd is
// installed in the rootfs but not running (as in an image build), so postinst must not need it.
func (e *env) installWithoutSystemd(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	root := e.c.root
	out, errOut, code, err := runCommand(ctx, "chroot", root, "dpkg", "-i", "/root/forkd.deb")
	if err != nil || code != 0 {
		t.Fatalf("chroot dpkg -i: exit %d %v\n%s%s", code, err, out, errOut)
	}
	t.Logf("dpkg -i without systemd running:\n%s", strings.TrimSpace(out+errOut))
	for _, f := range []string{
		"usr/bin/forkd", "usr/bin/forkctl",
		"lib/systemd/system/forkd@.service", "lib/systemd/system/forkd@.socket",
		"lib/systemd/system/forkd.service", "lib/systemd/system/forkd.socket",
		"etc/forkd/example.hcl.sample",
		"usr/share/man/man8/forkd.8.gz", "usr/share/man/man8/forkctl.8.gz", "usr/share/man/man5/forkd.hcl.5.gz",
		"usr/share/bash-completion/completions/forkctl", "usr/share/zsh/vendor-completions/_forkctl",
		"usr/share/fish/vendor_completions.d/forkctl.fish",
		"usr/share/doc/forkd/examples/notify-reload.conf", "usr/share/doc/forkd/examples/cgroups.conf",
	} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("not installed: /%s", f)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "etc/forkd")); err != nil || !fi.IsDir() {
		t.Errorf("/etc/forkd is not a directory: %v", err)
	}
	if out, _, code, _ := runCommand(ctx, "chroot", root, "forkd", "version"); code != 0 || !strings.HasPrefix(out, "forkd ") {
		t.Errorf("forkd version in the container: exit %d: %q", code, out)
	} else {
		t.Logf("installed: %s", strings.TrimSpace(out))
	}
	// The sample is a valid config but for the app it names, which does not exist here: the only
	// problems forkd check may find are command and directory.
	out, _, code, _ = runCommand(ctx, "chroot", root, "forkd", "check", "/etc/forkd/example.hcl.sample")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "Error: ") && !regexp.MustCompile(`: (command|directory): `).MatchString(line) {
			t.Errorf("example.hcl.sample: %s", line)
		}
	}
	if code != 0 && code != 78 {
		t.Errorf("forkd check example.hcl.sample: exit %d\n%s", code, out)
	}
}

// installWithSystemd installs the package again with systemd running: postinst reloads systemd,
// and systemd accepts the units.
func (e *env) installWithSystemd(t *testing.T, ctx context.Context) {
	reloads := func() int {
		// systemd 252 logs "Reloading." when it starts a daemon-reload.
		n := 0
		for _, entry := range e.journal(t, ctx, "_PID=1") {
			if strings.HasPrefix(field(entry, "MESSAGE"), "Reloading") {
				n++
			}
		}
		return n
	}
	before := reloads()
	out := e.run(t, ctx, "dpkg", "-i", "/root/forkd.deb")
	t.Logf("dpkg -i with systemd running:\n%s", strings.TrimSpace(out))
	waitFor(t, ctx, "the daemon-reload of postinst in PID 1's journal", 100*time.Millisecond, func() (bool, string) {
		n := reloads()
		return n > before, fmt.Sprintf("%d reloads, %d before", n, before)
	})
	for _, unit := range []string{"forkd@demo.service", "forkd@demo.socket", "forkd.service", "forkd.socket"} {
		if state := e.prop(t, ctx, unit, "LoadState"); state != "loaded" {
			t.Errorf("%s: LoadState=%s", unit, state)
		}
	}
	// systemd-analyze verify checks every directive of the units, and that the binaries exist.
	// --man=no: minbase has no man(1) to look up Documentation=man:... with.
	out, errOut, code, _ := e.c.exec(ctx, time.Minute, "systemd-analyze", "verify", "--man=no",
		"forkd@demo.service", "forkd@demo.socket", "forkd.service", "forkd.socket")
	if code != 0 || strings.TrimSpace(out+errOut) != "" {
		t.Errorf("systemd-analyze verify: exit %d\n%s%s", code, out, errOut)
	}
}

// socketActivation: starting forkd@demo.socket alone starts nothing; the first connection starts
// the service, whose workers serve on the very socket systemd made.
func (e *env) socketActivation(t *testing.T, ctx context.Context) {
	e.run(t, ctx, "systemctl", "stop", "forkd@demo.service", "forkd@demo.socket")
	e.run(t, ctx, "systemctl", "start", "forkd@demo.socket")
	if state := e.prop(t, ctx, "forkd@demo.service", "ActiveState"); state != "inactive" {
		t.Fatalf("forkd@demo.service is %s before any connection", state)
	}
	t0 := time.Now()
	code, body, err := get(ctx, e.demoAddr, "/", 60*time.Second)
	if err != nil || code != 200 {
		t.Fatalf("first connection: %d %q %v\n%s", code, body, err, e.journalText(t, ctx, "forkd@demo.service", ""))
	}
	t.Logf("first connection answered in %.2fs (forkd started by it): %s", time.Since(t0).Seconds(), strings.TrimSpace(body))
	st := e.ensureRunning(t, ctx, "demo", e.demoAddr)

	props := e.show(t, ctx, "forkd@demo.service", "MainPID", "StatusText", "ActiveState", "SubState", "TriggeredBy")
	if !st.SocketActivated {
		t.Errorf("forkctl status: socket_activated = false")
	}
	if len(st.Listeners) != 1 || !strings.HasSuffix(st.Listeners[0].Address, e.demoAddr) || st.Listeners[0].Name != "http" {
		t.Errorf("listeners = %+v, want http on %s", st.Listeners, e.demoAddr)
	}
	if st.Mode != control.ModeFork || st.Workers != 3 || st.Ready != 3 {
		t.Errorf("mode %s, %d/%d workers ready; want fork, 3/3", st.Mode, st.Ready, st.Workers)
	}
	if fmt.Sprint(st.MasterPID) != props["MainPID"] {
		t.Errorf("forkd's PID %d is not systemd's MainPID %s", st.MasterPID, props["MainPID"])
	}
	if props["StatusText"] != st.StatusLine || !regexp.MustCompile(`^3/3 workers ready, generation \d+$`).MatchString(props["StatusText"]) {
		t.Errorf("systemd's StatusText %q, forkd's status line %q", props["StatusText"], st.StatusLine)
	}
	status, _, _, _ := e.c.exec(ctx, 30*time.Second, "systemctl", "status", "--no-pager", "--lines=0", "forkd@demo.service")
	t.Logf("systemctl status forkd@demo:\n%s", status)
	for _, want := range []string{`Active: active \(running\)`, `Status: "3/3 workers ready, generation \d+"`, `TriggeredBy: .*forkd@demo\.socket`} {
		if !regexp.MustCompile(want).MatchString(status) {
			t.Errorf("systemctl status lacks %s", want)
		}
	}

	// Each worker's fd 3 is the listening socket PID 1 holds for forkd@demo.socket, and an exec'd
	// worker (the template) has the environment sd_listen_fds(3) wants. (A forked worker's
	// /proc/PID/environ is the template's initial one; the SDK sets LISTEN_PID after the fork.)
	sockets := e.sh(t, ctx, `for fd in /proc/1/fd/*; do readlink "$fd"; done | grep '^socket:' || true`)
	forked := map[int]bool{}
	for _, w := range st.WorkerList {
		forked[w.PID] = w.Forked
	}
	for idx, pid := range workerPIDs(st) {
		out := e.sh(t, ctx, `readlink /proc/$1/fd/3; tr '\0' '\n' </proc/$1/environ | grep -E '^LISTEN_(FDS|FDNAMES|PID)=' | sort`, fmt.Sprint(pid))
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 || !strings.HasPrefix(lines[0], "socket:[") || !strings.Contains(sockets, lines[0]) {
			t.Errorf("worker %d (pid %d): fd 3 is not one of systemd's sockets %q:\n%s", idx, pid, strings.Fields(sockets), out)
			continue
		}
		if want := []string{"LISTEN_FDNAMES=http", "LISTEN_FDS=1", "LISTEN_PID=" + fmt.Sprint(pid)}; !forked[pid] && !slices.Equal(lines[1:], want) {
			t.Errorf("worker %d (pid %d): environment %q, want %q", idx, pid, lines[1:], want)
		}
	}
}

// journalFields: the master logs natively to journald, with FORKD_* fields that select one
// worker's records.
func (e *env) journalFields(t *testing.T, ctx context.Context) {
	st := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	props := e.show(t, ctx, "forkd@demo.service", "InvocationID", "MainPID")
	w1 := workerPIDs(st)[1]
	entries := e.journal(t, ctx, "-u", "forkd@demo.service", "FORKD_WORKER=1")
	var mine []map[string]any
	for _, entry := range entries {
		if field(entry, "_SYSTEMD_INVOCATION_ID") == props["InvocationID"] {
			mine = append(mine, entry)
		}
	}
	t.Logf("journalctl -u forkd@demo FORKD_WORKER=1: %d records, %d of this invocation", len(entries), len(mine))
	if len(mine) == 0 {
		t.Fatalf("no record with FORKD_WORKER=1 from forkd@demo's current invocation; the unit's journal:\n%s",
			tail(e.journalText(t, ctx, "forkd@demo.service", ""), 30))
	}
	spawned := false
	for _, entry := range mine {
		if field(entry, "FORKD_WORKER") != "1" {
			t.Errorf("a FORKD_WORKER=1 match returned FORKD_WORKER=%q", field(entry, "FORKD_WORKER"))
		}
		// Native: sent on journald's socket by forkd itself, not a line of its stderr.
		if field(entry, "_TRANSPORT") != "journal" || field(entry, "_PID") != props["MainPID"] ||
			field(entry, "SYSLOG_IDENTIFIER") != "forkd@demo" {
			t.Errorf("record %q: _TRANSPORT=%s _PID=%s (MainPID %s) SYSLOG_IDENTIFIER=%s; want journal, the master, forkd@demo",
				field(entry, "MESSAGE"), field(entry, "_TRANSPORT"), field(entry, "_PID"), props["MainPID"], field(entry, "SYSLOG_IDENTIFIER"))
		}
		if field(entry, "FORKD_EVENT") == "worker-spawned" && field(entry, "FORKD_PID") == fmt.Sprint(w1) {
			spawned = true
			if field(entry, "FORKD_GENERATION") == "" {
				t.Errorf("worker-spawned record without FORKD_GENERATION: %v", entry)
			}
		}
	}
	if !spawned {
		t.Errorf("no FORKD_EVENT=worker-spawned record with FORKD_PID=%d (worker 1)", w1)
	}
	var events []string
	for _, entry := range mine {
		events = append(events, field(entry, "FORKD_EVENT"))
	}
	t.Logf("worker 1's events: %s", strings.Join(events, " "))
	out := e.run(t, ctx, "journalctl", "--no-pager", "-u", "forkd@demo.service", "FORKD_EVENT=cluster-ready", "-o", "cat", "-n", "1")
	if !strings.Contains(out, "workers ready") {
		t.Errorf("journalctl FORKD_EVENT=cluster-ready: %q", out)
	}
}

// hardening: the unit's sandboxing is in effect for the master and the workers, and forkd works
// under it (which every other scenario shows).
func (e *env) hardening(t *testing.T, ctx context.Context) {
	st := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	want := map[string]string{
		"Type": "notify", "NotifyAccess": "main", "KillMode": "mixed", "Restart": "on-failure",
		"RestartPreventExitStatus": "78", "TimeoutStopUSec": "45s", "WatchdogUSec": "30s",
		"NoNewPrivileges": "yes", "ProtectSystem": "full", "ProtectHome": "read-only", "PrivateTmp": "yes",
		"PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
		"ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
		"ProtectProc":      "invisible",
		"RestrictRealtime": "yes", "RestrictSUIDSGID": "yes", "LockPersonality": "yes",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX", "SystemCallArchitectures": "native",
	}
	var props []string
	for p := range want {
		props = append(props, p)
	}
	got := e.show(t, ctx, "forkd@demo.service", props...)
	for p, v := range want {
		if got[p] != v {
			t.Errorf("%s=%s, want %s", p, got[p], v)
		}
	}
	// In the kernel, for the master and a forked worker: no new privileges, a seccomp filter, a
	// mount namespace of the unit's own; / read-only below /usr; a private /tmp.
	for _, pid := range []int{st.MasterPID, workerPIDs(st)[1]} {
		out := e.sh(t, ctx, `grep -E '^(NoNewPrivs|Seccomp):' /proc/$1/status | tr -s '\t ' ' '
[ "$(readlink /proc/$1/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] && echo own-mount-namespace
nsenter -t $1 -m touch /usr/.forkd-e2e 2>/dev/null || echo usr-read-only
nsenter -t $1 -m touch /tmp/.forkd-e2e && [ ! -e /tmp/.forkd-e2e ] && echo private-tmp
`, fmt.Sprint(pid))
		for _, w := range []string{"NoNewPrivs: 1", "Seccomp: 2", "own-mount-namespace", "usr-read-only", "private-tmp"} {
			if !strings.Contains(out, w) {
				t.Errorf("pid %d: no %q in:\n%s", pid, w, out)
			}
		}
	}
	out, _, _, _ := e.c.exec(ctx, 30*time.Second, "systemd-analyze", "security", "--no-pager", "forkd@demo.service")
	if m := regexp.MustCompile(`(?m)^→ Overall exposure level.*$`).FindString(out); m != "" {
		t.Logf("systemd-analyze security forkd@demo.service: %s", m)
	}
}

// reforkUnderLoad: forkctl refork inside the container makes a new generation of workers 1..n-1
// from the template while the host keeps sending requests, none of which fails.
func (e *env) reforkUnderLoad(t *testing.T, ctx context.Context) {
	before := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	mainPID := e.prop(t, ctx, "forkd@demo.service", "MainPID")
	l := startLoad(ctx, e.demoAddr)
	defer l.stop()
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	out := e.run(t, ctx, "forkctl", "--socket", "/run/forkd/demo/control.sock", "refork", "--wait")
	t.Logf("forkctl refork --wait: %.2fs: %s", time.Since(t0).Seconds(), strings.TrimSpace(out))
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Error(err)
	}
	checkLoad(t, l, "the refork")

	after := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	if after.Generation != before.Generation+1 {
		t.Errorf("generation %d after the refork, %d before", after.Generation, before.Generation)
	}
	old, cur := workerPIDs(before), workerPIDs(after)
	if cur[0] != old[0] {
		t.Errorf("the template (worker 0) changed: pid %d -> %d", old[0], cur[0])
	}
	for i := 1; i < after.Workers; i++ {
		if cur[i] == old[i] || cur[i] == 0 {
			t.Errorf("worker %d: pid %d -> %d, want a new process", i, old[i], cur[i])
		}
	}
	for _, w := range after.WorkerList {
		if w.Index > 0 && (!w.Forked || w.Generation != after.Generation) {
			t.Errorf("worker %d: forked %v, generation %d; want forked, generation %d\nstatus: %s", w.Index, w.Forked,
				w.Generation, after.Generation, e.run(t, ctx, "forkctl", "--socket", "/run/forkd/demo/control.sock", "status"))
		}
	}
	if m := e.prop(t, ctx, "forkd@demo.service", "MainPID"); m != mainPID {
		t.Errorf("MainPID changed: %s -> %s", mainPID, m)
	}
	t.Logf("workers before %v, after %v", old, cur)
}

// reloadUnderLoad: systemctl reload (ExecReload=forkctl reload --wait) replaces every worker while
// the host keeps sending requests; MainPID stays, and the unit never leaves active/reloading.
func (e *env) reloadUnderLoad(t *testing.T, ctx context.Context) {
	e.checkReload(t, ctx, "demo", e.demoAddr, "systemctl reload under load")
}

// reloadExecMode is the same in exec mode, with the Go demo.
func (e *env) reloadExecMode(t *testing.T, ctx context.Context) {
	e.checkReload(t, ctx, "hello", e.helloAddr, "systemctl reload in exec mode")
}

func (e *env) checkReload(t *testing.T, ctx context.Context, instance, addr, what string) {
	unit := "forkd@" + instance + ".service"
	before := e.ensureRunning(t, ctx, instance, addr)
	props := e.show(t, ctx, unit, "MainPID", "NRestarts")
	l := startLoad(ctx, addr)
	defer l.stop()
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Fatal(err)
	}
	cursor := e.cursor(t, ctx)
	mon := e.monitor(ctx, unit)
	t0 := time.Now()
	out, errOut, code, err := e.c.exec(ctx, 2*time.Minute, "systemctl", "reload", unit)
	took := time.Since(t0)
	states := mon.stop()
	journal := e.journalText(t, ctx, unit, cursor)
	if err != nil || code != 0 {
		l.stop()
		t.Fatalf("systemctl reload %s: exit %d %v\n%s%s\njournal:\n%s", unit, code, err, out, errOut, journal)
	}
	t.Logf("systemctl reload %s: %.2fs", unit, took.Seconds())
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Error(err)
	}
	checkLoad(t, l, what)

	after := e.ensureRunning(t, ctx, instance, addr)
	old, cur := workerPIDs(before), workerPIDs(after)
	for i := 0; i < after.Workers; i++ {
		if cur[i] == 0 || slices.Contains(mapValues(old), cur[i]) {
			t.Errorf("worker %d: pid %d -> %d, want a new process", i, old[i], cur[i])
		}
	}
	if after.Generation != before.Generation+1 {
		t.Errorf("generation %d after the reload, %d before", after.Generation, before.Generation)
	}
	now := e.show(t, ctx, unit, "MainPID", "NRestarts", "ActiveState")
	if now["MainPID"] != props["MainPID"] || now["NRestarts"] != props["NRestarts"] || now["ActiveState"] != "active" {
		t.Errorf("after the reload: %v, before: %v", now, props)
	}
	checkStates(t, states, "the reload")
	if journal, ok := e.waitJournal(t, ctx, unit, cursor, "Reloaded forkd@"+instance+".service"); !ok {
		t.Errorf("systemd did not log the reload:\n%s", journal)
	}
	t.Logf("workers before %v, after %v; states seen %v", old, cur, states)
}

// checkStates fails unless every state seen is active or reloading.
func checkStates(t *testing.T, states map[string]int, what string) {
	t.Helper()
	for s := range states {
		if !strings.HasPrefix(s, "active/") && !strings.HasPrefix(s, "reloading/") {
			t.Errorf("the unit was %s during %s (states seen: %v)", s, what, states)
		}
	}
}

func mapValues(m map[int]int) []int {
	var v []int
	for _, x := range m {
		v = append(v, x)
	}
	return v
}

func firstMatch(text, substr string) string {
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, substr) {
			return line
		}
	}
	return ""
}

// reloadBrokenRelease: with a release that cannot boot in place, systemctl reload fails, and the
// old workers keep serving; back on a good release, a reload works again.
func (e *env) reloadBrokenRelease(t *testing.T, ctx context.Context) {
	before := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	props := e.show(t, ctx, "forkd@demo.service", "MainPID", "NRestarts")
	current := filepath.Join(e.c.root, "opt/forkd-demo/current")
	setRelease := func(rel string) {
		t.Helper()
		tmp := current + ".new"
		_ = os.Remove(tmp)
		if err := os.Symlink(rel, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, current); err != nil {
			t.Fatal(err)
		}
	}
	setRelease("releases/2-broken")
	defer setRelease("releases/1")

	l := startLoad(ctx, e.demoAddr)
	defer l.stop()
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Fatal(err)
	}
	cursor := e.cursor(t, ctx)
	t0 := time.Now()
	_, errOut, code, err := e.c.exec(ctx, 2*time.Minute, "systemctl", "reload", "forkd@demo.service")
	journal := e.journalText(t, ctx, "forkd@demo.service", cursor)
	if err != nil {
		t.Fatalf("systemctl reload: %v", err)
	}
	if code == 0 {
		t.Fatalf("systemctl reload with a broken release succeeded; journal:\n%s", journal)
	}
	t.Logf("systemctl reload failed as it should, after %.2fs: exit %d: %s", time.Since(t0).Seconds(), code, strings.TrimSpace(errOut))
	t.Logf("forkctl's reason, from the journal: %s", strings.TrimSpace(firstMatch(journal, "forkctl")))
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Error(err)
	}
	checkLoad(t, l, "the failed reload")

	after := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	if !mapsEqual(workerPIDs(before), workerPIDs(after)) {
		t.Errorf("the old workers did not keep serving: %v before, %v after", workerPIDs(before), workerPIDs(after))
	}
	if after.Generation != before.Generation {
		t.Errorf("generation %d after the failed reload, %d before", after.Generation, before.Generation)
	}
	now := e.show(t, ctx, "forkd@demo.service", "MainPID", "NRestarts", "ActiveState", "SubState")
	if now["MainPID"] != props["MainPID"] || now["NRestarts"] != props["NRestarts"] || now["ActiveState"] != "active" {
		t.Errorf("after the failed reload: %v, before: %v", now, props)
	}

	setRelease("releases/1")
	if _, errOut, code, _ := e.c.exec(ctx, 2*time.Minute, "systemctl", "reload", "forkd@demo.service"); code != 0 {
		t.Errorf("reload back on the good release: exit %d: %s\n%s", code, errOut,
			e.journalText(t, ctx, "forkd@demo.service", cursor))
	}
}

func mapsEqual(a, b map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// hotRestart: forkctl restart re-execs the master in place: MainPID does not change, systemd never
// sees the unit leave active, and no request fails. It is how a running forkd picks up an upgraded
// binary, so the package is installed again first: the running master's executable is then a
// deleted file, and after the restart it is /usr/bin/forkd again.
func (e *env) hotRestart(t *testing.T, ctx context.Context) {
	before := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	props := e.show(t, ctx, "forkd@demo.service", "MainPID", "NRestarts", "InvocationID")
	exe := func() string {
		return strings.TrimSpace(e.run(t, ctx, "readlink", "/proc/"+props["MainPID"]+"/exe"))
	}
	e.run(t, ctx, "dpkg", "-i", "/root/forkd.deb") // an upgrade, as far as the running forkd can tell
	if x := exe(); !strings.HasSuffix(x, "(deleted)") {
		t.Logf("after reinstalling the package, the master's executable is %q, not a deleted file", x)
	}
	l := startLoad(ctx, e.demoAddr)
	defer l.stop()
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Fatal(err)
	}
	cursor := e.cursor(t, ctx)
	mon := e.monitor(ctx, "forkd@demo.service")
	t0 := time.Now()
	out, errOut, code, err := e.c.exec(ctx, time.Minute, "forkctl", "--socket", "/run/forkd/demo/control.sock", "restart", "--wait")
	states := mon.stop()
	if err != nil || code != 0 {
		t.Fatalf("forkctl restart --wait: exit %d %v\n%s%s\n%s", code, err, out, errOut,
			e.journalText(t, ctx, "forkd@demo.service", cursor))
	}
	t.Logf("forkctl restart --wait: %.2fs: %s", time.Since(t0).Seconds(), strings.TrimSpace(out))
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Error(err)
	}
	checkLoad(t, l, "the hot restart")
	after := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	now := e.show(t, ctx, "forkd@demo.service", "MainPID", "NRestarts", "InvocationID")
	if now["MainPID"] != props["MainPID"] || now["NRestarts"] != props["NRestarts"] || now["InvocationID"] != props["InvocationID"] {
		t.Errorf("after the hot restart: %v, before: %v", now, props)
	}
	if fmt.Sprint(after.MasterPID) != props["MainPID"] {
		t.Errorf("forkd's PID is %d, systemd's MainPID %s", after.MasterPID, props["MainPID"])
	}
	checkStates(t, states, "the hot restart")
	if x := exe(); x != "/usr/bin/forkd" {
		t.Errorf("after the hot restart the master runs %q, not the installed /usr/bin/forkd", x)
	}
	t.Logf("workers before %v, after %v; states seen %v", workerPIDs(before), workerPIDs(after), states)
}

// notifyReload: the Type=notify-reload drop-in (systemd 253+): systemctl reload sends SIGHUP, and
// forkd answers RELOADING=1 + MONOTONIC_USEC=, then READY=1 once the rollout is done.
func (e *env) notifyReload(t *testing.T, ctx context.Context) {
	if e.systemd < 253 {
		t.Skipf("systemd %d has no Type=notify-reload (253+); FORKD_E2E_SUITE=trixie runs this scenario on systemd 257", e.systemd)
	}
	dropin := "/etc/systemd/system/forkd@demo.service.d/20-notify-reload.conf"
	e.run(t, ctx, "mkdir", "-p", filepath.Dir(dropin))
	e.run(t, ctx, "cp", "/usr/share/doc/forkd/examples/notify-reload.conf", dropin)
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		e.c.exec(ctx, 30*time.Second, "rm", "-f", dropin)
		e.c.exec(ctx, 30*time.Second, "systemctl", "daemon-reload")
		e.c.exec(ctx, 30*time.Second, "systemctl", "restart", "forkd@demo.service")
	}()
	e.run(t, ctx, "systemctl", "daemon-reload")
	e.run(t, ctx, "systemctl", "restart", "forkd@demo.service")
	if typ := e.prop(t, ctx, "forkd@demo.service", "Type"); typ != "notify-reload" {
		t.Fatalf("Type=%s with the drop-in", typ)
	}
	cursor := e.cursor(t, ctx)
	e.checkReload(t, ctx, "demo", e.demoAddr, "systemctl reload with Type=notify-reload")
	if journal, ok := e.waitJournal(t, ctx, "forkd@demo.service", cursor, "received SIGHUP"); !ok {
		t.Errorf("the reload did not come as SIGHUP:\n%s", journal)
	}

	// The documented limit of Type=notify-reload: a failed rollout cannot fail systemctl reload.
	// The old workers keep serving all the same.
	before := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	current := filepath.Join(e.c.root, "opt/forkd-demo/current")
	if err := os.Remove(current); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("releases/2-broken", current); err != nil {
		t.Fatal(err)
	}
	defer func() {
		os.Remove(current)
		os.Symlink("releases/1", current)
	}()
	cursor = e.cursor(t, ctx)
	_, _, code, err := e.c.exec(ctx, 2*time.Minute, "systemctl", "reload", "forkd@demo.service")
	if err != nil {
		t.Fatal(err)
	}
	journal, _ := e.waitJournal(t, ctx, "forkd@demo.service", cursor, "reload stopped")
	t.Logf("systemctl reload with a broken release under Type=notify-reload: exit %d; forkd: %s", code,
		strings.TrimSpace(firstMatch(journal, "reload stopped")))
	after := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	if !mapsEqual(workerPIDs(before), workerPIDs(after)) {
		t.Errorf("the old workers did not keep serving: %v before, %v after", workerPIDs(before), workerPIDs(after))
	}
}

// defaultSockets runs the units as shipped: forkd@plain on the template socket's default unix
// socket, /run/forkd/plain.sock, and the single-app forkd.service, whose control socket is the one
// forkctl uses without options.
func (e *env) defaultSockets(t *testing.T, ctx context.Context) {
	defer e.c.exec(context.WithoutCancel(ctx), time.Minute, "systemctl", "stop",
		"forkd@plain.socket", "forkd@plain.service", "forkd.socket", "forkd.service")

	e.run(t, ctx, "systemctl", "start", "forkd@plain.socket")
	// An HTTP request over the unix socket, from inside the container: it starts the service.
	out := e.run(t, ctx, "python3", "-c", `import socket
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect("/run/forkd/plain.sock")
s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.decode().split("\r\n\r\n", 1)[1])`)
	if _, ok := parseReply(out); !ok {
		t.Errorf("GET / over /run/forkd/plain.sock: %q", out)
	}
	st := e.ensureRunning(t, ctx, "plain", "")
	if !st.SocketActivated || len(st.Listeners) != 1 || st.Listeners[0].Address != "unix:///run/forkd/plain.sock" {
		t.Errorf("forkd@plain: socket_activated %v, listeners %+v; want systemd's /run/forkd/plain.sock", st.SocketActivated, st.Listeners)
	}

	e.run(t, ctx, "systemctl", "start", "forkd.socket")
	if code, body, err := get(ctx, e.singleAddr, "/", 60*time.Second); err != nil || code != 200 {
		t.Fatalf("forkd.socket: %d %q %v\n%s", code, body, err, e.journalText(t, ctx, "forkd.service", ""))
	}
	waitFor(t, ctx, "forkd.service active", 100*time.Millisecond, func() (bool, string) {
		s := e.prop(t, ctx, "forkd.service", "ActiveState")
		return s == "active", s
	})
	out = e.run(t, ctx, "forkctl", "status") // no --socket: /run/forkd/forkd/control.sock
	if !strings.Contains(out, "2/2 ready") || !strings.Contains(out, "socket-activated") {
		t.Errorf("forkctl status (default socket) for forkd.service:\n%s", out)
	}
}

// stopDrains: systemctl stop lets a request in flight complete, and leaves no process of the unit.
func (e *env) stopDrains(t *testing.T, ctx context.Context) {
	e.ensureRunning(t, ctx, "demo", e.demoAddr)
	cg := e.prop(t, ctx, "forkd@demo.service", "ControlGroup")
	if cg == "" {
		t.Fatal("no ControlGroup")
	}
	const slow = 4 * time.Second
	type result struct {
		code int
		body string
		err  error
	}
	res := make(chan result, 1)
	cursor := e.cursor(t, ctx)
	nonce := fmt.Sprintf("stop%x", time.Now().UnixNano())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		code, body, err := get(ctx, e.demoAddr, fmt.Sprintf("/print?ms=%d&msg=%s", slow.Milliseconds(), nonce), 30*time.Second)
		res <- result{code, body, err}
	}()
	defer wg.Wait()
	// The worker prints the nonce when the request reaches it; on stdout and on stderr, and either
	// line will do: once (seen once in CI) only the stderr one was returned after the cursor.
	if journal, ok := e.waitJournal(t, ctx, "forkd@demo.service", cursor, nonce); !ok {
		t.Fatalf("the slow request did not reach a worker within 10s:\n%s", journal)
	}
	t0 := time.Now()
	e.run(t, ctx, "systemctl", "stop", "forkd@demo.service")
	took := time.Since(t0)
	r := <-res
	t.Logf("systemctl stop took %.2fs with a %s request in flight; it answered %d %q %v", took.Seconds(), slow, r.code, strings.TrimSpace(r.body), r.err)
	if r.err != nil || r.code != 200 {
		t.Errorf("the request in flight did not complete: %d %q %v", r.code, r.body, r.err)
	}
	if took < slow-2*time.Second {
		t.Errorf("systemctl stop returned after %s, before the %s request could complete", took, slow)
	}
	props := e.show(t, ctx, "forkd@demo.service", "ActiveState", "Result", "MainPID")
	if props["ActiveState"] != "inactive" || props["Result"] != "success" || props["MainPID"] != "0" {
		t.Errorf("after stop: %v", props)
	}
	// No process left: the unit's cgroup is gone or empty in every hierarchy, and no process
	// of the container belongs to it.
	left := e.sh(t, ctx, `for h in /sys/fs/cgroup /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
  f="$h$1/cgroup.procs"; [ -f "$f" ] && [ -s "$f" ] && echo "$f: $(cat "$f" | tr '\n' ' ')"
done
grep -l "$1\$" /proc/[0-9]*/cgroup 2>/dev/null || true`, cg)
	if strings.TrimSpace(left) != "" {
		t.Errorf("processes left in %s after stop:\n%s\n%s", cg, left, e.sh(t, ctx, "ps -e -o pid,cgroup:60,args || true"))
	}
	cgls, _, _, _ := e.c.exec(ctx, 30*time.Second, "systemd-cgls", "--no-pager", "-u", "forkd@demo.service")
	t.Logf("systemd-cgls -u forkd@demo.service after stop: %q", strings.TrimSpace(cgls))
	for _, want := range []string{"all workers have exited", "Deactivated successfully"} {
		if journal, ok := e.waitJournal(t, ctx, "forkd@demo.service", cursor, want); !ok {
			t.Errorf("journal lacks %q:\n%s", want, journal)
		}
	}
	// The socket stayed with systemd: the next connection starts forkd again.
	if state := e.prop(t, ctx, "forkd@demo.socket", "ActiveState"); state != "active" {
		t.Errorf("forkd@demo.socket is %s after the service stopped", state)
	}
	e.ensureRunning(t, ctx, "demo", e.demoAddr)
}

// badConfig: forkd refuses the config with diagnostics in the journal and exit 78, and systemd
// does not restart it (RestartPreventExitStatus=78).
func (e *env) badConfig(t *testing.T, ctx context.Context) {
	_, _, code, _ := e.c.exec(ctx, time.Minute, "systemctl", "start", "forkd@broken.service")
	if code == 0 {
		t.Fatal("forkd@broken.service started with an invalid config")
	}
	time.Sleep(3 * time.Second) // RestartSec=1: a restart would have happened by now
	props := e.show(t, ctx, "forkd@broken.service", "ActiveState", "Result", "ExecMainStatus", "NRestarts")
	want := map[string]string{"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "78", "NRestarts": "0"}
	if !mapsEqualString(props, want) {
		t.Errorf("forkd@broken.service: %v, want %v", props, want)
	}
	journal, _ := e.waitJournal(t, ctx, "forkd@broken.service", "", "workers: 0 is out of range")
	if !strings.Contains(journal, "/etc/forkd/broken.hcl:2,") || !strings.Contains(journal, "workers: 0 is out of range") {
		t.Errorf("the journal lacks forkd's diagnostic:\n%s", journal)
	}
	e.c.exec(ctx, time.Minute, "systemctl", "stop", "forkd@broken.socket")
	e.c.exec(ctx, time.Minute, "systemctl", "reset-failed", "forkd@broken.service")
}

func mapsEqualString(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// watchdog: with WatchdogSec=2, forkd keeps systemd's watchdog fed; frozen with SIGSTOP, the master
// is killed and restarted by systemd.
func (e *env) watchdog(t *testing.T, ctx context.Context) {
	e.ensureRunning(t, ctx, "hello", e.helloAddr)
	unit := "forkd@hello.service"
	props := e.show(t, ctx, unit, "MainPID", "NRestarts", "WatchdogUSec")
	if props["WatchdogUSec"] != "2s" {
		t.Fatalf("WatchdogUSec=%s, want the drop-in's 2s", props["WatchdogUSec"])
	}
	// Two and a half periods: a forkd that did not ping would be restarted by now.
	time.Sleep(5 * time.Second)
	if now := e.show(t, ctx, unit, "MainPID", "NRestarts", "WatchdogUSec"); !mapsEqualString(now, props) {
		t.Fatalf("forkd@hello restarted without being frozen: %v, before %v\n%s", now, props,
			tail(e.journalText(t, ctx, unit, ""), 30))
	}
	cursor := e.cursor(t, ctx)
	e.run(t, ctx, "kill", "-STOP", props["MainPID"])
	t0 := time.Now()
	var now map[string]string
	waitFor(t, ctx, "systemd to restart the frozen forkd", 100*time.Millisecond, func() (bool, string) {
		now = e.show(t, ctx, unit, "MainPID", "NRestarts", "ActiveState")
		return now["MainPID"] != props["MainPID"] && now["MainPID"] != "0" && now["ActiveState"] == "active", fmt.Sprint(now)
	})
	took := time.Since(t0)
	t.Logf("frozen at MainPID %s; systemd had a new forkd (MainPID %s) active %.2fs later", props["MainPID"], now["MainPID"], took.Seconds())
	if took < 2*time.Second {
		t.Errorf("restarted %s after the freeze, before WatchdogSec=2s", took)
	}
	if atoi(now["NRestarts"]) != atoi(props["NRestarts"])+1 {
		t.Errorf("NRestarts %s -> %s, want one more", props["NRestarts"], now["NRestarts"])
	}
	// systemd logs "Watchdog timeout (limit 2s)!", sends SIGABRT (forkd's goroutine dump follows),
	// and "Failed with result 'watchdog'". One of the two lines is enough: PID 1 drops a log
	// message when journald's socket is full, as it can be while the dump pours in.
	journal, _ := e.waitJournal(t, ctx, unit, cursor, "Failed with result 'watchdog'")
	timeout, result := firstMatch(journal, "Watchdog timeout"), firstMatch(journal, "Failed with result 'watchdog'")
	if timeout == "" && result == "" {
		all := e.run(t, ctx, "journalctl", "--no-pager", "-o", "short-monotonic", "--after-cursor", cursor)
		t.Errorf("no watchdog message in the unit's journal; the whole journal since the freeze:\n%s", all)
	}
	t.Logf("journal: %q / %q / %q", strings.TrimSpace(timeout), strings.TrimSpace(firstMatch(journal, "Main process exited")),
		strings.TrimSpace(result))
	e.ensureRunning(t, ctx, "hello", e.helloAddr)
}

// remove: dpkg -r stops every instance (prerm) and leaves no process behind; purge keeps the
// administrator's configs.
func (e *env) remove(t *testing.T, ctx context.Context) {
	e.ensureRunning(t, ctx, "demo", e.demoAddr)
	e.ensureRunning(t, ctx, "hello", e.helloAddr)
	out := e.run(t, ctx, "dpkg", "-r", "forkd")
	t.Logf("dpkg -r forkd:\n%s", strings.TrimSpace(out))
	left := e.sh(t, ctx, `grep -lE 'forkd(@[^/]*)?\.service$' /proc/[0-9]*/cgroup 2>/dev/null | while read -r f; do p=${f#/proc/}; p=${p%/cgroup}; echo "$p $(tr '\0' ' ' </proc/$p/cmdline)"; done; true`)
	if strings.TrimSpace(left) != "" {
		t.Errorf("processes left in forkd units after dpkg -r:\n%s", left)
	}
	units := e.run(t, ctx, "systemctl", "list-units", "--all", "--plain", "--no-legend", "forkd*")
	for _, line := range strings.Split(strings.TrimSpace(units), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] != "inactive" && f[2] != "failed" {
			t.Errorf("unit still active after dpkg -r: %s", line)
		}
	}
	if _, err := os.Stat(filepath.Join(e.c.root, "usr/bin/forkd")); err == nil {
		t.Error("/usr/bin/forkd is still there after dpkg -r")
	}
	e.run(t, ctx, "dpkg", "--purge", "forkd")
	if _, err := os.Stat(filepath.Join(e.c.root, "etc/forkd/demo.hcl")); err != nil {
		t.Errorf("purge removed the administrator's config: %v", err)
	}
}
