package supervisor

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/cluster"
	"golang.org/x/sys/unix"
)

// startTree starts `sh -c 'sleep 60; :'` as the leader of its own process group, and returns the
// shell's PID and pidfd and its sleep child's PID, which shares the group.
func startTree(t *testing.T) (leader, pidfd, child int) {
	t.Helper()
	pidfd = -1
	leader, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", "sleep 60; :"}, &syscall.ProcAttr{
		Files: []uintptr{0, 1, 2}, Sys: &syscall.SysProcAttr{Setpgid: true, PidFD: &pidfd}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Kill(-leader, syscall.SIGKILL)
		unix.Close(pidfd)
	})
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(leader) + "/task/" + strconv.Itoa(leader) + "/children")
		if f := strings.Fields(string(b)); len(f) == 1 {
			child, _ = strconv.Atoi(f[0])
			return leader, pidfd, child
		}
	}
	t.Fatal("the shell started no child")
	return
}

// TestGroupHoldingAnotherWorkerIsNotSignalledAsOneTree: a worker's process group is signalled as
// its tree only when no other worker is in it, as a forked worker left in the template's group by
// an SDK without setpgid would be.
func TestGroupHoldingAnotherWorkerIsNotSignalledAsOneTree(t *testing.T) {
	leader, pidfd, child := startTree(t)
	d := &Driver{procs: map[cluster.WorkerID]*process{
		1: {pid: leader, pidfd: pidfd},
		2: {pid: child, pidfd: -1, forked: true},
	}}
	if d.leadsOwnGroup(leader) {
		t.Fatal("the leader's group holds worker 2, yet it counts as the leader's own tree")
	}
	if d.leadsOwnGroup(child) {
		t.Fatal("the child leads no group, yet it counts as leading one")
	}
	delete(d.procs, 2)
	if !d.leadsOwnGroup(leader) {
		t.Fatal("the leader's group holds no other worker, yet it does not count as its tree")
	}
}

// TestGroupSignalReachesTheGroupAfterItsLeaderIsReaped: the reaped leader's pidfd still names its
// group, which the driver watches as a stray until it is empty.
func TestGroupSignalReachesTheGroupAfterItsLeaderIsReaped(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	defer unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
	leader, pidfd, child := startTree(t)
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(leader, &ws, 0, nil); err != nil {
		t.Fatal(err)
	}
	if err := signalGroup(pidfd, leader, 0); err != nil {
		t.Fatalf("the group has its sleep left, yet a signal to it fails: %v", err)
	}
	if err := signalGroup(pidfd, leader, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Wait4(child, &ws, 0, nil); err != nil || ws.Signal() != unix.SIGKILL {
		t.Fatalf("the child, re-parented to this process, ended with %v, %v; want SIGKILL", ws, err)
	}
	if err := signalGroup(pidfd, leader, 0); !errors.Is(err, unix.ESRCH) {
		t.Fatalf("signal to the emptied group: %v, want ESRCH", err)
	}
}
