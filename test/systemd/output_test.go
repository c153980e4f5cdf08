package systemd

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// workerOutput: under journald each worker's stdout and stderr is a journal stream of its own with
// the identifier NAME-worker-N, so `journalctl -t demo-worker-1` shows what worker 1 printed, and
// the line is under no other identifier (not the master's forkd@demo, not the template's
// demo-worker-0). In fork-worker mode a forked worker gets its stream from the master with the
// stdio op (the Python SDK dup2s it onto fds 1 and 2); in exec mode the master gives it as the
// worker's fds 1 and 2 when it starts it.
func (e *env) workerOutput(t *testing.T, ctx context.Context) {
	t.Run("fork-worker-mode", func(t *testing.T) { e.forkedWorkerOutput(t, ctx) })
	t.Run("exec-mode", func(t *testing.T) { e.execWorkerOutput(t, ctx) })
}

// printedRE matches a line of the demo's GET /print.
var printedRE = regexp.MustCompile(`^e2e (stdout|stderr) (\S+) from worker (\d+) \(pid (\d+)\) JOURNAL_STREAM=(\S*)$`)

func (e *env) forkedWorkerOutput(t *testing.T, ctx context.Context) {
	const unit = "forkd@demo.service"
	st := e.ensureRunning(t, ctx, "demo", e.demoAddr)
	inv := e.prop(t, ctx, unit, "InvocationID")
	pids := workerPIDs(st)
	for _, w := range st.WorkerList {
		if w.Index == 1 && w.PID == pids[1] && !w.Forked {
			t.Fatalf("worker 1 (pid %d) was not forked by the template: the stdio op path is not exercised", w.PID)
		}
	}

	// Rounds of as many concurrent requests as workers, each held 300ms, until worker 1 answered
	// one: a request goes to whichever worker accepts first.
	nonce := fmt.Sprintf("n%x", time.Now().UnixNano())
	answered := map[int]int{}   // worker index: its pid
	requestsTo := map[int]int{} // worker index: requests it answered (a threaded worker may take two of a round)
	for round := 0; round < 20 && answered[1] == 0; round++ {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i := 0; i < st.Workers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				code, body, err := get(ctx, e.demoAddr, "/print?ms=300&msg="+nonce, 30*time.Second)
				r, ok := parseReply(body)
				if err != nil || code != 200 || !ok {
					t.Errorf("GET /print: %d %q %v", code, body, err)
					return
				}
				mu.Lock()
				answered[r.worker] = r.pid
				requestsTo[r.worker]++
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	if answered[1] == 0 {
		t.Fatalf("worker 1 answered none of the requests (answers from %v)", answered)
	}
	if answered[1] != pids[1] {
		t.Fatalf("worker 1 answered as pid %d, forkctl status says %d", answered[1], pids[1])
	}

	// journalctl -u forkd@demo has every line printed, each under the identifier of the worker that
	// printed it.
	var lines []map[string]any
	waitFor(t, ctx, "the printed lines in forkd@demo's journal", 200*time.Millisecond, func() (bool, string) {
		lines = nil
		for _, entry := range e.journal(t, ctx, "-u", unit) {
			if field(entry, "_SYSTEMD_INVOCATION_ID") == inv && strings.Contains(field(entry, "MESSAGE"), " "+nonce+" ") {
				lines = append(lines, entry)
			}
		}
		want := 0
		for _, n := range requestsTo {
			want += 2 * n
		}
		return len(lines) >= want, fmt.Sprintf("%d lines, %d wanted", len(lines), want)
	})
	byIdentifier := map[string]int{}
	worker1 := map[string]map[string]any{}
	for _, entry := range lines {
		msg, id := field(entry, "MESSAGE"), field(entry, "SYSLOG_IDENTIFIER")
		byIdentifier[id]++
		m := printedRE.FindStringSubmatch(msg)
		if m == nil {
			t.Errorf("unexpected line %q", msg)
			continue
		}
		if want := "demo-worker-" + m[3]; id != want {
			t.Errorf("%q is under SYSLOG_IDENTIFIER=%s, not %s", msg, id, want)
		}
		if m[3] == "1" {
			worker1[m[1]] = entry
		}
	}
	t.Logf("lines printed by the workers, by identifier: %v (workers that answered: %v)", byIdentifier, answered)
	if byIdentifier["forkd@demo"] != 0 {
		t.Errorf("%d printed lines are under the master's identifier forkd@demo", byIdentifier["forkd@demo"])
	}

	// journalctl -t demo-worker-1: worker 1's two lines, attributed by journald to worker 1's
	// process in forkd@demo.service; JOURNAL_STREAM in the worker names its new stdout.
	var tagged []map[string]any
	for _, entry := range e.journal(t, ctx, "-t", "demo-worker-1") {
		if strings.Contains(field(entry, "MESSAGE"), " "+nonce+" ") {
			tagged = append(tagged, entry)
		}
	}
	if len(tagged) != 2*requestsTo[1] || len(worker1) != 2 {
		t.Fatalf("journalctl -t demo-worker-1 has %d of worker 1's lines (%d kinds in the unit's journal), want a stdout and a stderr line for each of its %d requests",
			len(tagged), len(worker1), requestsTo[1])
	}
	stream := strings.TrimSpace(e.sh(t, ctx, `stat -L -c %d:%i /proc/$1/fd/1`, fmt.Sprint(pids[1])))
	for _, entry := range tagged {
		m := printedRE.FindStringSubmatch(field(entry, "MESSAGE"))
		e.checkAttribution(t, entry, unit, inv, pids[1])
		if m[5] != stream {
			t.Errorf("worker 1's JOURNAL_STREAM=%q, its stdout is %s", m[5], stream)
		}
	}
	t.Logf("journalctl -t demo-worker-1 -o verbose, stderr line: %s", verbose(worker1["stderr"]))

	// Each worker's fds 1 and 2 are one stream of its own: the forked ones no longer share worker
	// 0's (what they inherited).
	seen := map[string]int{}
	for idx, pid := range pids {
		out := strings.Fields(e.sh(t, ctx, `readlink /proc/$1/fd/1 /proc/$1/fd/2`, fmt.Sprint(pid)))
		if len(out) != 2 || out[0] != out[1] || !strings.HasPrefix(out[0], "socket:") {
			t.Errorf("worker %d (pid %d): stdout and stderr are %v, want one socket", idx, pid, out)
			continue
		}
		if other, dup := seen[out[0]]; dup {
			t.Errorf("workers %d and %d share the output %s", other, idx, out[0])
		}
		seen[out[0]] = idx
	}
}

func (e *env) execWorkerOutput(t *testing.T, ctx context.Context) {
	const unit = "forkd@hello.service"
	st := e.ensureRunning(t, ctx, "hello", e.helloAddr)
	inv := e.prop(t, ctx, unit, "InvocationID")
	pid := workerPIDs(st)[1]
	// The Go demo writes "hello worker 1: serving on ADDR (pid P, generation G)" to stderr once it
	// serves.
	mark := fmt.Sprintf("(pid %d, generation", pid)
	var lines []map[string]any
	waitFor(t, ctx, "worker 1's start line in forkd@hello's journal", 200*time.Millisecond, func() (bool, string) {
		lines = nil
		for _, entry := range e.journal(t, ctx, "-u", unit) {
			if msg := field(entry, "MESSAGE"); field(entry, "_SYSTEMD_INVOCATION_ID") == inv && strings.HasPrefix(msg, "hello worker 1: serving on ") && strings.Contains(msg, mark) {
				lines = append(lines, entry)
			}
		}
		return len(lines) > 0, fmt.Sprintf("%d lines", len(lines))
	})
	for _, entry := range lines {
		if id := field(entry, "SYSLOG_IDENTIFIER"); id != "hello-worker-1" {
			t.Errorf("%q is under SYSLOG_IDENTIFIER=%s, not hello-worker-1", field(entry, "MESSAGE"), id)
		}
	}
	var tagged []map[string]any
	for _, entry := range e.journal(t, ctx, "-t", "hello-worker-1") {
		if strings.Contains(field(entry, "MESSAGE"), mark) {
			tagged = append(tagged, entry)
		}
	}
	if len(tagged) != 1 {
		t.Fatalf("journalctl -t hello-worker-1 has %d lines of worker 1 (pid %d), want its start line", len(tagged), pid)
	}
	e.checkAttribution(t, tagged[0], unit, inv, pid)
	t.Logf("journalctl -t hello-worker-1 -o verbose: %s", verbose(tagged[0]))

	// An exec'd worker's JOURNAL_STREAM (in its initial environment) names its stderr.
	out := e.sh(t, ctx, `stat -L -c %d:%i /proc/$1/fd/2; tr '\0' '\n' </proc/$1/environ | sed -n 's/^JOURNAL_STREAM=//p'`, fmt.Sprint(pid))
	if f := strings.Fields(out); len(f) != 2 || f[0] != f[1] {
		t.Errorf("worker 1 (pid %d): stderr and JOURNAL_STREAM: %q", pid, out)
	}
}

// checkAttribution checks what journald recorded about the writer of a worker's line: the line came
// on a stdout stream, from the worker's process, in the unit's cgroup and invocation.
func (e *env) checkAttribution(t *testing.T, entry map[string]any, unit, inv string, pid int) {
	t.Helper()
	want := map[string]string{"_TRANSPORT": "stdout", "_PID": fmt.Sprint(pid), "_SYSTEMD_UNIT": unit, "_SYSTEMD_INVOCATION_ID": inv}
	for k, v := range want {
		if field(entry, k) != v {
			t.Errorf("%q: %s=%s, want %s", field(entry, "MESSAGE"), k, field(entry, k), v)
		}
	}
}

// verbose renders the fields of a journal entry that say who wrote it.
func verbose(entry map[string]any) string {
	var keys []string
	for k := range entry {
		switch k {
		case "MESSAGE", "SYSLOG_IDENTIFIER", "PRIORITY", "_TRANSPORT", "_PID", "_COMM", "_EXE", "_SYSTEMD_UNIT", "_STREAM_ID", "SYSLOG_PID":
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%v", k, entry[k])
	}
	return b.String()
}
