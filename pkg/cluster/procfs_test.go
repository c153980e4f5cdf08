package cluster

import (
	"os"
	"testing"
)

func TestReadMemoryOfThisProcess(t *testing.T) {
	m, err := ReadMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS == 0 || m.PSS == 0 || m.PSS > m.RSS || m.Shared > m.RSS {
		t.Fatalf("implausible memory figures %+v", m)
	}
	if _, err := ReadMemory(1 << 30); err == nil {
		t.Fatal("ReadMemory of a PID that cannot exist succeeded")
	}
}

func TestParentPIDOfThisProcess(t *testing.T) {
	ppid, err := parentPID(os.Getpid())
	if err != nil || ppid != os.Getppid() {
		t.Fatalf("parentPID = %d, %v; want %d", ppid, err, os.Getppid())
	}
}
