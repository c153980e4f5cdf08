package cluster

import (
	"encoding/json"
	"testing"
)

// TestParseHeapSize: a template may report only an allowlisted variable with a positive count of
// objects no larger than MaxHeapSize, in decimal digits; anything else is refused with a reason.
func TestParseHeapSize(t *testing.T) {
	for _, ok := range []struct {
		in    string
		value uint64
	}{{"RUBY_GC_HEAP_INIT_SLOTS=1300000", 1300000}, {"RUBY_GC_HEAP_INIT_SLOTS=1", 1}, {"RUBY_GC_HEAP_INIT_SLOTS=1000000000", MaxHeapSize}} {
		variable, value, err := ParseHeapSize(ok.in)
		if err != nil || variable != "RUBY_GC_HEAP_INIT_SLOTS" || value != ok.value {
			t.Errorf("ParseHeapSize(%q) = %q, %d, %v", ok.in, variable, value, err)
		}
	}
	for _, bad := range []string{
		"", "1300000", "RUBY_GC_HEAP_INIT_SLOTS", "RUBY_GC_HEAP_INIT_SLOTS=", "RUBY_GC_HEAP_INIT_SLOTS=0",
		"RUBY_GC_HEAP_INIT_SLOTS=-5", "RUBY_GC_HEAP_INIT_SLOTS=+5", "RUBY_GC_HEAP_INIT_SLOTS= 5", "RUBY_GC_HEAP_INIT_SLOTS=0x10",
		"RUBY_GC_HEAP_INIT_SLOTS=1_000", "RUBY_GC_HEAP_INIT_SLOTS=1000000001", "RUBY_GC_HEAP_INIT_SLOTS=99999999999999999999999",
		"LD_PRELOAD=5", "PATH=/tmp", "RUBY_GC_HEAP_FREE_SLOTS=5", "ruby_gc_heap_init_slots=5",
	} {
		if variable, value, err := ParseHeapSize(bad); err == nil {
			t.Errorf("ParseHeapSize(%q) accepted %q=%d", bad, variable, value)
		}
	}
}

// TestHeapSizeSurvivesTheHandover: the reported heap size travels in the hot restart's State, and
// a State from an image that had none (no field) restores with none.
func TestHeapSizeSurvivesTheHandover(t *testing.T) {
	cfg := testConfig()
	cfg.ForkWorker, cfg.CarryHeapSize = true, true
	m, err := NewMachine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.heapSize = &HeapSize{Variable: "RUBY_GC_HEAP_INIT_SLOTS", Value: 1300000, Generation: 3}
	st, err := m.Export(epoch)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back State
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	restored, err := Restore(cfg, back, epoch)
	if err != nil {
		t.Fatal(err)
	}
	if h := restored.Status().HeapSize; h == nil || *h != *m.heapSize {
		t.Fatalf("restored heap size %+v, want %+v", h, *m.heapSize)
	}

	var old State
	if err := json.Unmarshal([]byte(`{"Generation":1,"Desired":2}`), &old); err != nil {
		t.Fatal(err)
	}
	restored, err = Restore(cfg, old, epoch)
	if err != nil {
		t.Fatal(err)
	}
	if h := restored.Status().HeapSize; h != nil {
		t.Fatalf("a state without a heap size restored with %+v", *h)
	}
}
