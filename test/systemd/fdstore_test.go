package systemd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// fdstoreUnit runs forkd without a socket unit: forkd binds the config's listen block itself
// (/etc/forkd/fdstore.hcl, e.bindAddr) and hands the socket to systemd's fd store.
const fdstoreUnit = "forkd-fdstore.service"

// fdstoreDropin enables the store. StartLimitIntervalSec=0: the scenario starts the unit more often
// than the packaged StartLimitBurst=5 allows in two minutes.
const fdstoreDropin = "[Unit]\nStartLimitIntervalSec=0\n\n[Service]\nFileDescriptorStoreMax=4\n"

// installFdstoreUnit makes forkd-fdstore.service the way docs/systemd.md tells an operator to: the
// packaged single-app forkd.service without forkd.socket, with a config and control socket of its
// own; FileDescriptorStoreMax= comes in a drop-in.
func (e *env) installFdstoreUnit(t *testing.T, ctx context.Context) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.c.root, "lib/systemd/system/forkd.service"))
	if err != nil {
		t.Fatal(err)
	}
	// The header comment is forkd.service's own.
	_, unit, ok := strings.Cut(string(b), "\n[Unit]\n")
	if !ok {
		t.Fatalf("the packaged forkd.service has no [Unit]:\n%s", b)
	}
	unit = "[Unit]\n" + unit
	for _, r := range [][2]string{
		{"Requires=forkd.socket\n", ""},
		{"After=forkd.socket network.target", "After=network.target"},
		{"/etc/forkd/forkd.hcl", "/etc/forkd/fdstore.hcl"},
		{"/run/forkd/forkd/", "/run/forkd/fdstore/"},
		{"RuntimeDirectory=forkd/forkd\n", "RuntimeDirectory=forkd/fdstore\n"},
	} {
		if !strings.Contains(unit, r[0]) {
			t.Fatalf("the packaged forkd.service has no %q to replace:\n%s", r[0], unit)
		}
		unit = strings.ReplaceAll(unit, r[0], r[1])
	}
	if strings.Contains(unit, "forkd.socket") || strings.Contains(unit, "/run/forkd/forkd") || strings.Contains(unit, "/etc/forkd/forkd.hcl") {
		t.Fatalf("forkd-fdstore.service still names forkd.socket or forkd.service's paths:\n%s", unit)
	}
	unit = "# forkd-fdstore.service (test/systemd): forkd.service without forkd.socket; forkd binds the\n" +
		"# socket of /etc/forkd/fdstore.hcl itself. FileDescriptorStoreMax= is in a drop-in.\n" + unit
	if err := writeFile(filepath.Join(e.c.root, "etc/systemd/system", fdstoreUnit), unit); err != nil {
		t.Fatal(err)
	}
	e.setFdstoreDropin(t, ctx, "10-e2e.conf", fdstoreDropin)
}

// setFdstoreDropin writes (or, with content empty, removes) a drop-in of forkd-fdstore.service and
// reloads systemd.
func (e *env) setFdstoreDropin(t *testing.T, ctx context.Context, name, content string) {
	t.Helper()
	path := filepath.Join(e.c.root, "etc/systemd/system", fdstoreUnit+".d", name)
	if content == "" {
		if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	} else if err := writeFile(path, content); err != nil {
		t.Fatal(err)
	}
	e.run(t, ctx, "systemctl", "daemon-reload")
}

// fdstoreState is what the scenario looks at after each step.
type fdstoreState struct {
	mainPID, nRestarts, invocation, nStore string
	status                                 control.Status
	socket                                 string // "socket:[INODE]": the socket listening on e.bindAddr
}

func (e *env) fdstoreState(t *testing.T, ctx context.Context) fdstoreState {
	t.Helper()
	st := e.waitReady(t, ctx, fdstoreUnit, "fdstore")
	p := e.show(t, ctx, fdstoreUnit, "MainPID", "NRestarts", "InvocationID", "NFileDescriptorStore")
	s := fdstoreState{mainPID: p["MainPID"], nRestarts: p["NRestarts"], invocation: p["InvocationID"],
		nStore: p["NFileDescriptorStore"], status: st}
	if s.socket = listeningSocket(e.bindAddr); s.socket == "" {
		t.Fatalf("no socket listens on %s:\n%s", e.bindAddr, readFile("/proc/net/tcp"))
	}
	return s
}

// listeningSocket returns "socket:[INODE]" of the TCP socket listening on addr (an IPv4
// "127.0.0.1:PORT"), as readlink shows a descriptor of it, or "" when none listens. The container
// shares the host's network namespace, so the host's /proc/net/tcp lists it.
func listeningSocket(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	ip := net.ParseIP(host).To4()
	p, _ := strconv.Atoi(port)
	// /proc/net/tcp: "sl local_address rem_address st ... inode", the address as the 32-bit
	// value in hex (host byte order: little-endian here) and the port in hex; st 0A is LISTEN.
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], p)
	for _, line := range strings.Split(readFile("/proc/net/tcp"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 10 && f[1] == local && f[3] == "0A" {
			return "socket:[" + f[9] + "]"
		}
	}
	return ""
}

// pid1Holds reports whether systemd (PID 1 of the container) has socket open: the fd store's copy.
func (e *env) pid1Holds(t *testing.T, ctx context.Context, socket string) bool {
	t.Helper()
	out := e.sh(t, ctx, `for fd in /proc/1/fd/*; do readlink "$fd"; done`)
	return slices.Contains(strings.Fields(out), socket)
}

// storeEvents counts forkd's "listening sockets handed to systemd's fd store" records of one
// invocation of the unit.
func (e *env) storeEvents(t *testing.T, ctx context.Context, invocation string) int {
	t.Helper()
	n := 0
	for _, entry := range e.journal(t, ctx, "-u", fdstoreUnit, "FORKD_EVENT=fdstore") {
		if field(entry, "_SYSTEMD_INVOCATION_ID") == invocation {
			n++
		}
	}
	return n
}

// masterEnv returns the LISTEN_* and FDSTORE variables of pid's initial environment, sorted.
func (e *env) masterEnv(t *testing.T, ctx context.Context, pid string) []string {
	t.Helper()
	out := e.sh(t, ctx, `tr '\0' '\n' </proc/$1/environ | grep -E '^(LISTEN_(FDS|FDNAMES|PID)|FDSTORE)=' | sort || true`, pid)
	return strings.Fields(out)
}

// probe connects to addr from the host and sends GET /: connecting must succeed at once (the
// kernel completes the handshake as long as the socket listens, into its backlog), the answer may
// come later. It returns the connect error, or where the answer comes, read within 30 seconds.
func probe(ctx context.Context, addr string) (reply <-chan probeReply, connectErr error) {
	d := net.Dialer{Timeout: 3 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: e2e\r\n\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	ch := make(chan probeReply, 1)
	go func() {
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		resp, err := io.ReadAll(bufio.NewReader(c))
		_, body, _ := strings.Cut(string(resp), "\r\n\r\n")
		ch <- probeReply{body: strings.TrimSpace(body), err: err, at: time.Now()}
	}()
	return ch, nil
}

type probeReply struct {
	body string
	err  error
	at   time.Time
}

// fdStore: forkd binds its own socket (no socket unit) and, with FileDescriptorStoreMax=4, hands
// it to systemd's fd store; systemd gives it back (LISTEN_FDS) when it starts forkd again, so the
// socket never closes: connections made while forkd is down wait in its backlog and are served
// after. Checked for systemctl restart and for a crash (kill -9 of the master, Restart=on-failure);
// systemctl stop releases the store (FileDescriptorStorePreserve=restart, the only behaviour
// before systemd 254); on 254 and later, FileDescriptorStorePreserve=yes keeps it across stop too,
// and =no releases it even on restart and crash. Finally, forkd's offer to a unit without
// FileDescriptorStoreMax=. docs/systemd.md has the results.
func (e *env) fdStore(t *testing.T, ctx context.Context) {
	e.installFdstoreUnit(t, ctx)
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		e.c.exec(ctx, 30*time.Second, "systemctl", "stop", fdstoreUnit)
		os.RemoveAll(filepath.Join(e.c.root, "etc/systemd/system", fdstoreUnit+".d"))
		os.Remove(filepath.Join(e.c.root, "etc/systemd/system", fdstoreUnit))
		e.c.exec(ctx, 30*time.Second, "systemctl", "daemon-reload")
	}()
	addr := e.bindAddr
	// systemd 254+ tells forkd the store is enabled ($FDSTORE), and systemd.fd_store = "auto" (the
	// default) offers the sockets then; earlier versions say nothing, so the config must say "yes".
	forced := e.systemd < 254
	if forced {
		cfgPath := filepath.Join(e.c.root, "etc/forkd/fdstore.hcl")
		b, err := os.ReadFile(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfgPath, append(b, []byte("\nsystemd {\n  fd_store = \"yes\"\n}\n")...), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// 1. Start: forkd binds the socket and stores it.
	e.run(t, ctx, "systemctl", "start", fdstoreUnit)
	first := e.fdstoreState(t, ctx)
	if max := e.prop(t, ctx, fdstoreUnit, "FileDescriptorStoreMax"); max != "4" {
		t.Fatalf("FileDescriptorStoreMax=%s, want the drop-in's 4", max)
	}
	l0 := first.status.Listeners
	if first.status.SocketActivated || len(l0) != 1 || l0[0].Name != "http" || !strings.HasSuffix(l0[0].Address, addr) {
		t.Errorf("after the first start: socket_activated %v, listeners %+v; want forkd's own http on %s", first.status.SocketActivated, l0, addr)
	}
	if n := e.storeEvents(t, ctx, first.invocation); n != 1 {
		t.Errorf("%d fdstore records from forkd at the first start, want 1:\n%s", n, e.journalText(t, ctx, fdstoreUnit, ""))
	}
	if first.nStore != "1" || !e.pid1Holds(t, ctx, first.socket) {
		t.Fatalf("after the first start: NFileDescriptorStore=%q, PID 1 holds the listening socket %s: %v; want 1, true",
			first.nStore, first.socket, e.pid1Holds(t, ctx, first.socket))
	}
	env := e.masterEnv(t, ctx, first.mainPID)
	t.Logf("first start: MainPID %s, NFileDescriptorStore=%s, PID 1 holds %s; the master's environment %v",
		first.mainPID, first.nStore, first.socket, env)
	if e.systemd >= 254 {
		if !slices.Contains(env, "FDSTORE=4") {
			t.Errorf("systemd %d: the master's environment %v lacks FDSTORE=4", e.systemd, env)
		}
		w := e.masterEnv(t, ctx, fmt.Sprint(workerPIDs(first.status)[0]))
		if slices.ContainsFunc(w, func(s string) bool { return strings.HasPrefix(s, "FDSTORE=") }) {
			// A worker's NOTIFY_SOCKET is forkd's, which keeps no fd store.
			t.Errorf("worker 0's environment has systemd's FDSTORE: %v", w)
		}
	}

	// 2. systemctl restart under load: a new master gets the same socket back from the store and
	// does not store it again; no request fails, none is refused.
	l := startLoad(ctx, addr)
	defer l.stop()
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Fatal(err)
	}
	// A slow request in flight makes the old forkd drain for two seconds, while its workers no
	// longer accept: a connection made then waits in the backlog for the new workers.
	slow := make(chan string, 1)
	go func() {
		code, body, err := get(ctx, e.bindAddr, "/slow?ms=2000", 30*time.Second)
		slow <- fmt.Sprintf("%d %q %v", code, strings.TrimSpace(body), err)
	}()
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	restartDone := make(chan string, 1)
	go func() {
		out, errOut, code, err := e.c.exec(ctx, time.Minute, "systemctl", "restart", fdstoreUnit)
		if err != nil || code != 0 {
			restartDone <- fmt.Sprintf("exit %d %v: %s%s", code, err, out, errOut)
		}
		restartDone <- ""
	}()
	waitFor(t, ctx, "the old forkd draining (stop-sigterm)", 10*time.Millisecond, func() (bool, string) {
		sub := e.prop(t, ctx, fdstoreUnit, "SubState")
		return sub == "stop-sigterm", "SubState=" + sub
	})
	reply, connectErr := probe(ctx, e.bindAddr)
	if connectErr != nil {
		t.Errorf("connecting while forkd drained for systemctl restart: %v", connectErr)
	}
	if msg := <-restartDone; msg != "" {
		t.Fatalf("systemctl restart: %s", msg)
	}
	took := time.Since(t0)
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Error(err)
	}
	checkLoad(t, l, "systemctl restart")
	if r := <-slow; !strings.HasPrefix(r, "200 ") {
		t.Errorf("the slow request in flight during systemctl restart: %s", r)
	}
	if reply != nil {
		a := <-reply
		r, ok := parseReply(a.body)
		t.Logf("a connection made while the old forkd drained was answered %.2fs after systemctl restart began: %q %v",
			a.at.Sub(t0).Seconds(), a.body, a.err)
		if !ok || slices.Contains(mapValues(workerPIDs(first.status)), r.pid) {
			t.Errorf("the connection made while the old forkd drained: %q %v, want an answer from a new worker", a.body, a.err)
		}
	}
	restarted := e.fdstoreState(t, ctx)
	t.Logf("systemctl restart: %.2fs; MainPID %s -> %s, NFileDescriptorStore=%s, socket %s -> %s, the new master's environment %v",
		took.Seconds(), first.mainPID, restarted.mainPID, restarted.nStore, first.socket, restarted.socket,
		e.masterEnv(t, ctx, restarted.mainPID))
	e.checkSameSocket(t, ctx, "systemctl restart", first, restarted)
	if restarted.nRestarts != first.nRestarts {
		t.Errorf("NRestarts %s -> %s on systemctl restart", first.nRestarts, restarted.nRestarts)
	}

	// 3. A crash: kill -9 of the master. systemd kills the workers, waits RestartSec=1 in
	// auto-restart (no process of the unit runs), and starts forkd again with the stored socket. A
	// connection made in auto-restart is accepted into the backlog and answered by the new workers.
	l = startLoad(ctx, addr)
	defer l.stop()
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	e.run(t, ctx, "kill", "-KILL", restarted.mainPID)
	var sub string
	waitFor(t, ctx, "the unit in auto-restart", 10*time.Millisecond, func() (bool, string) {
		sub = e.prop(t, ctx, fdstoreUnit, "SubState")
		return sub == "auto-restart", "SubState=" + sub
	})
	reply, connectErr = probe(ctx, addr)
	down := e.show(t, ctx, fdstoreUnit, "SubState", "MainPID", "NFileDescriptorStore")
	held := e.pid1Holds(t, ctx, first.socket)
	if connectErr != nil {
		t.Errorf("connecting while the unit was in auto-restart: %v (NFileDescriptorStore=%s, PID 1 holds the socket: %v)",
			connectErr, down["NFileDescriptorStore"], held)
	}
	t.Logf("%.2fs after kill -9: %v, PID 1 holds the socket: %v; a connection made now: %v", time.Since(t0).Seconds(), down, held, connectErr)
	if reply != nil {
		a := <-reply
		r, ok := parseReply(a.body)
		t.Logf("it was answered %.2fs after the kill: %q %v", a.at.Sub(t0).Seconds(), a.body, a.err)
		if !ok || slices.Contains(mapValues(workerPIDs(restarted.status)), r.pid) {
			t.Errorf("the connection made in auto-restart: %q %v, want an answer from a new worker", a.body, a.err)
		}
	}
	if err := l.waitServed(ctx, 200); err != nil {
		t.Error(err)
	}
	l.stop()
	crashed := e.fdstoreState(t, ctx)
	ok, failed, errs := l.counts()
	t.Logf("load during the crash: %d requests, %d failed, %d refused; first failures: %v", ok, failed, l.refusedCount(), errs)
	// A request in flight on a worker that systemd SIGKILLs with the rest of the cgroup is lost:
	// at most one per client. A refused connection would mean the socket closed.
	if l.refusedCount() > 0 || failed > loadClients {
		t.Errorf("during the crash %d requests failed, %d refused; want none refused, at most %d (in flight at the kill) failed",
			failed, l.refusedCount(), loadClients)
	}
	e.checkSameSocket(t, ctx, "the crash", first, crashed)
	if atoi(crashed.nRestarts) != atoi(restarted.nRestarts)+1 {
		t.Errorf("NRestarts %s -> %s after the crash, want one more", restarted.nRestarts, crashed.nRestarts)
	}

	// 4. systemctl stop releases the store (FileDescriptorStorePreserve=restart): the socket closes.
	e.run(t, ctx, "systemctl", "stop", fdstoreUnit)
	stopped := e.show(t, ctx, fdstoreUnit, "ActiveState", "NFileDescriptorStore")
	_, connectErr = probe(ctx, addr)
	t.Logf("after systemctl stop: %v, PID 1 holds the socket: %v, connecting: %v", stopped, e.pid1Holds(t, ctx, first.socket), connectErr)
	if stopped["NFileDescriptorStore"] != "0" || e.pid1Holds(t, ctx, first.socket) || !errors.Is(connectErr, syscall.ECONNREFUSED) {
		t.Errorf("systemctl stop did not release the fd store: %v, PID 1 holds the socket: %v, connecting: %v",
			stopped, e.pid1Holds(t, ctx, first.socket), connectErr)
	}

	// 5. The next start binds a new socket and stores it (once).
	e.run(t, ctx, "systemctl", "start", fdstoreUnit)
	again := e.fdstoreState(t, ctx)
	if again.socket == first.socket || again.nStore != "1" || e.storeEvents(t, ctx, again.invocation) != 1 ||
		again.status.SocketActivated || !e.pid1Holds(t, ctx, again.socket) {
		t.Errorf("start after stop: socket %s (was %s), NFileDescriptorStore=%s, %d fdstore records, socket_activated %v; want a new socket, stored once",
			again.socket, first.socket, again.nStore, e.storeEvents(t, ctx, again.invocation), again.status.SocketActivated)
	}

	if e.systemd >= 254 {
		e.preserveYes(t, ctx)
		e.preserveNo(t, ctx)
	} else {
		t.Logf("systemd %d has no FileDescriptorStorePreserve= (254+): FORKD_E2E_SUITE=trixie tests it on 257", e.systemd)
	}

	// 6. Without FileDescriptorStoreMax= (0, the default), systemd refuses what forkd offers.
	e.run(t, ctx, "systemctl", "stop", fdstoreUnit)
	if e.systemd >= 254 {
		e.run(t, ctx, "systemctl", "clean", "--what=fdstore", fdstoreUnit)
	}
	e.setFdstoreDropin(t, ctx, "10-e2e.conf", "[Unit]\nStartLimitIntervalSec=0\n")
	cursor := e.cursor(t, ctx)
	e.run(t, ctx, "systemctl", "start", fdstoreUnit)
	plain := e.fdstoreState(t, ctx)
	if code, body, err := get(ctx, addr, "/", 10*time.Second); code != 200 || err != nil {
		t.Errorf("without FileDescriptorStoreMax=: GET /: %d %q %v", code, body, err)
	}
	journal, _ := e.waitJournal(t, ctx, fdstoreUnit, cursor, "all 2 workers ready")
	warning := firstMatch(journal, "Cannot store more fds")
	t.Logf("without FileDescriptorStoreMax=: NFileDescriptorStore=%s, master's environment %v, forkd stored %d times; systemd says: %q",
		plain.nStore, e.masterEnv(t, ctx, plain.mainPID), e.storeEvents(t, ctx, plain.invocation), strings.TrimSpace(warning))
	switch {
	case forced && warning == "":
		t.Errorf("systemd %d: fd_store = \"yes\" without FileDescriptorStoreMax=: no warning from systemd; did forkd offer the socket?", e.systemd)
	case !forced && warning != "":
		// fd_store = "auto": forkd offers nothing when systemd does not say the store is enabled.
		t.Errorf("systemd %d warns, though forkd should not offer its sockets to a disabled store: %s", e.systemd, strings.TrimSpace(warning))
	}
}

// checkSameSocket fails unless after has the listening socket of before, back from the fd store:
// a new master, LISTEN_FDS from systemd, the socket not stored again.
func (e *env) checkSameSocket(t *testing.T, ctx context.Context, what string, before, after fdstoreState) {
	t.Helper()
	if after.mainPID == before.mainPID {
		t.Errorf("after %s MainPID is still %s", what, after.mainPID)
	}
	if after.socket != before.socket {
		t.Errorf("after %s the listening socket is %s, not %s: it was closed and bound again", what, after.socket, before.socket)
	}
	if env := e.masterEnv(t, ctx, after.mainPID); !slices.Contains(env, "LISTEN_FDS=1") || !slices.Contains(env, "LISTEN_FDNAMES=http") {
		t.Errorf("after %s the master's environment is %v, want LISTEN_FDS=1, LISTEN_FDNAMES=http from the fd store", what, env)
	}
	if n := e.storeEvents(t, ctx, after.invocation); n != 0 {
		t.Errorf("after %s forkd stored the socket it got back from the store again (%d fdstore records)", what, n)
	}
	if after.nStore != "1" || !e.pid1Holds(t, ctx, after.socket) {
		t.Errorf("after %s NFileDescriptorStore=%s, PID 1 holds the socket: %v", what, after.nStore, e.pid1Holds(t, ctx, after.socket))
	}
}

// preserveYes (systemd 254+): with FileDescriptorStorePreserve=yes the store outlives systemctl
// stop, as long as systemd keeps the unit loaded: a stopped unit that nothing references is
// unloaded, store and all, so the unit is enabled (multi-user.target wants it). A connection made
// while the unit is stopped then waits in the backlog and is answered after the next start;
// systemctl restart under load and a crash keep the socket as with the default; systemctl clean
// --what=fdstore releases it.
func (e *env) preserveYes(t *testing.T, ctx context.Context) {
	e.setFdstoreDropin(t, ctx, "20-preserve.conf", "[Service]\nFileDescriptorStorePreserve=yes\n")
	defer e.setFdstoreDropin(t, ctx, "20-preserve.conf", "")
	if p := e.prop(t, ctx, fdstoreUnit, "FileDescriptorStorePreserve"); p != "yes" {
		t.Fatalf("FileDescriptorStorePreserve=%s with the drop-in", p)
	}
	before := e.fdstoreState(t, ctx)
	out, _, _, _ := e.c.exec(ctx, 30*time.Second, "systemd-analyze", "fdstore", fdstoreUnit)
	t.Logf("systemd-analyze fdstore %s:\n%s", fdstoreUnit, strings.TrimRight(out, "\n"))

	// Not enabled, nothing references the unit: once stopped, systemd unloads it.
	e.run(t, ctx, "systemctl", "stop", fdstoreUnit)
	unloaded := e.show(t, ctx, fdstoreUnit, "SubState", "NFileDescriptorStore")
	_, connectErr := probe(ctx, e.bindAddr)
	t.Logf("FileDescriptorStorePreserve=yes, unit not enabled, after systemctl stop: %v, connecting: %v", unloaded, connectErr)
	e.run(t, ctx, "systemctl", "enable", fdstoreUnit)
	defer e.c.exec(context.WithoutCancel(ctx), 30*time.Second, "systemctl", "disable", fdstoreUnit)
	e.run(t, ctx, "systemctl", "start", fdstoreUnit)
	before = e.fdstoreState(t, ctx)

	e.run(t, ctx, "systemctl", "stop", fdstoreUnit)
	stopped := e.show(t, ctx, fdstoreUnit, "ActiveState", "SubState", "NFileDescriptorStore")
	reply, connectErr := probe(ctx, e.bindAddr)
	t.Logf("FileDescriptorStorePreserve=yes, unit enabled, after systemctl stop: %v, PID 1 holds the socket: %v; connecting: %v",
		stopped, e.pid1Holds(t, ctx, before.socket), connectErr)
	if stopped["NFileDescriptorStore"] != "1" || connectErr != nil {
		t.Errorf("FileDescriptorStorePreserve=yes: after stop %v, connecting: %v; want the socket kept", stopped, connectErr)
	}
	e.run(t, ctx, "systemctl", "start", fdstoreUnit)
	started := e.fdstoreState(t, ctx)
	e.checkSameSocket(t, ctx, "stop and start with FileDescriptorStorePreserve=yes", before, started)
	if reply != nil {
		if a := <-reply; !parseable(a.body) {
			t.Errorf("the connection made while stopped: %q %v, want an answer after the start", a.body, a.err)
		} else {
			t.Logf("the connection made while stopped was answered after the start: %q", a.body)
		}
	}

	l := startLoad(ctx, e.bindAddr)
	defer l.stop()
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Fatal(err)
	}
	e.run(t, ctx, "systemctl", "restart", fdstoreUnit)
	if err := l.waitRequests(ctx, 200); err != nil {
		t.Error(err)
	}
	checkLoad(t, l, "systemctl restart with FileDescriptorStorePreserve=yes")
	restarted := e.fdstoreState(t, ctx)
	e.checkSameSocket(t, ctx, "systemctl restart with FileDescriptorStorePreserve=yes", before, restarted)
	e.run(t, ctx, "kill", "-KILL", restarted.mainPID)
	waitFor(t, ctx, "a new forkd after the crash", 50*time.Millisecond, func() (bool, string) {
		p := e.show(t, ctx, fdstoreUnit, "MainPID", "ActiveState")
		return p["ActiveState"] == "active" && p["MainPID"] != restarted.mainPID && p["MainPID"] != "0", fmt.Sprint(p)
	})
	e.checkSameSocket(t, ctx, "a crash with FileDescriptorStorePreserve=yes", restarted, e.fdstoreState(t, ctx))

	e.run(t, ctx, "systemctl", "stop", fdstoreUnit)
	e.run(t, ctx, "systemctl", "clean", "--what=fdstore", fdstoreUnit)
	n := e.prop(t, ctx, fdstoreUnit, "NFileDescriptorStore")
	_, connectErr = probe(ctx, e.bindAddr)
	if n != "0" || !errors.Is(connectErr, syscall.ECONNREFUSED) {
		t.Errorf("after systemctl clean --what=fdstore: NFileDescriptorStore=%s, connecting: %v; want 0, refused", n, connectErr)
	}
}

func parseable(body string) bool {
	_, ok := parseReply(body)
	return ok
}

// preserveNo (systemd 254+): FileDescriptorStorePreserve=no releases the store whenever the service
// stops, also for systemctl restart and a crash: the new forkd binds a new socket.
func (e *env) preserveNo(t *testing.T, ctx context.Context) {
	e.setFdstoreDropin(t, ctx, "20-preserve.conf", "[Service]\nFileDescriptorStorePreserve=no\n")
	defer e.setFdstoreDropin(t, ctx, "20-preserve.conf", "")
	e.run(t, ctx, "systemctl", "start", fdstoreUnit)
	before := e.fdstoreState(t, ctx)
	e.run(t, ctx, "systemctl", "restart", fdstoreUnit)
	after := e.fdstoreState(t, ctx)
	env := e.masterEnv(t, ctx, after.mainPID)
	t.Logf("FileDescriptorStorePreserve=no: systemctl restart: socket %s -> %s, the new master's environment %v, %d fdstore records",
		before.socket, after.socket, env, e.storeEvents(t, ctx, after.invocation))
	if after.socket == before.socket || slices.Contains(env, "LISTEN_FDS=1") || e.storeEvents(t, ctx, after.invocation) != 1 {
		t.Errorf("FileDescriptorStorePreserve=no: systemctl restart kept the store: socket %s -> %s, environment %v",
			before.socket, after.socket, env)
	}
	e.run(t, ctx, "kill", "-KILL", after.mainPID)
	waitFor(t, ctx, "a new forkd after the crash", 50*time.Millisecond, func() (bool, string) {
		p := e.show(t, ctx, fdstoreUnit, "MainPID", "ActiveState")
		return p["ActiveState"] == "active" && p["MainPID"] != after.mainPID && p["MainPID"] != "0", fmt.Sprint(p)
	})
	crashed := e.fdstoreState(t, ctx)
	env = e.masterEnv(t, ctx, crashed.mainPID)
	t.Logf("FileDescriptorStorePreserve=no: a crash: socket %s -> %s, the new master's environment %v", after.socket, crashed.socket, env)
	if crashed.socket == after.socket || slices.Contains(env, "LISTEN_FDS=1") {
		t.Errorf("FileDescriptorStorePreserve=no: the store survived a crash: socket %s -> %s, environment %v", after.socket, crashed.socket, env)
	}
	e.run(t, ctx, "systemctl", "stop", fdstoreUnit)
}
