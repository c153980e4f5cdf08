package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// spawnSamples is how many boots each spawn benchmark collects.
const spawnSamples = 60

// pythonWorker is the smallest non-Go app that speaks the protocol: READY=1 on NOTIFY_SOCKET, then
// nothing until SIGTERM, whose default action ends it. It shows what the shim costs an app whose
// own start-up is not Go's.
const pythonWorker = `import os, signal, socket
a = os.environ["NOTIFY_SOCKET"]
if a.startswith("@"):
    a = "\0" + a[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", a)
s.close()
signal.pause()
`

// BenchmarkSpawnToReady measures, in exec mode, the time from the master's SpawnWorker to the
// worker's READY=1 as the master itself sees it: the boot= of its "worker ready" record. Workers
// are added one at a time (scale +1, wait for ready, scale -1, wait for the exit), so each boot has
// the machine to itself; the 4 initial workers, booting together, are logged but not counted.
func BenchmarkSpawnToReady(b *testing.B) {
	b.Run("app=testworker", func(b *testing.B) { benchSpawn(b, testworker("-heartbeat=false")) })
	b.Run("app=python3", func(b *testing.B) {
		python, err := exec.LookPath("python3")
		if err != nil {
			b.Skip("python3 not installed")
		}
		benchSpawn(b, []string{python, "-c", pythonWorker})
	})
}

func benchSpawn(b *testing.B, command []string) {
	m := startMaster(b, masterConfig{workers: 4, command: command})
	var initial []string
	for range 4 {
		initial = append(initial, fmtMS(m.next("worker-ready", 0).boot))
	}
	m.waitReady(4)
	boots := make([]time.Duration, 0, spawnSamples)
	for len(boots) < spawnSamples {
		m.scale(+1)
		ready := m.next("worker-ready", 0)
		boots = append(boots, ready.boot)
		m.scale(-1)
		// The retired slot comes back only once its process is gone: wait for it.
		m.next("worker-exited", ready.pid)
	}
	m.stop()

	p50, p90, maxd := percentiles(boots)
	report(b, map[string]float64{"p50-ms": ms(p50), "p90-ms": ms(p90), "max-ms": ms(maxd), "samples": float64(len(boots))})
	b.Logf("\nspawn to READY=1 of %q, as forkd logs it (boot=), %d one-at-a-time boots:\n"+
		"  p50 %s  p90 %s  max %s  (the 4 initial workers, booting together: %s)",
		filepath.Base(command[0]), len(boots), fmtMS(p50), fmtMS(p90), fmtMS(maxd), strings.Join(initial, " "))
}

// shimRuns is how many times BenchmarkShimExec starts each command.
const shimRuns = 50

// BenchmarkShimExec measures the floor under every exec-mode spawn: forkd's binary started as the
// shim, which execs the app (here /bin/true), timed from Start to Wait from Go's os/exec, so fork
// + exec of forkd + the Go runtime's start + exec of the app + its exit. via=direct runs /bin/true
// alone (fork + exec), so the difference is the shim's share. The shim is the whole forkd binary:
// every package's init runs before main reaches the shim, which GODEBUG=inittrace=1 measures.
func BenchmarkShimExec(b *testing.B) {
	b.Run("via=shim", func(b *testing.B) {
		argv := []string{filepath.Join(bin, "forkd"), "__forkd-shim", "/bin/true"}
		execFloor(b, argv)
		inits, pkgs, mainAt := initTrace(b, argv)
		b.Logf("package inits before the shim's main: %d packages, %s in total; the last ended %s after the runtime started",
			pkgs, fmtMS(inits), fmtMS(mainAt))
		b.ReportMetric(ms(inits), "init-ms")
	})
	b.Run("via=direct", func(b *testing.B) { execFloor(b, []string{"/bin/true"}) })
}

func execFloor(b *testing.B, argv []string) {
	// A few unmeasured runs first, so page cache misses on the binaries do not count.
	for range 3 {
		runOnce(b, argv)
	}
	runs := make([]time.Duration, 0, shimRuns)
	for range shimRuns {
		runs = append(runs, runOnce(b, argv))
	}
	p50, p90, maxd := percentiles(runs)
	report(b, map[string]float64{"p50-ms": ms(p50), "p90-ms": ms(p90), "max-ms": ms(maxd), "samples": float64(len(runs))})
	b.Logf("\n%s, %d runs, Start to Wait:\n  p50 %s  p90 %s  max %s", strings.Join(argv, " "), len(runs), fmtMS(p50), fmtMS(p90), fmtMS(maxd))
}

// runOnce starts argv as a worker is started (LISTEN_FDS=0: no listeners) and times it to its
// exit.
func runOnce(b *testing.B, argv []string) time.Duration {
	b.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LISTEN_FDS=0")
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			b.Fatalf("%s: %v", strings.Join(argv, " "), err)
		}
	case <-time.After(waitDeadline):
		cmd.Process.Kill()
		<-done
		b.Fatalf("%s did not exit within %s", strings.Join(argv, " "), waitDeadline)
	}
	return time.Since(start)
}

var initRE = regexp.MustCompile(`^init \S+ @([0-9.]+) ms, ([0-9.]+) ms clock`)

// initTrace runs argv once with GODEBUG=inittrace=1 and returns the summed clock time of its
// package inits, how many there were, and when the last one ended after the runtime started.
func initTrace(b *testing.B, argv []string) (total time.Duration, pkgs int, lastEnd time.Duration) {
	b.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LISTEN_FDS=0", "GODEBUG=inittrace=1")
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("%s with inittrace: %v\n%s", strings.Join(argv, " "), err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		mm := initRE.FindStringSubmatch(line)
		if mm == nil {
			continue
		}
		at, _ := strconv.ParseFloat(mm[1], 64)
		clock, _ := strconv.ParseFloat(mm[2], 64)
		total += time.Duration(clock * float64(time.Millisecond))
		lastEnd = max(lastEnd, time.Duration((at+clock)*float64(time.Millisecond)))
		pkgs++
	}
	return total, pkgs, lastEnd
}

func fmtMS(d time.Duration) string { return fmt.Sprintf("%.2fms", ms(d)) }
