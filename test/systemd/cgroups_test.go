package systemd

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
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
		if r.MemoryTested {
			if !r.OOMKilled || r.OOMKills == 0 {
				t.Errorf("over memory.max: OOM-killed %v, memory.events oom_kill %d", r.OOMKilled, r.OOMKills)
			}
		} else {
			t.Logf("no memory controller for the unit (%v): memory.max and OOM kills not exercised", r.Controllers)
		}
		for _, err := range r.Errors {
			t.Error(err)
		}
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
