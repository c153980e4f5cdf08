package supervisor

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/cluster"
)

// startSleeper starts sh running a sleep in the background, and returns sh's PID and the
// sleep's: a child of this process (the "master" here) and its grandchild.
func startSleeper(t *testing.T) (child, grandchild int) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", "sleep 60 & echo $!; wait")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	buf := make([]byte, 32)
	n, err := out.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	gc, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p, err := os.FindProcess(gc); err == nil {
			p.Kill()
		}
	})
	return cmd.Process.Pid, gc
}

func TestAncestry(t *testing.T) {
	child, grandchild := startSleeper(t)
	lineage, toMaster, err := ancestry(grandchild, nil)
	if err != nil || !toMaster || !slices.Equal(lineage, []int{grandchild, child}) {
		t.Fatalf("ancestry(grandchild, nil) = %v, %v, %v; want [%d %d], true", lineage, toMaster, err, grandchild, child)
	}
	lineage, toMaster, err = ancestry(os.Getpid(), nil)
	if err != nil || !toMaster || len(lineage) != 0 {
		t.Fatalf("ancestry(self) = %v, %v, %v; want [], true", lineage, toMaster, err)
	}
	// This process's parent is outside its tree.
	if _, toMaster, err := ancestry(os.Getppid(), nil); err != nil || toMaster {
		t.Fatalf("ancestry(parent) reached the master: %v, %v", toMaster, err)
	}
}

func TestKinship(t *testing.T) {
	m, err := cluster.NewMachine(cluster.Config{Workers: 2, MaxWorkers: 8, BootTimeout: 10 * time.Second,
		ShutdownTimeout: 5 * time.Second, BackoffMin: time.Second, BackoffMax: 8 * time.Second, ResetAfter: 30 * time.Second, MaxSurge: 1})
	if err != nil {
		t.Fatal(err)
	}
	d := &Driver{m: m, helpers: map[int]*helper{}}
	now := time.Now()
	if err := m.Step(now, cluster.Start{}); err != nil {
		t.Fatal(err)
	}
	var spawns []cluster.SpawnWorker
	for _, a := range m.Ready() {
		if s, ok := a.(cluster.SpawnWorker); ok {
			spawns = append(spawns, s)
		}
	}
	m.Advance()
	if len(spawns) == 0 {
		t.Fatal("no worker spawned")
	}
	if err := m.Step(now, cluster.Spawned{Worker: spawns[0].Worker, PID: 4242}); err != nil {
		t.Fatal(err)
	}
	m.Ready()
	m.Advance()
	d.helpers[5000] = &helper{name: "after_reload", pid: 5000}

	tests := []struct {
		name     string
		lineage  []int
		toMaster bool
		worker   bool
		reason   string
	}{
		{"the worker", []int{4242}, true, true, "pid 4242 is worker 0 (pid 4242)"},
		{"its descendant", []int{4300, 4250, 4242}, true, true, "pid 4300 is a descendant of worker 0 (pid 4242)"},
		{"an orphan re-parented to the master", []int{4400}, true, true, "pid 4400 was re-parented to forkd from its workers' processes"},
		{"a hook's child", []int{5001, 5000}, true, false, ""},
		{"the master", nil, true, false, ""},
		{"outside the tree", []int{6000, 5999}, false, false, ""},
	}
	for _, tt := range tests {
		k := d.kinshipOf(tt.lineage, tt.toMaster)
		if k.Worker != tt.worker || k.Reason != tt.reason {
			t.Errorf("%s: kinship %+v, want worker=%v reason %q", tt.name, k, tt.worker, tt.reason)
		}
	}
}

// A process outside the master's tree (an operator's forkctl) is answered without the loop: a
// master that was stopped a while must not fail it for an answer the loop owes.
func TestKinshipOutsideTheTreeNeedsNoLoop(t *testing.T) {
	d := &Driver{} // no loop runs: a question to it would wait for ctx
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	for _, pid := range []int{os.Getppid(), os.Getpid()} {
		k, err := d.Kinship(ctx, pid)
		if err != nil || k.Worker {
			t.Fatalf("Kinship(%d) = %+v, %v; want no worker, at once", pid, k, err)
		}
	}
}
