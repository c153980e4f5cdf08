package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/fds"
	"github.com/forkd/forkd/pkg/activation"
	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/notify"
	"github.com/forkd/forkd/pkg/protocol"
	"github.com/forkd/forkd/pkg/restart"
)

// This file holds the hot restart: the master execs a new image of itself in place (same PID, so
// systemd's MAINPID, the subreaper flag and every worker's parent stay), handing it the cluster's
// state and its descriptors, and the new image adopts the workers, then replaces them by a phased
// restart.
//
// What happens when something fails:
//   - the new binary cannot take over (it does not run, speaks another handover version, or finds
//     the config invalid): the restart is refused before the exec; nothing changed;
//   - the exec itself fails: the old image goes on as before, its descriptors as they were;
//   - the new image cannot read the handover: it exits with status 1; the workers, whose parent
//     died, get SIGTERM (Pdeathsig) and drain; systemd restarts the service (Restart=on-failure),
//     and the listening sockets, if systemd owns them, never close.
//   - the new image's phased restart fails (the new config's workers do not become ready): the
//     adopted workers keep serving, as for any failed reload, and LastRollout says so.
//
// A hot restart with KeepWorkers only upgrades the master: the new image adopts the workers and
// keeps them as they are, for a new forkd binary without a new release of the app.

// Handover is what the master hands its new image in a hot restart.
type Handover struct {
	Version   int
	Machine   cluster.State
	Config    cluster.Config
	Specs     map[cluster.SpecHandle]SpecRecord
	Listeners []activation.Listener
	// NotifyDir is the master's directory of notify sockets, NotifyPrefix the start of their
	// abstract addresses (one of them is empty).
	NotifyDir, NotifyPrefix string
	Procs                   []ProcRecord
	// Strays are the strays being stopped (their state is in Machine), with their pidfds.
	Strays []StrayProcRecord
	// Extra is the part of the master outside the driver (cmd/forkd's), opaque here.
	Extra json.RawMessage
}

// SpecRecord is how workers are started, in a Handover. KSM is optional: a handover from a
// master that did not write it is read as off, which is what that master's spec said when its
// handover dropped it.
type SpecRecord struct {
	Command []string
	Dir     string
	Env     map[string]string
	KSM     bool `json:",omitempty"`
}

// ProcRecord is a worker's process in a Handover: its pidfd, its control channel (-1: none), and
// its notify socket (-1: none), which records of workers forked from the same template share.
type ProcRecord struct {
	Worker        cluster.WorkerID
	PID           int
	PIDFD, ConnFD int
	Notify        NotifyRecord
}

// NotifyRecord is a notify socket in a Handover.
type NotifyRecord struct {
	FD     int
	Addr   string
	Owner  cluster.WorkerID
	Shared bool
}

// StrayProcRecord is a stray's pidfd in a Handover: the orphan's, or a group's exited leader's.
type StrayProcRecord struct {
	PID   int
	Group bool
	PIDFD int
}

// Restart is a hot restart: the master execs the binary at DriverConfig.Self in place, and the new
// image replaces the workers by a phased restart, or keeps them (keepWorkers). Without wait it
// returns once the restart has begun (or been queued behind an operation in progress), or at once
// when it cannot; with wait, its answer comes only if the restart fails before the exec: the exec
// cuts every connection, and the caller learns the outcome from the new image's status
// (control.Client.Restart does).
func (d *Driver) Restart(ctx context.Context, wait, keepWorkers bool) error {
	return d.rollout(ctx, cluster.Restart{KeepWorkers: keepWorkers}, wait)
}

// checkRestart carries out the machine's CheckRestart: it asks the new binary which handover it
// reads, then has it check the config, as the master's own helper processes, without blocking the
// loop, and steps RestartChecked with the outcome.
func (d *Driver) checkRestart(keepWorkers bool) {
	done := func(err error) { d.learn(cluster.RestartChecked{Err: err}) }
	if d.cfg.Self == "" {
		done(fmt.Errorf("%w: hot restart is not available (forkd does not know its own binary)", cluster.ErrNotReady))
		return
	}
	env := inheritedEnv(os.Environ())
	err := d.runHelper("the new forkd binary", []string{d.cfg.Self, restart.HandoverVersionArg}, env, 10*time.Second,
		func(st cluster.ExitStatus, out string) {
			if !st.Success() || strings.TrimSpace(out) != strconv.Itoa(restart.Version) {
				done(fmt.Errorf("%w: %s %s: %s: %s", restart.ErrIncompatible, d.cfg.Self, restart.HandoverVersionArg,
					st, strings.TrimSpace(out)))
				return
			}
			if d.cfg.PreflightCheck == nil {
				done(nil)
				return
			}
			argv := append([]string{d.cfg.Self}, d.cfg.PreflightCheck...)
			if err := d.runHelper("the config check", argv, env, 30*time.Second, func(st cluster.ExitStatus, out string) {
				if !st.Success() {
					done(fmt.Errorf("%w: the new binary finds the config invalid: %s", cluster.ErrBadConfig, strings.TrimSpace(out)))
					return
				}
				done(nil)
			}); err != nil {
				done(err)
			}
		})
	if err != nil {
		done(err)
	}
}

// execRestart hands the machine's state and the driver's descriptors over, and execs the new
// image. It returns only if the exec failed, having put everything back, and steps ExecFailed.
func (d *Driver) execRestart(a cluster.ExecRestart) {
	fail := func(err error) { d.learn(cluster.ExecFailed{Err: err}) }
	h := Handover{
		Version: restart.Version, Machine: a.State, Config: d.m.Config(), Specs: map[cluster.SpecHandle]SpecRecord{},
		Listeners: d.cfg.Listeners, NotifyDir: d.notify.dir, NotifyPrefix: d.notify.prefix,
	}
	for handle, sp := range d.specs {
		h.Specs[handle] = SpecRecord{Command: sp.command, Dir: sp.dir, Env: sp.env, KSM: sp.ksm}
	}
	var keep []int
	for _, l := range d.cfg.Listeners {
		keep = append(keep, l.FD)
	}
	for id, p := range d.procs {
		r := ProcRecord{Worker: id, PID: p.pid, PIDFD: p.pidfd, ConnFD: -1, Notify: NotifyRecord{FD: -1}}
		var err error
		if p.conn != nil {
			if r.ConnFD, err = p.conn.FD(); err != nil {
				fail(fmt.Errorf("cluster: hot restart: %w", err))
				return
			}
		}
		if ns := p.notify; ns != nil {
			r.Notify = NotifyRecord{Addr: ns.sock.Addr(), Owner: ns.owner, Shared: ns.shared}
			if r.Notify.FD, err = ns.sock.FD(); err != nil {
				fail(fmt.Errorf("cluster: hot restart: %w", err))
				return
			}
		}
		h.Procs = append(h.Procs, r)
		keep = append(keep, r.PIDFD, r.ConnFD, r.Notify.FD)
	}
	for k, pidfd := range d.strays {
		h.Strays = append(h.Strays, StrayProcRecord{PID: k.pid, Group: k.group, PIDFD: pidfd})
		keep = append(keep, pidfd)
	}
	if d.cfg.HandoverExtra != nil {
		extra, extraFDs := d.cfg.HandoverExtra()
		var err error
		if h.Extra, err = json.Marshal(extra); err != nil {
			fail(fmt.Errorf("cluster: hot restart: %w", err))
			return
		}
		keep = append(keep, extraFDs...)
	}
	memfd, env, err := restart.Send(h)
	if err != nil {
		fail(err)
		return
	}
	restore, err := fds.Inherit(keep)
	if err != nil {
		unix.Close(memfd)
		fail(err)
		return
	}
	environ := []string{env}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, restart.EnvHandoverFD+"=") {
			environ = append(environ, kv)
		}
	}
	err = d.spawner.exec(d.cfg.Self, d.cfg.Argv, environ)
	// Still here: the exec failed, and this image goes on.
	restore()
	unix.Close(memfd)
	fail(fmt.Errorf("cluster: exec %s: %w", d.cfg.Self, err))
}

// adopt restores the cluster from the previous image's handover.
func (d *Driver) adopt(h *Handover) error {
	if h.Version != restart.Version {
		return fmt.Errorf("%w: handover version %d, this build reads %d", restart.ErrIncompatible, h.Version, restart.Version)
	}
	// The systemd block is this image's: a hot restart applies it.
	h.Config.WatchdogMinReady = d.cfg.Machine.WatchdogMinReady
	now := time.Now()
	m, err := cluster.Restore(h.Config, h.Machine, now)
	if err != nil {
		return err
	}
	d.m = m
	// The restored deadlines count from now, and so does the stall rule: a stall before this
	// image's loop first wakes would otherwise pass for time the workers did not report in.
	d.lastRan = now
	d.specs = map[cluster.SpecHandle]*spec{}
	for handle, r := range h.Specs {
		d.specs[handle] = &spec{command: r.Command, dir: r.Dir, env: r.Env, ksm: r.KSM}
		d.lastSpec = max(d.lastSpec, handle)
	}
	if d.specs[h.Config.Spec] == nil {
		return fmt.Errorf("cluster: the handover has no spec for its config (%d)", h.Config.Spec)
	}
	d.notify.dir, d.notify.prefix = h.NotifyDir, h.NotifyPrefix
	sockets := map[int]*notifySocket{}
	for _, r := range h.Procs {
		unix.CloseOnExec(r.PIDFD)
		p := &process{pid: r.PID, pidfd: r.PIDFD}
		if r.ConnFD >= 0 {
			unix.CloseOnExec(r.ConnFD)
			if p.conn, err = protocol.NewConn(r.ConnFD); err != nil {
				return err
			}
		}
		if n := r.Notify; n.FD >= 0 {
			if ns := sockets[n.FD]; ns != nil {
				ns.share()
				p.notify = ns
			} else {
				sock, err := notify.FromFD(n.FD, n.Addr)
				if err != nil {
					return err
				}
				p.notify = d.notify.adopt(sock, n.Owner, n.Shared, 1)
				sockets[n.FD] = p.notify
			}
		}
		d.procs[r.Worker] = p
	}
	for _, r := range h.Strays {
		unix.CloseOnExec(r.PIDFD)
		d.strays[strayKey{pid: r.PID, group: r.Group}] = r.PIDFD
	}
	d.adopted = true
	return nil
}
