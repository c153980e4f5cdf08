package main

import (
	"os"
	"runtime/debug"
)

// masterGCPercent is the master's GOGC, when its environment sets none.
//
// Why lower than Go's 100: the master's live heap is small (about 2.5 MB with 64 workers) and
// what it allocates comes in bursts that it drops at once (a scrape, a status request, a
// rollout), so with GOGC=100 its heap idles at twice the live heap, made of garbage. At 50 the
// goal is 1.5 times the live heap: about 1.3 MB less RSS with 64 workers scraped every second
// (`make bench`, BenchmarkMasterScraped), for twice as many GC cycles, each a fraction of a
// millisecond of CPU on a heap that small.
//
// Why no memory limit (debug.SetMemoryLimit): a limit the live heap can reach (a cluster of many
// workers, a burst of events) makes the GC run back to back, up to half the CPU, and a supervisor
// must stay responsive above all. GOGC and GOMEMLIMIT in forkd's environment still apply.
const masterGCPercent = 50

// tuneGC sets the master's GC target, unless GOGC says otherwise.
func tuneGC() {
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(masterGCPercent)
	}
}
