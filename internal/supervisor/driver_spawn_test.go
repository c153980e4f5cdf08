package supervisor

import "testing"

// TestHeapSizeSet: a RUBY_GC_HEAP_INIT* variable in the config's env or in forkd's own means the
// operator chose the heap's size, and the machine carries none (cluster.HeapSize).
func TestHeapSizeSet(t *testing.T) {
	base := []string{"PATH=/usr/bin", "RUBY_GC_HEAP_FREE_SLOTS_MIN_RATIO=0.2"}
	for _, c := range []struct {
		base []string
		env  map[string]string
		want string
	}{
		{base, nil, ""},
		{base, map[string]string{"RUBY_GC_HEAP_GROWTH_FACTOR": "1.1"}, ""},
		{base, map[string]string{"RUBY_GC_HEAP_INIT_SLOTS": "800000"}, "RUBY_GC_HEAP_INIT_SLOTS=800000"},
		{append(base, "RUBY_GC_HEAP_INIT_SLOTS=600000"), nil, "RUBY_GC_HEAP_INIT_SLOTS=600000"},
		{append(base, "RUBY_GC_HEAP_INIT_SLOTS=600000"), map[string]string{"RUBY_GC_HEAP_INIT_SLOTS": "800000"}, "RUBY_GC_HEAP_INIT_SLOTS=800000"},
		{base, map[string]string{"RUBY_GC_HEAP_INIT_SLOTS_EXTRA": "1", "A": "b"}, "RUBY_GC_HEAP_INIT_SLOTS_EXTRA=1"},
	} {
		if got := heapSizeSet(c.base, c.env); got != c.want {
			t.Errorf("heapSizeSet(%q, %v) = %q, want %q", c.base, c.env, got, c.want)
		}
	}
}
