package memsample

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultInterval is how often a Sampler with no Interval samples (memory.sample_interval's
// default): often enough for a dashboard and a refork policy, which watch trends of minutes,
// rarely enough that large workers cost the master little (see the package doc).
const DefaultInterval = 10 * time.Second

// MinGap is the least time between two samples, however often Wake asks for one.
const MinGap = time.Second

// Sample is the memory of the workers at one moment.
type Sample struct {
	// At is when the reads began; Took how long they took, all of them.
	At   time.Time
	Took time.Duration
	// Processes holds each process read, by PID; a process gone before its read is absent.
	Processes map[int]Memory
}

// Of returns the memory of pid in the sample, if it holds it. A process spawned after the sample
// began is never in it, even under a reused PID: spawnedAt is when the caller's process began (a
// zero time skips the check).
func (s *Sample) Of(pid int, spawnedAt time.Time) (Memory, bool) {
	if s == nil || !spawnedAt.IsZero() && !spawnedAt.Before(s.At) {
		return Memory{}, false
	}
	m, ok := s.Processes[pid]
	return m, ok
}

// Sampler reads the memory of a set of processes every Interval. Set its fields, then call Run
// once; Last may be called from any goroutine.
type Sampler struct {
	// Interval is the time between two samples; zero means DefaultInterval.
	Interval time.Duration
	// PIDs lists the processes to read at each sample: the master's workers. An error skips the
	// sample (the last one stays).
	PIDs func(ctx context.Context) ([]int, error)
	// Read reads one process; nil means Read. Tests replace it.
	Read func(pid int) (Memory, error)
	// Deliver, when set, is given each sample once it is taken, from Run's goroutine; it must
	// not block for long.
	Deliver func(*Sample)

	last atomic.Pointer[Sample]
	// wake carries Wake's requests to Run; one waiting is as good as many.
	wake     chan struct{}
	wakeOnce sync.Once
}

func (s *Sampler) wakeChan() chan struct{} {
	s.wakeOnce.Do(func() { s.wake = make(chan struct{}, 1) })
	return s.wake
}

// Wake asks for a sample before the next one is due: for processes the last sample does not
// hold yet, such as a worker just spawned. Run takes it MinGap after the last one at the
// earliest, so that callers may call Wake as often as they like. It never blocks.
func (s *Sampler) Wake() {
	if s == nil {
		return
	}
	select {
	case s.wakeChan() <- struct{}{}:
	default:
	}
}

// Last returns the last sample, or nil before the first (or of a nil Sampler). It is never
// modified.
func (s *Sampler) Last() *Sample {
	if s == nil {
		return nil
	}
	return s.last.Load()
}

// Run samples at once, then every Interval and when woken (Wake), until ctx ends. Call it
// once.
func (s *Sampler) Run(ctx context.Context) {
	interval := s.Interval
	if interval <= 0 {
		interval = DefaultInterval
	}
	wake := s.wakeChan()
	next := time.NewTimer(0)
	defer next.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-next.C:
		case <-wake:
			// Not before MinGap has passed since the last sample: the timer waits the rest.
			if last := s.Last(); last != nil {
				if wait := MinGap - time.Since(last.At); wait > 0 {
					next.Reset(min(wait, time.Until(last.At.Add(interval))))
					continue
				}
			}
		}
		s.sample(ctx)
		next.Reset(interval)
	}
}

// sample takes one sample, stores it as the last one and delivers it.
func (s *Sampler) sample(ctx context.Context) {
	pids, err := s.PIDs(ctx)
	if err != nil {
		return
	}
	read := s.Read
	if read == nil {
		read = Read
	}
	smp := &Sample{At: time.Now(), Processes: make(map[int]Memory, len(pids))}
	for _, pid := range pids {
		if m, err := read(pid); err == nil {
			smp.Processes[pid] = m
		}
	}
	smp.Took = time.Since(smp.At)
	s.last.Store(smp)
	if s.Deliver != nil {
		s.Deliver(smp)
	}
}
