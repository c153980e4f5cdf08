package main

import (
	"os"
	"testing"
)

func TestStatusFields(t *testing.T) {
	status := "Name:\tforkd\nUid:\t1000\t1000\t1000\t1000\nThreads:\t9\nCapEff:\t0000000001000000\n"
	if v, ok := statusField(status, "Uid"); !ok || v != "1000" {
		t.Errorf("Uid = %q, %v; want the real uid 1000", v, ok)
	}
	if v, _ := statusField(status, "Threads"); v != "9" {
		t.Errorf("Threads = %q, want 9", v)
	}
	if _, ok := statusField(status, "Gid"); ok {
		t.Error("Gid found in a status without it")
	}
	if !hasCapability(status, capSysResource) || hasCapability(status, capSysAdmin) {
		t.Errorf("CapEff 0x1000000 is CAP_SYS_RESOURCE alone")
	}
}

func TestTasksOfCountsThreads(t *testing.T) {
	self := threadsOfSelf()
	if self < 1 {
		t.Fatalf("this process has %d threads", self)
	}
	if n := tasksOf(os.Getuid()); n < self {
		t.Fatalf("tasks of uid %d: %d, fewer than this process's %d threads", os.Getuid(), n, self)
	}
}
