package systemd

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// probeResult is what test/cgroupprobe prints (its Result).
type probeResult struct {
	Status       string   `json:"status"`
	Dir          string   `json:"dir"`
	MasterCgroup string   `json:"master_cgroup"`
	Controllers  []string `json:"controllers"`
	Procs        int      `json:"procs"`
	Killed       bool     `json:"killed"`
	ChildGone    bool     `json:"child_gone"`
	Removed      bool     `json:"removed"`
	MemoryTested bool     `json:"memory_tested"`
	OOMKilled    bool     `json:"oom_killed"`
	OOMKills     uint64   `json:"oom_kills"`
	Errors       []string `json:"errors"`
}

// cgroupDelegation runs internal/cgroup as the master will, through test/cgroupprobe, in
// transient services of the container's systemd: with Delegate=yes (as root, and as User=nobody,
// for whom systemd chowns the cgroup) it moves itself into <unit>/master, gives a worker a cgroup
// of its own, kills the worker's whole tree (a setsid child included) with cgroup.kill and removes
// the cgroup; with the memory controller, a worker over memory.max is OOM-killed and
// memory.events says so. Without Delegate=yes, or with ProtectControlGroups=yes, cgroups are off
// and the reason says what to change. (Once forkd itself uses internal/cgroup, a forkd unit with
// contrib/systemd/cgroups.conf belongs here too: its workers' cgroups, memory.max, an OOM kill in
// forkctl status, a worker's forked helper killed with it.)
func (e *env) cgroupDelegation(t *testing.T, ctx context.Context) {
	if err := buildStatic(ctx, e.repo, "./test/cgroupprobe", e.c.root+"/usr/local/bin/forkd-cgroupprobe"); err != nil {
		t.Fatal(err)
	}
	probe := func(t *testing.T, props ...string) probeResult {
		t.Helper()
		argv := []string{"systemd-run", "--wait", "--pipe", "--quiet", "--collect"}
		for _, p := range props {
			argv = append(argv, "-p", p)
		}
		out := e.run(t, ctx, append(argv, "/usr/local/bin/forkd-cgroupprobe")...)
		var r probeResult
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("the probe's output: %v\n%s", err, out)
		}
		t.Logf("%s: %s", strings.Join(props, " "), r.Status)
		return r
	}
	delegated := func(t *testing.T, r probeResult) {
		t.Helper()
		if !strings.HasPrefix(r.Status, "cgroups on: ") {
			t.Fatalf("want cgroups on, got %q", r.Status)
		}
		if !strings.HasSuffix(r.MasterCgroup, ".service/master") {
			t.Errorf("the probe runs in %s, not its unit's master leaf", r.MasterCgroup)
		}
		if r.Procs != 2 || !r.Killed || !r.ChildGone || !r.Removed {
			t.Errorf("the worker's tree: %d processes (want 2), killed %v, setsid child gone %v, cgroup removed %v",
				r.Procs, r.Killed, r.ChildGone, r.Removed)
		}
		for _, err := range r.Errors {
			t.Error(err)
		}
		t.Run("memory.max and an OOM kill", func(t *testing.T) {
			if !r.MemoryTested {
				t.Skipf("the unit's cgroup offers no memory controller (it has %v), and the probe says why: %s", r.Controllers, r.Status)
			}
			if !r.OOMKilled || r.OOMKills == 0 {
				t.Errorf("over memory.max: OOM-killed %v, memory.events oom_kill %d", r.OOMKilled, r.OOMKills)
			}
		})
	}
	t.Run("Delegate=yes", func(t *testing.T) { delegated(t, probe(t, "Delegate=yes")) })
	t.Run("Delegate=yes User=nobody", func(t *testing.T) { delegated(t, probe(t, "Delegate=yes", "User=nobody")) })
	t.Run("no Delegate=", func(t *testing.T) {
		r := probe(t)
		if !strings.HasPrefix(r.Status, "cgroups off: ") || !strings.Contains(r.Status, "add Delegate=yes to the unit") {
			t.Errorf("want cgroups off, for want of Delegate=yes; got %q", r.Status)
		}
	})
	t.Run("ProtectControlGroups=yes", func(t *testing.T) {
		r := probe(t, "Delegate=yes", "ProtectControlGroups=yes")
		if !strings.HasPrefix(r.Status, "cgroups off: ") || !strings.Contains(r.Status, "read-only mount") {
			t.Errorf("want cgroups off, for a read-only /sys/fs/cgroup; got %q", r.Status)
		}
	})
}

// workerCgroups runs forkd itself with its workers' cgroups, as an operator enables them: the
// packaged drop-in (Delegate=yes, ProtectControlGroups=no) on forkd@cg.service. Each worker runs in
// <unit>/worker-SLOT-ID, the master in <unit>/master; a worker forkd kills (for a missed
// heartbeat: SIGKILL, so cgroup.kill) takes its setsid helper along, which ignores SIGTERM and
// which the process group misses, and its cgroup is removed. With the memory controller,
// memory_max is each worker's memory.max, and a worker that allocates past it is reported as an
// OOM kill, in the log and in forkctl status. Without the drop-in, forkctl status says cgroups are
// off and what to add.
func (e *env) workerCgroups(t *testing.T, ctx context.Context) {
	const unit = "forkd@cg.service"
	// The worker: a helper in a session of its own that ignores SIGTERM, then no heartbeat, so
	// that forkd SIGKILLs it after timeouts.worker. With FORKD_E2E_ALLOC=1 it allocates 64 MB
	// first (python3 is in the rootfs), past memory_max.
	script := `trap '' TERM; setsid sleep 3600 & echo $! >/run/forkd-cg/helper-$$; ` +
		`if [ -e /run/forkd-cg/alloc ]; then exec python3 -c 'import time; b = bytearray(64 << 20); time.sleep(3600)'; fi; exec sleep 3600`
	config := fmt.Sprintf(`command = ["/bin/sh", "-c", %q]
workers   = 2
readiness = "started"
timeouts {
  worker   = "4s"
  shutdown = "10m"
}
cgroups {
  memory_max = "32M"
}
`, script)
	addr, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	e.sh(t, ctx, `mkdir -p /run/forkd-cg /etc/systemd/system/forkd@cg.service.d /etc/systemd/system/forkd@cg.socket.d && `+
		`printf '%s' "$1" >/etc/forkd/cg.hcl && printf '[Socket]\nListenStream=\nListenStream=%s\n' "$2" >/etc/systemd/system/forkd@cg.socket.d/10-e2e.conf`,
		config, addr)
	// The workers ignore SIGTERM: an immediate stop, not 10 minutes of shutdown timeout.
	stop := func() {
		e.sh(t, ctx, "forkctl --socket /run/forkd/cg/control.sock stop --immediate --wait; systemctl stop forkd@cg.service forkd@cg.socket; rm -f /run/forkd-cg/*")
	}
	defer stop()

	t.Run("without Delegate=yes", func(t *testing.T) {
		e.run(t, ctx, "systemctl", "daemon-reload")
		e.run(t, ctx, "systemctl", "start", unit)
		st := e.waitStatus(t, ctx, "cg", func(st control.Status) bool { return len(workerPIDs(st)) == 2 })
		if !strings.HasPrefix(st.Cgroups, "off (") || !strings.Contains(st.Cgroups, "Delegate=yes") {
			t.Errorf("cgroups: want off, saying to add Delegate=yes; got %q", st.Cgroups)
		}
		out := e.run(t, ctx, "forkctl", "--socket", "/run/forkd/cg/control.sock", "status")
		if !regexp.MustCompile(`(?m)^cgroups:\s+off \(.*Delegate=yes`).MatchString(out) {
			t.Errorf("forkctl status has no line saying cgroups are off and why:\n%s", out)
		}
		stop()
	})

	t.Run("with the packaged drop-in", func(t *testing.T) {
		e.run(t, ctx, "cp", "/usr/share/doc/forkd/examples/cgroups.conf", "/etc/systemd/system/forkd@cg.service.d/cgroups.conf")
		e.run(t, ctx, "systemctl", "daemon-reload")
		e.run(t, ctx, "systemctl", "start", unit)
		st := e.waitStatus(t, ctx, "cg", func(st control.Status) bool { return len(workerPIDs(st)) == 2 })
		t.Logf("cgroups: %s", st.Cgroups)
		if !strings.HasPrefix(st.Cgroups, "on: ") || !strings.Contains(st.Cgroups, "forkd@cg.service") {
			t.Fatalf("cgroups: want on, in the unit's cgroup; got %q\n%s", st.Cgroups, e.journalText(t, ctx, unit, ""))
		}
		unitDir := strings.Fields(strings.TrimPrefix(st.Cgroups, "on: "))[0]
		cgroupOf := func(pid int) string {
			out, _, _, _ := e.exec(ctx, "sh", "-c", fmt.Sprintf("sed -n 's/^0:://p' /proc/%d/cgroup", pid))
			return strings.TrimSpace(out)
		}
		if got := cgroupOf(st.MasterPID); !strings.HasSuffix(got, "forkd@cg.service/master") {
			t.Errorf("the master runs in %s, not the unit's master leaf", got)
		}
		memory := strings.Contains(st.Cgroups, "memory") && !strings.Contains(st.Cgroups, "no memory")
		if v1 := e.memoryV1(t, ctx); !memory && v1 != "" {
			// The status says why, as exactly as this test: the host's memory controller is cgroup v1's.
			if !regexp.MustCompile(`no (?:[a-z]+, )*memory(?:, [a-z]+)*: .*cgroup v1 hierarchy`).MatchString(st.Cgroups) {
				t.Errorf("the status does not say why the workers have no memory controller (%s): %q", v1, st.Cgroups)
			}
		}
		helpers := map[int]int{}
		for _, w := range st.WorkerList {
			cg := cgroupOf(w.PID)
			if !regexp.MustCompile(fmt.Sprintf(`forkd@cg\.service/worker-%d-\d+$`, w.Index)).MatchString(cg) {
				t.Errorf("worker %d (pid %d) runs in %s, not a cgroup of its own", w.Index, w.PID, cg)
			}
			var helper int
			waitFor(t, ctx, "the worker's helper", 100*time.Millisecond, func() (bool, string) {
				out, _, _, _ := e.exec(ctx, "cat", fmt.Sprintf("/run/forkd-cg/helper-%d", w.PID))
				helper, _ = strconv.Atoi(strings.TrimSpace(out))
				return helper != 0, out
			})
			if got := cgroupOf(helper); got != cg {
				t.Errorf("worker %d's setsid helper runs in %s, not its worker's %s", w.Index, got, cg)
			}
			helpers[w.PID] = helper
			if memory {
				max := strings.TrimSpace(e.run(t, ctx, "cat", filepath.Join(unitDir, filepath.Base(cg), "memory.max")))
				if max != strconv.Itoa(32<<20) {
					t.Errorf("worker %d's memory.max is %s, want memory_max (32M)", w.Index, max)
				}
				if w.Cgroup == nil {
					t.Errorf("worker %d has no cgroup memory in the status", w.Index)
				}
			}
		}
		// forkd SIGKILLs each worker for its missed heartbeat: the helper dies with it, long
		// before the 10 minutes the stray's shutdown timeout would give it, and the cgroup goes.
		killed := map[int]string{}
		for worker := range helpers {
			killed[worker] = filepath.Join(unitDir, filepath.Base(cgroupOf(worker)))
		}
		for worker, helper := range helpers {
			waitFor(t, ctx, fmt.Sprintf("worker %d and its setsid helper %d to be killed", worker, helper), 100*time.Millisecond, func() (bool, string) {
				_, _, w, _ := e.exec(ctx, "kill", "-0", strconv.Itoa(worker))
				_, _, h, _ := e.exec(ctx, "kill", "-0", strconv.Itoa(helper))
				return w != 0 && h != 0, fmt.Sprintf("worker alive %v, helper alive %v", w == 0, h == 0)
			})
		}
		for worker, cg := range killed {
			waitFor(t, ctx, fmt.Sprintf("worker %d's cgroup %s to be removed", worker, cg), 100*time.Millisecond, func() (bool, string) {
				_, _, code, _ := e.exec(ctx, "test", "-d", cg)
				return code != 0, "still there"
			})
		}

		t.Run("memory.max and an OOM kill", func(t *testing.T) {
			if !memory {
				t.Skipf("the workers' cgroups have no memory controller, and forkctl status says why: %s", st.Cgroups)
			}
			// A worker that allocates past memory_max: the kernel kills it, and forkd says so.
			cursor := e.cursor(t, ctx)
			e.run(t, ctx, "touch", "/run/forkd-cg/alloc")
			if _, ok := e.waitJournal(t, ctx, unit, cursor, "out of memory: the worker's cgroup reached memory.max, 32M"); !ok {
				t.Errorf("no OOM kill in the log:\n%s", e.journalText(t, ctx, unit, cursor))
			}
			st := e.waitStatus(t, ctx, "cg", func(st control.Status) bool {
				return slices.ContainsFunc(st.WorkerList, func(w control.Worker) bool { return strings.Contains(w.LastExit, "out of memory") })
			})
			t.Logf("an OOM kill in forkctl status: %+v", st.WorkerList)
		})
	})
}

// exec runs argv in the container: its stdout, stderr and exit status.
func (e *env) exec(ctx context.Context, argv ...string) (string, string, int, error) {
	return e.c.exec(ctx, 30*time.Second, argv...)
}

// waitStatus waits until instance's status satisfies cond.
func (e *env) waitStatus(t *testing.T, ctx context.Context, instance string, cond func(control.Status) bool) control.Status {
	t.Helper()
	var st control.Status
	waitFor(t, ctx, "forkd@"+instance+"'s status", 100*time.Millisecond, func() (bool, string) {
		out, _, code, _ := e.exec(ctx, "forkctl", "--socket", "/run/forkd/"+instance+"/control.sock", "status", "-o", "json")
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
			return false, out
		}
		return cond(st), fmt.Sprintf("%+v", st)
	})
	return st
}

// memoryV1 says where the kernel binds the memory controller to a cgroup v1 hierarchy
// (/proc/cgroups, the same inside the container as on the host), or "" when it does not: then
// cgroup v2 cannot offer it, to the container or to anyone.
func (e *env) memoryV1(t *testing.T, ctx context.Context) string {
	t.Helper()
	out, _, _, _ := e.exec(ctx, "cat", "/proc/cgroups")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "memory" && f[1] != "0" {
			return "this host binds the memory controller to cgroup v1 hierarchy " + f[1] + " (/proc/cgroups)"
		}
	}
	return ""
}
