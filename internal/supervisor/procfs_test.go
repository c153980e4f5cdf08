package supervisor

import (
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

func TestParentPIDOfThisProcess(t *testing.T) {
	ppid, err := parentPID(os.Getpid())
	if err != nil || ppid != os.Getppid() {
		t.Fatalf("parentPID = %d, %v; want %d", ppid, err, os.Getppid())
	}
}

func TestChildrenOfSelfAndExited(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	children, err := childrenOfSelf()
	if err != nil || !slices.Contains(children, cmd.Process.Pid) {
		t.Fatalf("childrenOfSelf() = %v, %v; want it to hold the sleep, pid %d", children, err, cmd.Process.Pid)
	}
	if exited(cmd.Process.Pid) {
		t.Fatal("a running sleep counts as exited")
	}
	cmd.Process.Kill()
	for end := time.Now().Add(10 * time.Second); !exited(cmd.Process.Pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("a killed sleep, a zombie until reaped, does not count as exited")
		}
	}
	cmd.Wait()
}
