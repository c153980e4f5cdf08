package memsample

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestReadThisProcess(t *testing.T) {
	m, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS == 0 || m.PSS == 0 || m.PSS > m.RSS || m.Shared > m.RSS || m.PrivateDirty > m.RSS {
		t.Fatalf("implausible memory figures %+v", m)
	}
	if m.Private() != m.RSS-m.Shared {
		t.Fatalf("Private() = %d, want RSS - Shared = %d", m.Private(), m.RSS-m.Shared)
	}
	if _, err := Read(1 << 30); err == nil {
		t.Fatal("Read of a PID that cannot exist succeeded")
	}
}

// The sampler reads every listed process at each sample, leaves out the ones it cannot read,
// keeps the last sample when the list fails, and hands each sample on.
func TestSamplerKeepsTheLastSample(t *testing.T) {
	var round atomic.Int64
	var failList atomic.Bool
	delivered := make(chan *Sample, 100)
	s := &Sampler{
		Interval: time.Millisecond,
		PIDs: func(context.Context) ([]int, error) {
			if failList.Load() {
				return nil, errors.New("the master's loop did not answer")
			}
			round.Add(1)
			return []int{10, 11, 12}, nil
		},
		Read: func(pid int) (Memory, error) {
			if pid == 12 {
				return Memory{}, os.ErrNotExist // gone before its read
			}
			return Memory{RSS: uint64(pid) << 20, PSS: uint64(round.Load())}, nil
		},
		Deliver: func(s *Sample) {
			select {
			case delivered <- s:
			default:
			}
		},
	}
	if s.Last() != nil {
		t.Fatal("a sample before the first")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()

	first := <-delivered
	if len(first.Processes) != 2 || first.Processes[10].RSS != 10<<20 || first.Processes[11].RSS != 11<<20 {
		t.Fatalf("first sample %+v, want pids 10 and 11 with their RSS", first.Processes)
	}
	if _, ok := first.Of(12, time.Time{}); ok {
		t.Fatal("a process that could not be read is in the sample")
	}
	waitFor(t, "a later sample", func() bool { return s.Last().Processes[10].PSS > first.Processes[10].PSS })

	cancel()
	<-done
	failList.Store(true)
	last := s.Last()
	s.sample(context.Background())
	if s.Last() != last {
		t.Fatal("a sample whose list of processes failed replaced the last one")
	}
}

// Wake brings the next sample forward, but never closer than MinGap to the last one.
func TestSamplerWake(t *testing.T) {
	delivered := make(chan *Sample, 10)
	s := &Sampler{
		Interval: time.Hour,
		PIDs:     func(context.Context) ([]int, error) { return []int{1}, nil },
		Read:     func(int) (Memory, error) { return Memory{RSS: 1}, nil },
		Deliver:  func(s *Sample) { delivered <- s },
	}
	s.Wake() // before Run: kept for it
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	first := <-delivered
	for range 5 {
		s.Wake()
	}
	second := <-delivered
	if gap := second.At.Sub(first.At); gap < MinGap {
		t.Fatalf("two samples %v apart; Wake must leave at least %v between them", gap, MinGap)
	}
	select {
	case third := <-delivered:
		t.Fatalf("five Wakes made more than one sample: another at %v", third.At)
	case <-time.After(2 * MinGap):
	}
}

// A process spawned after a sample began is not in it, even under a PID the sample holds.
func TestSampleOfAReusedPID(t *testing.T) {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s := &Sample{At: at, Processes: map[int]Memory{42: {RSS: 1}}}
	if _, ok := s.Of(42, at.Add(-time.Second)); !ok {
		t.Fatal("a process spawned before the sample is not in it")
	}
	if _, ok := s.Of(42, at.Add(time.Second)); ok {
		t.Fatal("a process spawned after the sample took the memory of the PID's previous owner")
	}
	var none *Sample
	if _, ok := none.Of(42, time.Time{}); ok {
		t.Fatal("no sample holds a process")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestParseKSMStat(t *testing.T) {
	k := parseKSMStat([]byte("ksm_rmap_items 120\nksm_zero_pages 0\nksm_merging_pages 90\nksm_process_profit -1024\n" +
		"ksm_merge_any: yes\nksm_mergeable: yes\nsome_later_field 7\n"))
	if *k != (KSM{MergingPages: 90, RmapItems: 120, Profit: -1024, MergeAny: true}) {
		t.Fatalf("parsed %+v", *k)
	}
	m, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if _, statErr := os.Stat("/proc/self/ksm_stat"); (statErr == nil) != (m.KSM != nil) {
		t.Fatalf("Read's KSM is %+v, but /proc/self/ksm_stat: %v", m.KSM, statErr)
	}
}

// KSMProblem names what keeps KSM from merging: no kernel support, then a stopped ksmd.
func TestKSMProblem(t *testing.T) {
	dir := t.TempDir()
	ok := func() error { return nil }
	run := func(v string) {
		if err := os.WriteFile(dir+"/run", []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name, dir, run string
		getMerge       func() error
		want           string
	}{
		{"no sysfs directory", dir + "/absent", "1", ok, KSMNoKernelSupport},
		{"prctl unknown", dir, "1", func() error { return unix.EINVAL }, KSMNoKernelSupport},
		{"ksmd stopped", dir, "0", ok, KSMDaemonOff},
		{"ksmd stopped and unmerged", dir, "2", ok, KSMDaemonOff},
		{"ksmd running", dir, "1", ok, ""},
	} {
		run(tc.run)
		if got := ksmProblem(tc.dir, tc.getMerge); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
