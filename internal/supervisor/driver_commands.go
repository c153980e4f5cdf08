package supervisor

import (
	"context"
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/cluster"
)

// This file holds the driver's commands: signals forkd receives, and the requests other
// goroutines (the control API) make, each stepped into the machine from the loop with the Reply
// going back to its caller.

// request is a call from another goroutine into the loop: an event to step, or (with ev nil) a
// status query or a kinship query (driver_peers.go).
type request struct {
	ev cluster.Event
	// cmd is stepped carrying the RequestID whose Reply goes to reply.
	cmd     cluster.Command
	status  chan cluster.Status
	kinship *kinshipQuery
	reply   chan cluster.Reply
	// early answers as soon as the event has been stepped: with the machine's reply if it came at
	// once (a refusal), else with success, and the rest is only logged.
	early bool
}

func (d *Driver) handleSignal(sig syscall.Signal) {
	switch sig {
	case syscall.SIGCHLD:
		d.reap()
	case syscall.SIGTERM, syscall.SIGINT:
		d.stopSigs++
		immediate := d.stopSigs > 1
		d.log.Info(fmt.Sprintf("received %s", unix.SignalName(sig)), "event", "signal", "immediate", immediate)
		d.step(cluster.Stop{Immediate: immediate})
	case syscall.SIGHUP, syscall.SIGUSR1:
		d.log.Info(fmt.Sprintf("received %s: reload (phased restart)", unix.SignalName(sig)), "event", "signal")
		d.step(cluster.Reload{Request: d.expectReply(func(r cluster.Reply) {
			if r.Err != nil {
				d.log.Warn(fmt.Sprintf("%s: reload failed: %v", unix.SignalName(sig), r.Err), "event", "signal")
			}
		})})
	case syscall.SIGUSR2:
		d.log.Info("received SIGUSR2: hot restart (the workers are replaced after the exec)", "event", "signal")
		d.step(cluster.Restart{Request: d.expectReply(func(r cluster.Reply) {
			if r.Err != nil {
				d.log.Warn("SIGUSR2: hot restart failed: "+r.Err.Error(), "event", "signal")
			}
		})})
	case syscall.SIGQUIT:
		d.log.Info("received SIGQUIT: stopping immediately", "event", "signal")
		d.step(cluster.Stop{Immediate: true})
	case syscall.SIGTTIN, syscall.SIGTTOU:
		delta := 1
		if sig == syscall.SIGTTOU {
			delta = -1
		}
		id := d.expectReply(func(r cluster.Reply) {
			if r.Err != nil {
				d.log.Warn(fmt.Sprintf("%s ignored: %v", unix.SignalName(sig), r.Err), "event", "signal")
			}
		})
		d.step(cluster.Scale{Request: id, Delta: delta})
	case syscall.SIGURG:
		d.log.Info("received SIGURG: refork", "event", "signal")
		id := d.expectReply(func(r cluster.Reply) {
			if r.Err != nil {
				d.log.Warn("SIGURG: refork failed: "+r.Err.Error(), "event", "signal")
			}
		})
		d.step(cluster.Refork{Request: id})
	case syscall.SIGPIPE:
		// forkd's stdout or stderr went away; writes fail with EPIPE instead of killing the master.
	default:
		d.log.Info(fmt.Sprintf("received %s: not supported yet, ignored", unix.SignalName(sig)), "event", "signal")
	}
}

func (d *Driver) handleRequest(r request) {
	if r.kinship != nil {
		d.answerKinship(r.kinship)
		return
	}
	if r.ev == nil && r.cmd == nil {
		r.status <- d.m.Status()
		return
	}
	if r.cmd == nil {
		d.step(r.ev)
		return
	}
	id := d.expectReply(func(a cluster.Reply) { r.reply <- a })
	d.step(r.cmd.WithRequest(id))
	if d.x.Awaiting(id) && r.early {
		d.x.Forget(id)
		r.reply <- cluster.Reply{}
	}
}

// expectReply allocates a RequestID whose Reply goes to answer.
func (d *Driver) expectReply(answer func(cluster.Reply)) cluster.RequestID { return d.x.Expect(answer) }

func (d *Driver) notifySystemd(state string) {
	if d.cfg.Systemd == nil {
		return
	}
	if strings.HasPrefix(state, "RELOADING=1") {
		// Type=notify-reload (systemd 253+) wants the reload's start on CLOCK_MONOTONIC.
		var ts unix.Timespec
		if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) == nil {
			state += fmt.Sprintf("\nMONOTONIC_USEC=%d", ts.Nano()/1000)
		}
	}
	if err := d.cfg.Systemd(state); err != nil {
		d.log.Warn("cannot notify systemd", "error", err)
	}
}

// call sends an event into the loop and waits for its Reply, or for ctx.
func (d *Driver) call(ctx context.Context, cmd cluster.Command) (cluster.Reply, error) {
	reply := make(chan cluster.Reply, 1)
	select {
	case d.requests <- request{cmd: cmd, reply: reply}:
	case <-ctx.Done():
		return cluster.Reply{}, ctx.Err()
	}
	select {
	case r := <-reply:
		return r, nil
	case <-ctx.Done():
		return cluster.Reply{}, ctx.Err()
	}
}

// Status returns a snapshot of the cluster. It fails only with ctx.
func (d *Driver) Status(ctx context.Context) (cluster.Status, error) {
	c := make(chan cluster.Status, 1)
	select {
	case d.requests <- request{status: c}:
	case <-ctx.Done():
		return cluster.Status{}, ctx.Err()
	}
	select {
	case st := <-c:
		return st, nil
	case <-ctx.Done():
		return cluster.Status{}, ctx.Err()
	}
}

// Stop stops the cluster. With wait it returns once every worker has exited, just before Run
// returns; otherwise once the stop has begun.
func (d *Driver) Stop(ctx context.Context, immediate, wait bool) error {
	if !wait {
		select {
		case d.requests <- request{ev: cluster.Stop{Immediate: immediate}}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r, err := d.call(ctx, cluster.Stop{Immediate: immediate})
	if err != nil {
		return err
	}
	return r.Err
}

// Scale changes the number of workers: to workers when non-zero, else by delta.
func (d *Driver) Scale(ctx context.Context, workers, delta int) (cluster.ScaleResult, error) {
	r, err := d.call(ctx, cluster.Scale{Workers: workers, Delta: delta})
	if err != nil {
		return cluster.ScaleResult{}, err
	}
	if r.Err != nil {
		return cluster.ScaleResult{}, r.Err
	}
	return r.Result.(cluster.ScaleResult), nil
}

// Refork re-forks workers 1..n-1 from the template. With wait it returns when the refork has ended
// (its old workers gone) or failed (with the reason); otherwise once it has begun, or been queued
// behind the operation in progress.
func (d *Driver) Refork(ctx context.Context, wait bool) error {
	return d.rollout(ctx, cluster.Refork{}, wait)
}

// Reload is a phased restart from the config loaded again when it begins: every worker is replaced
// by one of the next generation. With wait it returns when the reload has ended (its old workers
// gone) or failed (with the reason); otherwise once it has begun, or been queued behind the
// operation in progress. An invalid config fails it and changes nothing.
func (d *Driver) Reload(ctx context.Context, wait bool) error {
	return d.rollout(ctx, cluster.Reload{}, wait)
}

// rollout starts a rollout and waits for its end, or only for its start (the machine refuses at
// once a rollout it cannot start).
func (d *Driver) rollout(ctx context.Context, cmd cluster.Command, wait bool) error {
	c := make(chan cluster.Reply, 1)
	select {
	case d.requests <- request{cmd: cmd, reply: c, early: !wait}:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case r := <-c:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}
