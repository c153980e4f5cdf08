package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// This file holds the refork trigger that follows measured sharing (refork_on_decay): a worker
// forked from the template shares its pages until it writes them, and what it writes
// (Private_Dirty) grows as it serves, its own caches and garbage, so that memory the cluster
// could share is held n-1 times over. A refork forks the workers again from the template and wins
// that back, if the template holds what they built.
//
// The trigger measures the forked workers' Private_Dirty, summed, in the first sample taken after
// a rollout ended (the baseline), and starts an automatic refork when the sum has grown past the
// threshold (baseline + PrivateGrowth, or baseline x Ratio) in Confirm samples in a row, so that a
// burst of one request's garbage does not fire it. It never fires within MinInterval of the end of
// the last rollout. The refork is judged by the next baseline: one that did not win back at least
// half the growth that fired it is fruitless, and doubles the growth the next one waits for; after
// MaxFruitless fruitless reforks in a row the trigger stops, and says so, since reforking cannot
// help an app whose template does not hold what its workers build (that is when pitchfork's
// memory trigger looped). A reload or a hot restart (new code) starts the count afresh.

// DecayPolicy configures the trigger. Zero PrivateGrowth and Ratio both: invalid.
type DecayPolicy struct {
	// PrivateGrowth fires the trigger when the sum has grown by this many bytes; Ratio when it is
	// this many times the baseline (and at least minRatioGrowth per worker above it). Either or
	// both; zero is unset.
	PrivateGrowth uint64
	Ratio         float64
	// MinInterval is the least time from the end of a rollout to an automatic refork the trigger
	// starts.
	MinInterval time.Duration
	// Confirm is how many samples in a row must be over the threshold; 0 means 1.
	Confirm int
	// MaxFruitless is how many fruitless reforks in a row stop the trigger; 0 means 1.
	MaxFruitless int
}

// clonePolicy copies a policy, so that the machine's is its own.
func clonePolicy(p *DecayPolicy) *DecayPolicy {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}

// minRatioGrowth keeps a ratio from firing on a baseline near zero (workers that wrote nothing
// yet): the sum must also be this much per worker above the baseline.
const minRatioGrowth = 1 << 20

func (p *DecayPolicy) validate() error {
	switch {
	case p.PrivateGrowth == 0 && p.Ratio == 0:
		return errors.New("cluster: ReforkOnDecay needs PrivateGrowth or Ratio")
	case p.Ratio != 0 && !(p.Ratio > 1):
		return errors.New("cluster: ReforkOnDecay.Ratio must be above 1")
	case p.MinInterval <= 0:
		return errors.New("cluster: ReforkOnDecay.MinInterval must be positive")
	case p.Confirm < 0 || p.MaxFruitless < 0:
		return errors.New("cluster: ReforkOnDecay.Confirm and MaxFruitless must not be negative")
	}
	return nil
}

// decayTrigger is the trigger's state.
type decayTrigger struct {
	// measured: baseline holds the sum of n workers, taken at or after since (the end of the
	// last rollout, or the restore of a hot restart).
	measured bool
	baseline uint64
	n        int
	since    time.Time
	// current is the sum at the last complete sample, over the number of samples in a row past
	// the threshold.
	current uint64
	over    int
	// raises counts the doublings of the growth waited for (one per fruitless refork in a row);
	// fruitless counts those reforks, and stopped is set once they reach MaxFruitless.
	raises, fruitless int
	stopped           bool
	// fired: the trigger started the last refork, at firedSum of firedN workers, waiting for the
	// growth firedGrowth; the next baseline judges it.
	fired       bool
	firedSum    uint64
	firedN      int
	firedGrowth uint64
}

// DecayStatus is the trigger's state in a Status; Enabled false (and the rest zero) without a
// policy.
type DecayStatus struct {
	Enabled bool
	// Measured: Baseline is the forked workers' Private_Dirty, summed, right after the last
	// rollout; Current the same sum at the last sample; Threshold the sum that fires the trigger.
	Measured                     bool
	Baseline, Current, Threshold uint64
	Workers                      int
	Fruitless                    int
	Stopped                      bool
}

// Ratio is Current over Baseline, the figure the trigger watches; 0 when not measured.
func (s DecayStatus) Ratio() float64 {
	if !s.Measured || s.Baseline == 0 {
		return 0
	}
	return float64(s.Current) / float64(s.Baseline)
}

// DecayJudged records the trigger's verdict on a refork it started: Before was the sum that fired
// it, After the next baseline; a fruitless one raises the threshold (Stopped: the trigger stops).
type DecayJudged struct {
	Before, After uint64
	Fruitful      bool
	Stopped       bool
}

func (DecayJudged) isHappening() {}

// threshold is the sum that fires the trigger over baseline, for n workers, with the growth
// doubled raises times.
func (p *DecayPolicy) threshold(baseline uint64, n, raises int) uint64 {
	scale := uint64(1) << min(raises, 20)
	t := ^uint64(0)
	if p.PrivateGrowth > 0 {
		t = min(t, baseline+p.PrivateGrowth*scale)
	}
	if p.Ratio > 1 {
		grown := uint64(float64(baseline) * (p.Ratio - 1) * float64(scale))
		t = min(t, baseline+max(grown, uint64(n)*minRatioGrowth*scale))
	}
	return t
}

// decayCounted sums the Private_Dirty of the workers the trigger watches in a sample: the current,
// forked workers of the desired slots. It reports false unless every desired slot but the
// template's has a ready worker, and each of those forked is in the sample: a slot that respawns
// would lower the sum without a refork.
func (m *Machine) decayCounted(at time.Time) (sum uint64, n int, ok bool) {
	for _, s := range m.slots[:min(m.desired, len(m.slots))] {
		w := s.worker
		if s.index == 0 {
			continue
		}
		if w == nil || w.state != Ready || s.next != nil {
			return 0, 0, false
		}
		if !w.forked() {
			continue
		}
		if w.memory == nil || !w.memory.At.Equal(at) {
			return 0, 0, false
		}
		sum += w.memory.PrivateDirty
		n++
	}
	return sum, n, n > 0
}

// decaySampled judges a sample: it takes the baseline after a rollout, judges the refork that
// rollout was, and starts a refork when the sum has stayed past the threshold.
func (m *Machine) decaySampled(e MemorySampled) {
	p, d := m.cfg.ReforkOnDecay, &m.decay
	if p == nil || m.phase != PhaseRunning || m.template == nil || m.busy() || len(m.ops) > 0 || e.At.Before(d.since) {
		return
	}
	sum, n, ok := m.decayCounted(e.At)
	if !ok {
		return
	}
	d.current = sum
	if !d.measured || n != d.n {
		d.measured, d.baseline, d.n, d.over = true, sum, n, 0
		if d.fired {
			m.judgeDecayRefork(p, sum, n)
		}
		return
	}
	if d.stopped {
		return
	}
	threshold := p.threshold(d.baseline, n, d.raises)
	if sum < threshold {
		d.over = 0
		return
	}
	d.over++
	if d.over < max(p.Confirm, 1) || m.now.Sub(d.since) < p.MinInterval {
		return
	}
	m.log(slog.LevelInfo, fmt.Sprintf("the forked workers' private memory grew from %s to %s (refork_on_decay, threshold %s): automatic refork to generation %d",
		mib(d.baseline), mib(sum), mib(threshold), m.generation+1), slog.String("event", "refork-start"),
		slog.Int("generation", m.generation+1), slog.String("trigger", TriggerMemory))
	d.fired, d.firedSum, d.firedN, d.firedGrowth = true, sum, n, threshold-d.baseline
	m.opSeq++
	m.startRollout(&op{kind: KindRefork, seq: m.opSeq, automatic: true, trigger: TriggerMemory})
}

// judgeDecayRefork compares the baseline after a refork the trigger started, the sum of n
// workers, with the sum that fired it, per worker (a scale may have changed their number).
func (m *Machine) judgeDecayRefork(p *DecayPolicy, after uint64, n int) {
	d := &m.decay
	d.fired = false
	if n != d.firedN {
		after = after * uint64(d.firedN) / uint64(n)
	}
	wonBack := d.firedSum - min(after, d.firedSum)
	j := DecayJudged{Before: d.firedSum, After: after, Fruitful: 2*wonBack >= d.firedGrowth}
	if j.Fruitful {
		d.raises, d.fruitless = 0, 0
		m.log(slog.LevelInfo, fmt.Sprintf("refork_on_decay: the refork won back %s of private memory (%s -> %s)", mib(wonBack), mib(d.firedSum), mib(after)),
			slog.String("event", "decay-refork-fruitful"))
	} else {
		j.Stopped = m.decayFruitless(p)
		what := fmt.Sprintf("the next one waits for %s", mib(p.threshold(after, d.n, d.raises)))
		if j.Stopped {
			what = m.decayStopsBecause("the template does not hold what the workers build (readying it before it forks may help; refork_after still applies)")
		}
		m.log(slog.LevelWarn, fmt.Sprintf("refork_on_decay: the refork won back %s of private memory (%s -> %s), less than half the growth that started it; %s",
			mib(wonBack), mib(d.firedSum), mib(after), what), slog.String("event", "decay-refork-fruitless"))
	}
	m.record(j)
}

// decayReforkFailed judges a refork the trigger started that failed: it won nothing back, so it
// counts as fruitless. Judged on the next baseline instead, it would be compared with workers that
// the failure's respawns replaced, and a cluster whose reforks keep failing would refork forever.
func (m *Machine) decayReforkFailed() {
	p, d := m.cfg.ReforkOnDecay, &m.decay
	if p == nil || !d.fired {
		return
	}
	d.fired = false
	j := DecayJudged{Before: d.firedSum, Stopped: m.decayFruitless(p)}
	what := "the next one waits for twice the growth"
	if j.Stopped {
		what = m.decayStopsBecause("its reforks fail")
	}
	m.log(slog.LevelWarn, "refork_on_decay: the refork it started failed, which wins nothing back; "+what,
		slog.String("event", "decay-refork-fruitless"))
	m.record(j)
}

// decayFruitless counts a fruitless refork: the growth waited for doubles, and the trigger stops
// after MaxFruitless in a row. It reports whether the trigger stopped.
func (m *Machine) decayFruitless(p *DecayPolicy) bool {
	d := &m.decay
	d.raises++
	d.fruitless++
	d.stopped = d.fruitless >= max(p.MaxFruitless, 1)
	return d.stopped
}

// decayStopsBecause says that the trigger stops, and why.
func (m *Machine) decayStopsBecause(why string) string {
	return fmt.Sprintf("the trigger stops after %d such reforks in a row (until the next reload or hot restart): %s", m.decay.fruitless, why)
}

// decayRolloutStarted forgets the baseline: the workers are being replaced. New code (a reload, a
// hot restart's phased restart) starts the trigger afresh; another refork does not, and the
// trigger's own refork is still judged after it.
func (m *Machine) decayRolloutStarted(o *op) {
	d := &m.decay
	d.measured, d.over = false, 0
	if o.kind != KindRefork {
		d.fired, d.raises, d.fruitless, d.stopped = false, 0, 0, false
	}
}

// decayStatus describes the trigger.
func (m *Machine) decayStatus() DecayStatus {
	p, d := m.cfg.ReforkOnDecay, m.decay
	if p == nil {
		return DecayStatus{}
	}
	st := DecayStatus{Enabled: true, Measured: d.measured, Fruitless: d.fruitless, Stopped: d.stopped}
	if d.measured {
		st.Baseline, st.Current, st.Workers = d.baseline, d.current, d.n
		st.Threshold = p.threshold(d.baseline, d.n, d.raises)
	}
	return st
}

// mib formats bytes in MiB, for the log.
func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
