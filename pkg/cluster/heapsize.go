package cluster

import (
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
)

// This file holds the heap size a template reports and forkd carries to the next worker 0 it execs
// (docs/fork-safety.md, "Ruby's heap pages"). Ruby < 3.3 mallocs each heap page's bookkeeping as
// the heap grows, among the app's strings, and every worker's collections then copy the malloc
// pages they share; RUBY_GC_HEAP_INIT_SLOTS, set below what the app holds, lays the pages out
// before the app loads. Only the app knows that size, once it has loaded: the template reports it
// (X_FORKD_HEAP_SIZE=RUBY_GC_HEAP_INIT_SLOTS=n), and the next template boots with it.

// HeapSize is a heap size a template reported: the variable that sets it, its value, and the
// generation of the template that reported it.
type HeapSize struct {
	Variable   string
	Value      uint64
	Generation int
}

// String says it as an environment entry: RUBY_GC_HEAP_INIT_SLOTS=1300000.
func (h HeapSize) String() string {
	return h.Variable + "=" + strconv.FormatUint(h.Value, 10)
}

// HeapSizeVariables are the variables a template may report: carrying anything else would make
// the report a way for a worker to set any environment variable of the next template.
var HeapSizeVariables = []string{"RUBY_GC_HEAP_INIT_SLOTS"}

// HeapSizePrefix starts every variable of Ruby's that sizes its heap at start: one set in the app's
// environment means the operator chose, and forkd carries nothing.
const HeapSizePrefix = "RUBY_GC_HEAP_INIT"

// MaxHeapSize is the largest value a template may report: a billion objects, some 40 GB of Ruby
// heap. A larger one is a bug, and would make the next template allocate it all at start.
const MaxHeapSize = 1_000_000_000

// ParseHeapSize reads X_FORKD_HEAP_SIZE's value: VARIABLE=N, VARIABLE one of HeapSizeVariables and
// N decimal digits, 1 to MaxHeapSize.
func ParseHeapSize(s string) (variable string, value uint64, err error) {
	variable, digits, ok := strings.Cut(s, "=")
	switch {
	case !ok:
		return "", 0, fmt.Errorf("%q is not VARIABLE=NUMBER", s)
	case !slices.Contains(HeapSizeVariables, variable):
		return "", 0, fmt.Errorf("%q: forkd carries only %s", variable, strings.Join(HeapSizeVariables, ", "))
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || n == 0 || n > MaxHeapSize {
		return "", 0, fmt.Errorf("%s=%q: not a number of objects from 1 to %d", variable, digits, MaxHeapSize)
	}
	return variable, n, nil
}

// heapReported takes a worker's X_FORKD_HEAP_SIZE. Only an exec'd worker 0 in fork-worker mode,
// the template that loaded the app, reports one: a mold's heap is a serving worker's, warmed up
// past what the app holds at boot, and a forked worker's is the template's. Anything else is
// ignored and said once per worker; the rest of its datagram applies.
func (m *Machine) heapReported(w *worker, raw string) {
	ignore := func(why string) {
		if !w.badHeapSize {
			w.badHeapSize = true
			m.log(slog.LevelWarn, "ignoring the worker's X_FORKD_HEAP_SIZE: "+why+" (said once per worker)",
				m.workerAttrs(w, "heap-size-ignored")...)
		}
	}
	if !m.cfg.ForkWorker || w.slot != 0 || w.forked() {
		ignore("only worker 0, exec'd in fork-worker mode, reports the heap the app loads")
		return
	}
	variable, value, err := ParseHeapSize(raw)
	if err != nil {
		ignore(err.Error())
		return
	}
	h := &HeapSize{Variable: variable, Value: value, Generation: w.generation}
	m.heapSize = h
	how := "the next worker 0 forkd execs (a reload's, a hot restart's) boots with it"
	switch {
	case !m.cfg.CarryHeapSize:
		how = "not carried: fork_worker.carry_heap_size is off"
	case m.cfg.HeapSizeSet != "":
		how = "not carried: the app's environment sets " + m.cfg.HeapSizeSet
	}
	m.log(slog.LevelInfo, "the template reports its heap: "+h.String()+"; "+how, m.workerAttrs(w, "heap-size-reported")...)
}

// carriedHeapSize is the heap size a new exec'd worker 0 boots with (nil: none), said in the log.
func (m *Machine) carriedHeapSize(w *worker) *HeapSize {
	h := m.heapSize
	if h == nil || !m.cfg.CarryHeapSize || m.cfg.HeapSizeSet != "" || !w.channel || w.slot != 0 {
		return nil
	}
	m.log(slog.LevelInfo, fmt.Sprintf("worker 0 boots with %s, carried from generation %d's template; "+
		"set %s in the app's environment to choose it yourself", h, h.Generation, h.Variable),
		slog.String("event", "heap-size-carried"), slog.Int("worker", w.slot), slog.Int("generation", w.generation))
	carried := *h
	return &carried
}
