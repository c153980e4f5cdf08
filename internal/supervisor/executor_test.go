package supervisor

import (
	"strings"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/cluster"
)

// recorder is a set of seams that starts every worker at once, and remembers what systemd heard.
type recorder struct {
	x       *Executor
	lastPID int
	status  string
	// reenter makes Spawn step the machine itself, as the old driver did.
	reenter bool
}

func (r *recorder) Spawn(a cluster.SpawnWorker) {
	r.lastPID++
	ev := cluster.Spawned{Worker: a.Worker, PID: r.lastPID}
	if r.reenter {
		r.x.Step(ev)
		return
	}
	r.x.Learn(ev)
}
func (r *recorder) CancelSpawn(cluster.WorkerID)      {}
func (r *recorder) Control(cluster.Action)            {}
func (r *recorder) Signal(cluster.SignalWorker)       {}
func (r *recorder) SignalStray(cluster.SignalStray)   {}
func (r *recorder) Priority(cluster.SetPriority)      {}
func (r *recorder) RunHook(cluster.RunHook)           {}
func (r *recorder) LoadConfig(cluster.LoadConfig)     {}
func (r *recorder) ReleaseSpec(cluster.SpecHandle)    {}
func (r *recorder) CheckRestart(cluster.CheckRestart) {}
func (r *recorder) Exec(cluster.ExecRestart)          {}
func (r *recorder) Systemd(state string) {
	if _, status, ok := strings.Cut(state, "STATUS="); ok {
		r.status = status
	}
}

func newRecorder(t *testing.T, cfg cluster.Config) *recorder {
	t.Helper()
	m, err := cluster.NewMachine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	now := simEpoch
	r.x = NewExecutor(m, r, func() time.Time { return now }, discard, nil)
	return r
}

var startedConfig = cluster.Config{Workers: 2, MaxWorkers: 4, ReadyOnStart: true, BootTimeout: time.Second,
	BackoffMin: time.Second, BackoffMax: time.Second, ResetAfter: time.Second, MaxSurge: 1, Spec: 1}

// With readiness = "started", a worker is ready when it is spawned, which the executor learns while
// it carries out the batch that announced "starting: 0/2 workers ready". That is stepped after
// the batch, so the last STATUS systemd hears is the cluster's own (issue 13's stale STATUS).
func TestLastStatusIsTheMachinesWithReadinessStarted(t *testing.T) {
	r := newRecorder(t, startedConfig)
	r.x.Step(cluster.Start{})
	st := r.x.Machine().Status()
	if st.Ready != 2 || r.status != st.StatusLine || r.status != "2/2 workers ready, generation 1" {
		t.Fatalf("systemd's last STATUS %q, the machine's %q (%d ready)", r.status, st.StatusLine, st.Ready)
	}
}

// A seam that steps the machine while a batch is carried out is a bug the executor refuses.
func TestStepDuringABatchPanics(t *testing.T) {
	r := newRecorder(t, startedConfig)
	r.reenter = true
	defer func() {
		if recover() == nil {
			t.Fatal("a Step from a seam did not panic")
		}
	}()
	r.x.Step(cluster.Start{})
}
