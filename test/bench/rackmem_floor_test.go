package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/internal/proctest"
)

// The bare fork of BenchmarkRackMemory: the floor of its total PSS at the stages "after boot" and
// "after a refork". Issue 14 asks for at most 0.8x Puma's total at every stage, but any fork
// server holds the app's memory once, in the process its workers are forked from, and the
// workers share it: 0.8x of a total that is mostly that memory can be less than the memory
// itself. test/benchrack/floor.rb is no server at all: one Ruby process (Puma's interpreter,
// Puma's environment) that loads memory.ru's app, readies its heap (GC.compact) and forks
// rackWorkers children that only wait; at the refork it builds the lazy half too (what a warmed
// worker holds), readies again and forks fresh children. Its total (parent + children, read as the
// sides' totals are) is measured in the boot round and the refork round, after the sides, and
// printed beside Puma's with its ratio and 0.8x Puma; it then exits, so that the load stages run
// without it. While it runs it is idle: it only shares the file pages of Ruby's libraries with
// the sides (a little less PSS for each of them).

// rackMemFloorName is the floor's name in the report.
const rackMemFloorName = "bare fork (floor)"

// rackMemFloorStages are the stages the floor is measured at.
var rackMemFloorStages = []string{"after boot", "after a refork"}

// rackMemFloor is floor.rb under measurement.
type rackMemFloor struct {
	tb      testing.TB
	cmd     *exec.Cmd
	in      io.WriteCloser
	forked  chan []int
	done    chan struct{}
	waitErr error
	out     proctest.Output
	stopped sync.Once
	// interpreter is the Ruby it runs; children the PIDs of its children now.
	interpreter string
	children    []int
	stages      map[string]rackMem
}

// scriptInterpreter is the interpreter of script's "#!" line (through /usr/bin/env: the one on
// PATH), or fallback when it has none.
func scriptInterpreter(script, fallback string) string {
	f, err := os.Open(script)
	if err != nil {
		return fallback
	}
	defer f.Close()
	line, _ := bufio.NewReader(f).ReadString('\n')
	fields := strings.Fields(strings.TrimPrefix(line, "#!"))
	if !strings.HasPrefix(line, "#!") || len(fields) == 0 {
		return fallback
	}
	if filepath.Base(fields[0]) == "env" && len(fields) > 1 {
		if p, err := exec.LookPath(fields[1]); err == nil {
			return p
		}
		return fallback
	}
	return fields[0]
}

// startRackMemFloor starts floor.rb with ruby and env (more than the benchmark's own environment)
// and waits until it has forked its children.
func startRackMemFloor(b *testing.B, ruby string, env map[string]string) *rackMemFloor {
	b.Helper()
	f := &rackMemFloor{tb: b, interpreter: ruby, forked: make(chan []int, 2), done: make(chan struct{}), stages: map[string]rackMem{}}
	f.cmd = exec.Command(ruby, "floor.rb", strconv.Itoa(rackWorkers))
	f.cmd.Dir = absPath(b, rackDir)
	f.cmd.SysProcAttr = serverSession()
	f.cmd.Env = append(os.Environ(), "RACK_ENV=production")
	for k, v := range env {
		f.cmd.Env = append(f.cmd.Env, k+"="+v)
	}
	var err error
	if f.in, err = f.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	stdout, err := f.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	f.cmd.Stderr = &f.out
	f.cmd.WaitDelay = 5 * time.Second
	if err := f.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() {
		defer close(f.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == rackWorkers+1 && fields[0] == "forked" {
				var pids []int
				for _, s := range fields[1:] {
					if pid, err := strconv.Atoi(s); err == nil {
						pids = append(pids, pid)
					}
				}
				f.forked <- pids
				continue
			}
			fmt.Fprintln(&f.out, sc.Text())
		}
		f.waitErr = f.cmd.Wait()
	}()
	b.Cleanup(f.stop)
	if err := f.awaitForked(); err != nil {
		b.Fatalf("%s: %v", rackMemFloorName, err)
	}
	return f
}

// awaitForked waits for the "forked" line of the children's fork.
func (f *rackMemFloor) awaitForked() error {
	select {
	case pids := <-f.forked:
		if len(pids) != rackWorkers {
			return fmt.Errorf("forked %v, want %d children\noutput:\n%s", pids, rackWorkers, f.out.String())
		}
		f.children = pids
		return nil
	case <-f.done:
		return fmt.Errorf("exited (%v) before it forked\noutput:\n%s", f.waitErr, f.out.String())
	case <-time.After(waitDeadline):
		return fmt.Errorf("no fork within %s\noutput:\n%s", waitDeadline, f.out.String())
	}
}

// refork has floor.rb build the lazy half, ready its heap again and fork fresh children (the old
// ones have exited once it says so).
func (f *rackMemFloor) refork() error {
	if _, err := io.WriteString(f.in, "refork\n"); err != nil {
		return err
	}
	return f.awaitForked()
}

// measure reads the floor's total PSS as sampleRackMem reads a side's: the parent stands for the
// template (it holds the app) and is counted among the processes, with no master beside it.
func (f *rackMemFloor) measure(stage string) error {
	parent := f.cmd.Process.Pid
	s := &rackSide{masterPID: parent, workers: func() ([]int, error) { return f.children, nil }}
	samples, err := sampleRackMem(s, rackMemStageSamples, 500*time.Millisecond)
	if err != nil {
		return err
	}
	for i, m := range samples {
		m.perWorker = append([]rollup{m.masterRollup}, m.perWorker...)
		m.workers += m.master
		m.master, m.masterRollup = 0, rollup{}
		samples[i] = m
	}
	f.stages[stage] = medianMem(samples)
	return nil
}

// stop closes floor.rb's stdin (it exits, and its children with it), then kills by PID any
// process of it still running.
func (f *rackMemFloor) stop() {
	f.stopped.Do(func() {
		f.in.Close()
		select {
		case <-f.done:
		case <-time.After(stopDeadline):
			f.tb.Errorf("%s did not exit within %s of the end of its input: SIGKILL", rackMemFloorName, stopDeadline)
			f.cmd.Process.Signal(syscall.SIGKILL)
			<-f.done
		}
		killSurvivors(f.tb, f.children, func(pid int) bool {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			return err == nil && bytes.Contains(b, []byte("floor.rb"))
		}, rackMemFloorName)
	})
}

// memSplit is what a total is made of: the master's PSS, the private memory of the process the
// others are forked from (worker 0: the template or the mold; Puma's worker 0; the floor's
// parent) and of the others, and the PSS of what the workers still share.
type memSplit struct {
	total, master, source, others, shared float64
}

func splitMem(m rackMem) memSplit {
	s := memSplit{total: mb(m.total()), master: mb(m.master)}
	var private uint64
	for i, r := range m.perWorker {
		p := r.privateClean + r.privateDirty
		private += p
		if i == 0 {
			s.source = mb(p)
		} else {
			s.others += mb(p)
		}
	}
	s.shared = mb(m.workers - private)
	return s
}

// printRackMemFloor prints, for each stage of the floor, what each side holds beyond it.
func printRackMemFloor(w io.Writer, sides []*rackMemSide, floor map[string]rackMem, info string) {
	if len(floor) == 0 {
		return
	}
	fmt.Fprintf(w, "%s: %s\n", rackMemFloorName, info)
	fmt.Fprintf(w, "beyond the floor, MB: total = floor + master + private beyond the floor's + shared beyond the floor's\n")
	fmt.Fprintf(w, "  (private: worker 0's, the process the others are forked from: template, mold, Puma's worker 0, the floor's parent; and the others' sum;\n")
	fmt.Fprintf(w, "   shared: the PSS of what the workers share, the app's data first)\n")
	fmt.Fprintf(w, "%-16s %-18s %8s %8s %8s %10s %10s %8s %10s %10s\n", "stage", "side", "total", "beyond", "master",
		"w0 priv", "others'", "shared", "+private", "+shared")
	for _, stage := range rackMemFloorStages {
		m, ok := floor[stage]
		if !ok {
			continue
		}
		fl := splitMem(m)
		fmt.Fprintf(w, "%-16s %-18s %8.1f %8s %8s %10.1f %10.1f %8.1f\n", stage, rackMemFloorName, fl.total, "", "-", fl.source, fl.others, fl.shared)
		for _, s := range sides {
			i := stageIndex(s, stage)
			if i < 0 {
				continue
			}
			sp := splitMem(s.stages[i].mem)
			fmt.Fprintf(w, "%-16s %-18s %8.1f %8.1f %8.1f %10.1f %10.1f %8.1f %10.1f %10.1f\n", "", s.name, sp.total, sp.total-fl.total, sp.master,
				sp.source, sp.others, sp.shared, sp.source+sp.others-fl.source-fl.others, sp.shared-fl.shared)
		}
	}
	for _, stage := range rackMemFloorStages {
		if m, ok := floor[stage]; ok {
			fmt.Fprintf(w, "  %s %s, MB: %s\n", rackMemFloorName, stage, floorRollupTable(m))
		}
	}
}

// floorRollupTable is rollupTable for the floor: its parent and its children, no master.
func floorRollupTable(m rackMem) string {
	var b strings.Builder
	fmt.Fprintf(&b, "parent + %d children = %.1f (samples %s)", len(m.perWorker)-1, mb(m.total()), mbList(m.totals))
	for i, r := range m.perWorker {
		name := "parent"
		if i > 0 {
			name = fmt.Sprintf("child %d", i)
		}
		b.WriteString(rollupLine(name, r))
	}
	return b.String()
}

// stageIndex is the index of s's stage of that name, or -1.
func stageIndex(s *rackMemSide, name string) int {
	for i, st := range s.stages {
		if st.name == name {
			return i
		}
	}
	return -1
}
