package bench

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The Python apps of the fork-worker and rollout benchmarks, run as the integration tests run them
// (test/python_test.go): `/usr/bin/python3 -m forkd.gunicorn -k gthread --threads N app:app` in
// the app's directory, with the SDK on PYTHONPATH.
const (
	testappDir  = "../testapp"  // the integration tests' app
	benchappDir = "../benchapp" // memory built half at import, half on the first /warm
	sdkDir      = "../../sdk/python"
)

// forkWorkerBlock turns fork-worker mode on, without automatic reforks: the benchmarks refork when
// they mean to.
const forkWorkerBlock = `
fork_worker {
  refork_after = []
}
`

// noBackoff makes every crash a first crash (a worker that ran 1ms was healthy), so that a killed
// worker is respawned at once however often its slot is killed.
const noBackoff = `
restart {
  reset_after = "1ms"
}
`

// pythonExe runs the Python workers: Debian's interpreter, which sees python3-gunicorn (the python3
// first on PATH may be another, without it).
const pythonExe = "/usr/bin/python3"

var (
	pythonOnce sync.Once
	pythonErr  error
)

// python returns pythonExe, or skips the benchmark when it cannot import gunicorn.
func python(b *testing.B) string {
	b.Helper()
	pythonOnce.Do(func() {
		if out, err := exec.Command(pythonExe, "-c", "import gunicorn").CombinedOutput(); err != nil {
			pythonErr = fmt.Errorf("%v: %s", err, bytes.TrimSpace(out))
		}
	})
	if pythonErr != nil {
		b.Skipf("%s cannot import gunicorn (%v): apt-get install -y python3-gunicorn", pythonExe, pythonErr)
	}
	return pythonExe
}

func absPath(b *testing.B, rel string) string {
	b.Helper()
	p, err := filepath.Abs(rel)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

// pythonApp is the config running dir's app:app on gunicorn's threaded worker under
// forkd.gunicorn, threads threads per worker; extra is more HCL (forkWorkerBlock for fork-worker
// mode).
func pythonApp(b *testing.B, dir string, workers, threads int, env map[string]string, extra string) masterConfig {
	b.Helper()
	vars := map[string]string{"PYTHONPATH": absPath(b, sdkDir)}
	for k, v := range env {
		vars[k] = v
	}
	return masterConfig{
		workers:   workers,
		command:   []string{python(b), "-m", "forkd.gunicorn", "-k", "gthread", "--threads", strconv.Itoa(threads), "app:app"},
		directory: absPath(b, dir),
		env:       vars,
		extra:     extra,
	}
}

// forkFloorScript is the floor under a forked worker's spawn: in one Python process that imported
// the app as a worker does (forkd.gunicorn, then app), the time from os.fork() until the child has
// written a byte to a pipe, argv[1] times after 3 unmeasured forks. With argv[2] "double", the
// child forks again and exits, and the grandchild writes the byte, as the SDK's double fork does
// (so that every worker is the master's child). It prints the times in ns.
const forkFloorScript = `import os, sys, time
import forkd.gunicorn, gunicorn.workers.gthread
import app
n, double = int(sys.argv[1]), sys.argv[2] == "double"
times = []
for i in range(n + 3):
    r, w = os.pipe()
    t0 = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        if double and os.fork() != 0:
            os._exit(0)
        os.write(w, b"x")
        os._exit(0)
    os.read(r, 1)
    t1 = time.perf_counter_ns()
    os.close(r)
    os.close(w)
    os.waitpid(pid, 0)
    if i >= 3:
        times.append(t1 - t0)
print(" ".join(str(t) for t in times))
`

// forkFloor runs forkFloorScript (a single fork, or a double one) with the environment of cfg's
// workers and returns its times.
func forkFloor(b *testing.B, cfg masterConfig, n int, double bool) []time.Duration {
	b.Helper()
	mode := map[bool]string{false: "single", true: "double"}[double]
	cmd := exec.Command(cfg.command[0], "-c", forkFloorScript, strconv.Itoa(n), mode)
	cmd.Dir = cfg.directory
	cmd.Env = append(cmd.Environ(), "PYTHONPATH="+cfg.env["PYTHONPATH"])
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		b.Fatalf("fork floor script: %v\n%s", err, stderr.String())
	}
	var ds []time.Duration
	for _, f := range strings.Fields(string(out)) {
		ns, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			b.Fatalf("fork floor script printed %q", out)
		}
		ds = append(ds, time.Duration(ns))
	}
	if len(ds) != n {
		b.Fatalf("fork floor script printed %d times, want %d", len(ds), n)
	}
	return ds
}

// quantile is the nearest-rank p-quantile of ds (0 < p <= 1); 0 for none.
func quantile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func median(ds []time.Duration) time.Duration { return quantile(ds, 0.5) }

func minMax(ds []time.Duration) (lo, hi time.Duration) {
	for i, d := range ds {
		if i == 0 || d < lo {
			lo = d
		}
		if i == 0 || d > hi {
			hi = d
		}
	}
	return lo, hi
}

// msList formats durations as "12.3 45.6 ..." milliseconds.
func msList(ds []time.Duration) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%.1f", ms(d))
	}
	return strings.Join(parts, " ")
}

// loadAvg is the machine's 1-minute load average, as /proc/loadavg has it: the benchmarks share a
// 2-core machine with other work, and their details say how busy it was.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

// busy tells the load average at a benchmark's start and now.
func busy(start string) string { return fmt.Sprintf("load average %s -> %s", start, loadAvg()) }
