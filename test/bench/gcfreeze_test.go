package bench

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
)

// BenchmarkGCFreeze: what the template's gc.collect() + gc.freeze() before it forks (the Python
// SDK's default; forkd.set_gc_freeze(False) turns it off) does to the memory the workers share and to
// how long a fork takes, with it off and on, side by side in one run.
//
// The app is test/benchapp with gcObjects small lists at import (objects the collector tracks,
// as a big app's modules, classes and tables are), 4 workers in fork-worker mode, and a cache of
// the last 1000 requests' objects (gcKeep each), so that full collections come under load while
// the memory the app uses stays the same. Each worker's
// Pss and Private_Dirty (smaps_rollup) are read right after the forks, and after gcLoad of wrk
// -c16; then gcReforks reforks are timed (forkctl refork --wait, and each forked worker's spawn
// to READY=1 as forkd logs it).

const (
	gcObjects = 400000
	gcKeep    = 50
	gcWorkers = 4
	gcLoad    = 10 * time.Second
	gcReforks = 3
)

type gcSample struct {
	role           string
	pss, dirty     uint64
	frozen, fulls  int
	pssL, dirtyL   uint64
	frozenL, fullL int
}

type gcSide struct {
	freeze   bool
	workers  []gcSample // by worker index
	requests int
	reforks  []time.Duration
	boots    []time.Duration
}

var (
	gcMu    sync.Mutex
	gcSides []gcSide
	gcInfo  string
)

func BenchmarkGCFreeze(b *testing.B) {
	load := loadAvg()
	var sides []gcSide
	for _, freeze := range []bool{false, true} {
		sides = append(sides, benchGCFreeze(b, freeze))
	}
	gcMu.Lock()
	gcSides = sides
	gcInfo = fmt.Sprintf("%d workers of test/benchapp, %d GC-tracked lists at import, %d more kept by each of the last 1000 requests, wrk -c%d for %s, %d reforks; %s",
		gcWorkers, gcObjects, gcKeep, drainConnections, gcLoad, gcReforks, busy(load))
	gcMu.Unlock()
	metrics := map[string]float64{}
	for _, s := range sides {
		name := map[bool]string{false: "off", true: "on"}[s.freeze]
		p, d, pl, dl := s.totals()
		metrics["pss-fork-MB-"+name], metrics["dirty-fork-MB-"+name] = mb(p), mb(d)
		metrics["pss-load-MB-"+name], metrics["dirty-load-MB-"+name] = mb(pl), mb(dl)
		metrics["refork-p50-ms-"+name] = ms(median(s.reforks))
		metrics["boot-p50-ms-"+name] = ms(median(s.boots))
	}
	report(b, metrics)
}

func (s gcSide) totals() (pss, dirty, pssLoad, dirtyLoad uint64) {
	for _, w := range s.workers {
		pss, dirty, pssLoad, dirtyLoad = pss+w.pss, dirty+w.dirty, pssLoad+w.pssL, dirtyLoad+w.dirtyL
	}
	return
}

func benchGCFreeze(b *testing.B, freeze bool) gcSide {
	env := map[string]string{
		"BENCHAPP_OBJECTS": strconv.Itoa(gcObjects), "BENCHAPP_KEEP": strconv.Itoa(gcKeep),
		"BENCHAPP_GC_FREEZE": map[bool]string{false: "0", true: "1"}[freeze],
	}
	m := startMaster(b, pythonApp(b, benchappDir, gcWorkers, 4, env, forkWorkerBlock))
	st := m.settled(gcWorkers)
	if st.Mode != control.ModeFork {
		b.Fatalf("mode %q, want fork\noutput:\n%s", st.Mode, m.out.String())
	}
	url := "http://" + m.addr()
	side := gcSide{freeze: freeze, workers: make([]gcSample, gcWorkers)}
	gcs := gcStats(b, m, url)
	for _, w := range st.WorkerList {
		r, err := readRollup(w.PID)
		if err != nil {
			b.Fatal(err)
		}
		role := map[bool]string{true: "template", false: "forked"}[w.Template]
		g := gcs[w.PID]
		side.workers[w.Index] = gcSample{role: role, pss: r.pss, dirty: r.privateDirty, frozen: g[0], fulls: g[1]}
	}

	stop := startWrkRun(b, url+"/", drainConnections)
	time.Sleep(gcLoad)
	run := stop()
	side.requests = run.requests
	if failed := run.socketErrors() + run.non2xx; failed != 0 {
		b.Errorf("freeze=%v: %d failed requests under load:\n%s", freeze, failed, run.output)
	}
	st = m.settled(gcWorkers)
	gcs = gcStats(b, m, url)
	for _, w := range st.WorkerList {
		r, err := readRollup(w.PID)
		if err != nil {
			b.Fatal(err)
		}
		g := gcs[w.PID]
		s := &side.workers[w.Index]
		s.pssL, s.dirtyL, s.frozenL, s.fullL = r.pss, r.privateDirty, g[0], g[1]
	}

	for i := range gcReforks {
		r := m.timeRollout("refork", i+1)
		side.reforks = append(side.reforks, r.took)
		for _, ev := range r.ready {
			side.boots = append(side.boots, ev.boot)
		}
		m.settled(gcWorkers)
	}
	m.stop()
	return side
}

var gcStatsRE = regexp.MustCompile(`pid=(\d+) frozen=(\d+) full=(\d+)`)

// gcStats asks every worker for its /gc (on new connections, until each has answered): PID ->
// objects frozen, full collections so far.
func gcStats(b *testing.B, m *master, url string) map[int][2]int {
	b.Helper()
	st := m.settled(gcWorkers)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	out := map[int][2]int{}
	for range 400 {
		resp, err := client.Get(url + "/gc")
		if err != nil {
			b.Fatalf("GET /gc: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		g := gcStatsRE.FindStringSubmatch(string(body))
		if g == nil {
			b.Fatalf("GET /gc: %q", body)
		}
		pid, _ := strconv.Atoi(g[1])
		frozen, _ := strconv.Atoi(g[2])
		full, _ := strconv.Atoi(g[3])
		out[pid] = [2]int{frozen, full}
		if len(out) == len(st.WorkerList) {
			return out
		}
	}
	b.Fatalf("400 requests to /gc reached %d of %d workers", len(out), len(st.WorkerList))
	return nil
}

func printGCFreezeSummary(w io.Writer) {
	gcMu.Lock()
	sides, info := gcSides, gcInfo
	gcMu.Unlock()
	if len(sides) == 0 {
		return
	}
	fmt.Fprintf(w, "\n=== the template's gc.collect() + gc.freeze() before it forks, off and on (%s) ===\n", info)
	fmt.Fprintf(w, "%-7s %-6s %-9s %26s   %34s\n", "freeze", "worker", "role", "right after the forks", "after the load")
	fmt.Fprintf(w, "%-7s %-6s %-9s %8s %9s %7s %5s   %8s %9s %7s %5s\n", "", "", "", "pss MB", "dirty MB", "frozen", "full", "pss MB", "dirty MB", "frozen", "full")
	for _, s := range sides {
		name := map[bool]string{false: "off", true: "on"}[s.freeze]
		for i, g := range s.workers {
			fmt.Fprintf(w, "%-7s %-6d %-9s %8.1f %9.1f %7d %5d   %8.1f %9.1f %7d %5d\n", name, i, g.role,
				mb(g.pss), mb(g.dirty), g.frozen, g.fulls, mb(g.pssL), mb(g.dirtyL), g.frozenL, g.fullL)
		}
		p, d, pl, dl := s.totals()
		fmt.Fprintf(w, "%-7s %-6s %-9s %8.1f %9.1f %7s %5s   %8.1f %9.1f   (%d requests)\n", name, "total", "", mb(p), mb(d), "", "", mb(pl), mb(dl), s.requests)
	}
	fmt.Fprintf(w, "%-7s %-40s %s\n", "freeze", "forkctl refork --wait, ms", "forked workers' spawn to READY=1, ms")
	for _, s := range sides {
		name := map[bool]string{false: "off", true: "on"}[s.freeze]
		fmt.Fprintf(w, "%-7s %-40s p50 %s, max %s (%d)\n", name, msList(s.reforks), fmtMS(median(s.boots)), fmtMS(quantile(s.boots, 1)), len(s.boots))
	}
	if len(sides) == 2 {
		_, _, offP, _ := sides[0].totals()
		_, _, onP, _ := sides[1].totals()
		fmt.Fprintf(w, "total PSS after the load, on / off: %.3f (%+.1f MB)\n", float64(onP)/float64(offP), mb(onP)-mb(offP))
	}
}
