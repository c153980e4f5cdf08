package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/forkd/forkd/internal/cgroup"
	"github.com/forkd/forkd/internal/memsample"
	"github.com/forkd/forkd/internal/supervisor"
	"github.com/forkd/forkd/internal/version"
	"github.com/forkd/forkd/pkg/activation"
	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/config"
	"github.com/forkd/forkd/pkg/control"
	"github.com/forkd/forkd/pkg/restart"
)

// backend serves the control API from the driver, adding what only the master knows.
type backend struct {
	driver    *supervisor.Driver
	cfg       *config.Config
	startedAt time.Time
	listeners []activation.Listener
	activated bool
	events    *control.EventHub
	// cgroups is the status's line about the workers' cgroups; workerCgroups are they (nil:
	// none).
	cgroups       string
	workerCgroups *cgroup.Set
	// memory samples the workers' memory, which the status reports from its last sample.
	memory *memsample.Sampler
}

func (b *backend) Status(ctx context.Context) (control.Status, error) {
	st, err := b.driver.Status(ctx)
	if err != nil {
		return control.Status{}, err
	}
	now := time.Now()
	out := control.Status{
		Name:                 b.cfg.Name,
		Version:              version.String(),
		MasterPID:            os.Getpid(),
		StartedAt:            b.startedAt,
		Uptime:               control.Duration(now.Sub(b.startedAt).Round(time.Second)),
		Phase:                st.Phase.String(),
		Rollout:              rolloutKind(st.Rollout),
		Generation:           st.Generation,
		Workers:              st.Desired,
		Ready:                st.Ready,
		Mode:                 control.ModeExec,
		SocketActivated:      b.activated,
		DroppedNotifications: st.Dropped,
		LateNotifications:    st.Late,
		Strays:               st.Strays,
		StatusLine:           st.StatusLine,
		Cgroups:              b.cgroups,
	}
	if b.cfg.Memory.KSM {
		out.KSM = "on"
		if problem := memsample.KSMProblem(); problem != "" {
			out.KSM = "on, merging nothing: " + problem
		}
	}
	if st.Rollout != cluster.NoRollout && st.Phase == cluster.PhaseRunning {
		out.Phase = control.PhaseRolling
	}
	for _, k := range st.Queued {
		out.Queued = append(out.Queued, rolloutKind(k))
	}
	if l := st.LastRollout; l.Seq != 0 {
		out.LastRollout = &control.RolloutResult{Seq: l.Seq, Kind: rolloutKind(l.Kind), Generation: l.Generation, Target: l.Target}
		if l.Err != nil {
			out.LastRollout.Error = strings.TrimPrefix(l.Err.Error(), "cluster: ")
		}
	}
	if st.Forking {
		out.Mode = control.ModeFork
	}
	if d := st.Decay; d.Enabled {
		out.ReforkOnDecay = &control.DecayTrigger{Measured: d.Measured, Baseline: d.Baseline, Current: d.Current, Ratio: d.Ratio(),
			Threshold: d.Threshold, Workers: d.Workers, Fruitless: d.Fruitless, Stopped: d.Stopped}
	}
	if w := st.WarmUp; w != nil {
		out.WarmUp = &control.WarmUp{Index: w.Slot, PID: w.PID, Served: w.Served, Requests: w.Requests, Until: w.Until, IdleUntil: w.IdleUntil, Mold: w.Mold}
	}
	if h := st.HeapSize; h != nil {
		out.HeapSize = &control.HeapSize{Variable: h.Variable, Value: h.Value, Generation: h.Generation, Carried: st.HeapSizeCarried}
	}
	for _, l := range b.listeners {
		out.Listeners = append(out.Listeners, control.Listener{Name: l.Name, Address: l.Network + "://" + l.Address})
	}
	sample := b.memory.Last()
	if sample != nil {
		out.MemorySampledAt = sample.At
	}
	for _, w := range st.Workers {
		cw := control.Worker{
			Index:       w.Index,
			PID:         w.PID,
			Generation:  w.Generation,
			State:       w.State,
			Restarts:    w.Restarts,
			StatusLine:  w.StatusLine,
			Requests:    w.Requests,
			BusyThreads: w.Busy,
			LastExit:    w.LastExit,
			NextRestart: w.NextSpawn,
			Template:    w.Template,
			Forked:      w.Forked,
			NonServing:  w.NonServing,
			Replacement: w.Replacement,
			Detached:    w.Detached,
		}
		if s := w.Source; s != nil {
			cw.MoldOf = &control.MoldSource{Index: s.Slot, PID: s.PID, Requests: s.Requests}
		}
		if w.PID != 0 {
			cw.StartedAt = w.SpawnedAt
			cw.Uptime = control.Duration(now.Sub(w.SpawnedAt).Round(time.Second))
			m, ok := sample.Of(w.PID, w.SpawnedAt)
			if ok {
				cw.Memory = &control.Memory{RSS: m.RSS, PSS: m.PSS, Shared: m.Shared, PrivateDirty: m.PrivateDirty}
				if k := m.KSM; k != nil {
					cw.Memory.KSM = &control.KSM{MergingPages: k.MergingPages, RmapItems: k.RmapItems, Profit: k.Profit, MergeAny: k.MergeAny}
				}
			}
			if !ok || !w.ReadyAt.IsZero() && sample.At.Before(w.ReadyAt) {
				// A process the sampler has not seen yet, or not since it loaded the app.
				b.memory.Wake()
			}
			cw.Cgroup = b.cgroupMemory(w.ID)
		}
		out.WorkerList = append(out.WorkerList, cw)
	}
	return out, nil
}

// cgroupMemory reads the memory of worker id's cgroup: two small files, no need to sample them.
func (b *backend) cgroupMemory(id cluster.WorkerID) *control.CgroupMemory {
	if b.workerCgroups == nil {
		return nil
	}
	m, ok := b.workerCgroups.Memory(uint64(id))
	if !ok {
		return nil
	}
	return &control.CgroupMemory{Current: m.Current, Anon: m.Anon, File: m.File, Shmem: m.Shmem, Kernel: m.Kernel}
}

// IsWorker tells the control server whether a connecting process runs the app's code.
func (b *backend) IsWorker(ctx context.Context, pid int) (bool, string, error) {
	k, err := b.driver.Kinship(ctx, pid)
	return k.Worker, k.Reason, err
}

func (b *backend) Stop(ctx context.Context, req control.StopRequest) error {
	return controlError(b.driver.Stop(ctx, req.Immediate, req.Wait))
}

func (b *backend) Scale(ctx context.Context, req control.ScaleRequest) (control.ScaleResponse, error) {
	r, err := b.driver.Scale(ctx, req.Workers, req.Delta)
	if err != nil {
		return control.ScaleResponse{}, controlError(err)
	}
	return control.ScaleResponse{Workers: r.Workers, Previous: r.Previous}, nil
}

func (b *backend) Refork(ctx context.Context, req control.ReforkRequest) (control.ReforkResponse, error) {
	err := b.driver.Refork(ctx, req.Wait)
	if err != nil {
		return control.ReforkResponse{}, controlError(err)
	}
	st, err := b.driver.Status(ctx)
	return control.ReforkResponse{Generation: st.Generation, Queued: queuedBehind(st, req.Wait, cluster.KindRefork)}, err
}

func (b *backend) Reload(ctx context.Context, req control.ReloadRequest) (control.ReloadResponse, error) {
	if err := b.driver.Reload(ctx, req.Wait); err != nil {
		return control.ReloadResponse{}, controlError(err)
	}
	st, err := b.driver.Status(ctx)
	return control.ReloadResponse{Generation: st.Generation, Queued: queuedBehind(st, req.Wait, cluster.KindReload)}, err
}

// queuedBehind names the operation in progress when a command that did not wait left one of kind
// queued, or returns "" when it began.
func queuedBehind(st cluster.Status, wait bool, kind cluster.RolloutKind) string {
	if wait || !slices.Contains(st.Queued, kind) {
		return ""
	}
	if st.Rollout != cluster.NoRollout {
		return rolloutKind(st.Rollout)
	}
	return rolloutKind(st.Queued[0])
}

// rolloutKind is the control API's name for a kind of rollout: the one place the two meet.
func rolloutKind(k cluster.RolloutKind) string {
	switch k {
	case cluster.KindRefork:
		return control.RolloutRefork
	case cluster.KindReload:
		return control.RolloutReload
	case cluster.KindRestart:
		return control.RolloutRestart
	}
	return ""
}

func (b *backend) Restart(ctx context.Context, req control.RestartRequest) (control.RestartResponse, error) {
	if err := b.driver.Restart(ctx, req.Wait, req.KeepWorkers); err != nil {
		return control.RestartResponse{}, controlError(err)
	}
	st, err := b.driver.Status(ctx)
	return control.RestartResponse{Generation: st.Generation}, err
}

// Events streams the cluster's events, which the log's records make (events.go).
func (b *backend) Events(ctx context.Context, req control.EventsRequest) (<-chan control.Event, error) {
	return b.events.Subscribe(ctx, req)
}

// controlError gives the cluster's errors their API status codes.
func controlError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cluster.ErrStopping):
		return control.ErrStopping
	case errors.Is(err, cluster.ErrScaleRange):
		return &control.Error{Code: http.StatusBadRequest, Message: strings.TrimPrefix(err.Error(), "cluster: ")}
	case errors.Is(err, cluster.ErrNotReady):
		// "not ready" says nothing the rest of the message does not say better.
		return &control.Error{Code: http.StatusConflict, Message: strings.TrimPrefix(err.Error(), cluster.ErrNotReady.Error()+": ")}
	case errors.Is(err, cluster.ErrBusy):
		return &control.Error{Code: http.StatusConflict, Message: strings.TrimPrefix(err.Error(), "cluster: ")}
	case errors.Is(err, restart.ErrIncompatible):
		return &control.Error{Code: http.StatusConflict, Message: strings.TrimPrefix(err.Error(), "restart: ")}
	case errors.Is(err, cluster.ErrBadConfig):
		return &control.Error{Code: http.StatusUnprocessableEntity, Message: strings.TrimPrefix(err.Error(), "cluster: ")}
	case errors.Is(err, cluster.ErrRolloutFailed):
		return &control.Error{Code: http.StatusInternalServerError, Message: strings.TrimPrefix(err.Error(), "cluster: ")}
	}
	return err
}
