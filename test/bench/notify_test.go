package bench

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// floodPython sends argv[2] datagrams to argv[1] (a NOTIFY_SOCKET value) at about argv[3] a second:
// the flood of issue 12.5 (75k datagrams in 20 s). /usr/bin/python3, no package needed.
const floodPython = `
import socket, sys, time
a, n, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = "\0" + a[1:] if a.startswith("@") else a
sent = 0
t0 = time.monotonic()
for i in range(n):
    try:
        s.sendto(b"STATUS=hijacked", addr)
        sent += 1
    except OSError as e:
        print(e, file=sys.stderr)
        break
    if i % 100 == 0:
        d = t0 + i / rate - time.monotonic()
        if d > 0:
            time.sleep(d)
print(sent)
`

// Flood size and rate, as the attack run measured them.
const (
	floodDatagrams = 75000
	floodRate      = 3750
)

// BenchmarkNotifyFlood floods a worker's NOTIFY_SOCKET with 75k datagrams in 20 s from a process
// that is not a worker, and measures the master's CPU meanwhile, against the flooder's own CPU as
// the anchor (a ratio, so that the machine's speed cancels out):
//
//   - nobody, abstract: another user reaches an abstract socket (notify.abstract = true, and the
//     only kind before per-worker sockets); forkd must drop it by uid before anything else;
//   - root, abstract: a process of a trusted uid that is no worker; forkd traces it in /proc
//     (one read for its parent, then rate-limited walks), and drops it;
//   - nobody, path: the default socket file; the kernel refuses nobody (EACCES): no datagram
//     reaches the master at all.
func BenchmarkNotifyFlood(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("flooding as nobody needs root")
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		b.Skip("/usr/bin/python3 is not installed")
	}
	for _, tc := range []struct {
		name     string
		abstract bool
		nobody   bool
	}{
		{"sender=nobody/socket=abstract", true, true},
		{"sender=root/socket=abstract", true, false},
		{"sender=nobody/socket=path", false, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			extra := ""
			if tc.abstract {
				extra = "notify {\n  abstract = true\n}\n"
			}
			m := startMaster(b, masterConfig{workers: 2, command: testworker(), extra: extra})
			st := m.waitReady(2)
			addr := workerEnv(b, st.WorkerList[0].PID, "NOTIFY_SOCKET")

			cpu0 := processCPU(m.pid)
			cmd := exec.Command("/usr/bin/python3", "-c", floodPython, addr, strconv.Itoa(floodDatagrams), strconv.Itoa(floodRate))
			if tc.nobody {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			}
			start := time.Now()
			out, err := cmd.Output()
			wall := time.Since(start)
			if err != nil {
				b.Fatalf("flooder: %v: %s", err, out)
			}
			// Let the master read what is still queued before measuring.
			time.Sleep(500 * time.Millisecond)
			masterCPU := processCPU(m.pid) - cpu0
			flooderCPU := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
			sent, _ := strconv.Atoi(strings.TrimSpace(string(out)))
			after := m.status()
			for _, w := range after.WorkerList {
				if w.StatusLine == "hijacked" {
					b.Fatalf("a datagram of the flood was taken for worker %d's", w.Index)
				}
			}
			perTenK := 0.0
			if sent > 0 {
				perTenK = float64(masterCPU.Microseconds()) / 1000 / float64(sent) * 10000
			}
			ratio := float64(masterCPU) / float64(max(flooderCPU, time.Millisecond))
			b.ReportMetric(float64(sent), "sent")
			b.ReportMetric(float64(after.DroppedNotifications), "dropped")
			b.ReportMetric(float64(masterCPU.Milliseconds()), "master-cpu-ms")
			b.ReportMetric(float64(masterCPU)/float64(wall)*100, "master-cpu-%")
			b.ReportMetric(perTenK, "master-cpu-ms/10k")
			b.ReportMetric(ratio, "master/flooder-cpu")
			b.Logf("%s: %d of %d datagrams sent in %s (%d dropped by forkd); master CPU %s (%.1f%% of one core, %.2f ms per 10k), flooder CPU %s, ratio %.3f",
				tc.name, sent, floodDatagrams, wall.Round(time.Millisecond), after.DroppedNotifications,
				masterCPU, float64(masterCPU)/float64(wall)*100, perTenK, flooderCPU, ratio)
		})
	}
}

// workerEnv reads one variable of a worker's environment.
func workerEnv(tb testing.TB, pid int, key string) string {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	tb.Fatalf("worker %d has no %s", pid, key)
	return ""
}
