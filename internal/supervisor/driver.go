package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/activation"
	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/protocol"
	"github.com/forkd/forkd/pkg/shim"
)

// Generation is what a generation of workers is made from: the machine's config and how to start
// the app.
type Generation struct {
	Machine cluster.Config
	// Command is the application's argv; it is started through the activation shim.
	Command []string
	// Directory is the workers' working directory. Its symlinks are resolved when the generation
	// is made (at start, at each reload), so a deploy that switches a current -> releases/N symlink
	// takes effect with the next reload, for every worker of that generation alike. Empty: forkd's
	// own.
	Directory string
	// Env is added to the environment workers inherit from forkd; an entry here wins over forkd's.
	Env map[string]string
	// Warnings are changes in the config that a reload cannot apply (listeners, the control
	// socket): they are logged.
	Warnings []string
}

// DriverConfig is what the driver needs to run a cluster.
type DriverConfig struct {
	// Generation is the first generation's config.
	Generation
	// Reconfigure loads the config again for a reload (phased restart). An error, such as an
	// invalid config, fails the reload and changes nothing. Nil: reloads reuse the first
	// generation's config.
	Reconfigure func() (Generation, error)
	// Listeners are handed to every worker as fds 3, 4, ...
	Listeners []activation.Listener
	// Notify says where the workers' notify sockets (NOTIFY_SOCKET) go.
	Notify NotifyConfig
	// Systemd sends a state string to systemd's NOTIFY_SOCKET; nil when not under systemd.
	Systemd func(state string) error
	// Watchdog is how often the master pings systemd's watchdog (WATCHDOG=1); zero disables it.
	Watchdog time.Duration
	Logger   *slog.Logger
	// Name is forkd's instance name, for hooks (FORKD_NAME).
	Name string
	// WorkerOutput opens a worker's own stdout and stderr, such as a journal stream under the
	// worker's own identifier; nil (or a failure, logged) gives workers forkd's own.
	WorkerOutput func(slot int) (out *os.File, journalStream string, err error)

	// Self is the path of forkd's binary, which a hot restart execs in place: a new build installed
	// there is what takes over. Empty disables hot restart. Argv is the new image's command line.
	Self string
	Argv []string
	// PreflightCheck is what the new binary runs (after Self) to check the config before a hot
	// restart, such as "check FILE"; nil skips the check.
	PreflightCheck []string
	// HandoverExtra returns what the rest of the master hands its new image in a hot restart: a
	// payload for Handover.Extra and the descriptors it needs kept open.
	HandoverExtra func() (any, []int)
	// Adopt is the previous image's handover after a hot restart: the driver restores the cluster
	// from it and adopts the running workers, then replaces them by a phased restart.
	Adopt *Handover
	// Observer, when set, is told what happened in the cluster as the machine records it.
	Observer Observer
}

// Observer is told, in order and from the driver's loop, what the machine records (cluster.Record):
// a worker spawned, ready or exited and why, a rollout started or ended, datagrams dropped. At is
// when the event that led to it was stepped. Metrics and an event stream hang off it; it must not
// block, and changes nothing in what the cluster does.
type Observer interface {
	Observe(at time.Time, what cluster.Happening)
}

// ObserverFunc makes a function an Observer.
type ObserverFunc func(at time.Time, what cluster.Happening)

// Observe calls f.
func (f ObserverFunc) Observe(at time.Time, what cluster.Happening) { f(at, what) }

// housekeepingInterval is how often the loop looks for orphans and emptied stray groups.
const housekeepingInterval = time.Second

// Driver is the imperative shell around Machine: it owns the real processes, pidfds, signals, the
// notify socket and the timer, and turns them into events; it carries out the machine's actions.
// One goroutine (Run) owns the machine; other goroutines reach it through requests carrying their
// reply channel.
type Driver struct {
	cfg      DriverConfig
	m        *cluster.Machine
	log      *slog.Logger
	procs    map[cluster.WorkerID]*process
	channels channels
	notify   notifyState
	// specs holds what workers are spawned from, by the handle the machine's configs name;
	// lastSpec is the last handle given.
	specs    map[cluster.SpecHandle]*spec
	lastSpec cluster.SpecHandle
	spawner  *spawner
	devNull  *os.File
	baseEnv  []string
	requests chan request
	stopSigs int
	// strays holds a pidfd for each stray reported to the machine (driver_tree.go): the orphan's,
	// or for a group the pidfd of its exited leader, which names the group.
	strays map[strayKey]int
	// childrenUnreadable: listing the master's children failed, and the log said so once.
	childrenUnreadable bool
	// lastRan is when the loop last ran, to notice a stall of forkd itself.
	lastRan time.Time
	// x carries the machine's batches out, through the driver's seams (seams.go).
	x *Executor

	helpers      map[int]*helper
	helperEvents chan helperEvent
	// adopted: this image took the cluster over from the previous one.
	adopted bool
}

// spec is how workers are started: the app's command, in a directory, with an environment.
type spec struct {
	command []string
	dir     string
	env     map[string]string
}

func newSpec(g Generation) (*spec, error) {
	dir := g.Directory
	if dir != "" {
		resolved, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return nil, fmt.Errorf("cluster: directory: %w", err)
		}
		dir = resolved
	}
	return &spec{command: g.Command, dir: dir, env: g.Env}, nil
}

// register keeps sp under a new handle, which cfg names from now on.
func (d *Driver) register(sp *spec, cfg *cluster.Config) {
	d.lastSpec++
	d.specs[d.lastSpec] = sp
	cfg.Spec = d.lastSpec
}

// process is a worker's live process, tracked by pidfd so that signals never reach a recycled PID.
// A worker the template forks has no PID until its hello or the template's reply.
type process struct {
	pid   int
	pidfd int
	// conn is the master's end of the worker's control channel (fork-worker mode), or nil.
	conn *protocol.Conn
	// forked: the template forked it, so it inherited worker 0's output, until stdio.
	forked bool
	// ownGroup: a forked worker seen leading a process group of its own (its SDK's setpgid).
	ownGroup bool
	slot     int
	// notify is its NOTIFY_SOCKET: its own, or the template's that forked it.
	notify *notifySocket
}

// close releases what the driver holds for a process that is gone.
func (p *process) close() {
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
	if p.conn != nil {
		p.conn.Close()
	}
	p.notify.release()
	p.notify = nil
}

// request is a call from another goroutine into the loop: an event to step, or (with ev nil) a
// status query or a kinship query (driver_peers.go).
type request struct {
	ev      cluster.Event
	status  chan cluster.Status
	kinship *kinshipQuery
	reply   chan cluster.Reply
	// early answers as soon as the event has been stepped: with the machine's reply if it came at
	// once (a refusal), else with success, and the rest is only logged.
	early bool
}

// NewDriver prepares a driver; nothing runs until Run.
func NewDriver(cfg DriverConfig) (*Driver, error) {
	if len(cfg.Generation.Command) == 0 {
		return nil, errors.New("cluster: no command")
	}
	first, err := newSpec(cfg.Generation)
	if err != nil {
		return nil, err
	}
	devNull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &Driver{
		cfg:      cfg,
		log:      cfg.Logger,
		procs:    make(map[cluster.WorkerID]*process),
		channels: newChannels(),
		notify:   newNotifyState(cfg.Logger),
		specs:    map[cluster.SpecHandle]*spec{},
		devNull:  devNull,
		baseEnv:  inheritedEnv(os.Environ()),
		requests: make(chan request),
		strays:   make(map[strayKey]int),

		helpers:      make(map[int]*helper),
		helperEvents: make(chan helperEvent, 16),
	}
	machine := cfg.Machine
	d.register(first, &machine)
	if d.m, err = cluster.NewMachine(machine); err != nil {
		return nil, err
	}
	if cfg.Adopt != nil {
		if err := d.adopt(cfg.Adopt); err != nil {
			return nil, err
		}
	} else if err := d.notify.prepare(cfg.Notify); err != nil {
		return nil, err
	}
	d.x = NewExecutor(d.m, seams{d}, time.Now, d.log, cfg.Observer)
	return d, nil
}

// Run starts the workers and supervises them until the cluster has stopped (after a Stop command,
// SIGTERM, SIGINT or SIGQUIT) or ctx is cancelled (which stops the cluster immediately). It
// returns the exit code the master should exit with.
func (d *Driver) Run(ctx context.Context) (int, error) {
	// As a subreaper, the master inherits every orphan of its subtree: workers' double-forked
	// children in fork-worker mode, daemonized helpers. It reaps them all.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return 1, fmt.Errorf("cluster: become a subreaper: %w", err)
	}
	d.spawner = spawnerFor()
	defer d.spawner.stop()

	sigc := make(chan os.Signal, 64)
	signal.Notify(sigc, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT,
		syscall.SIGTTIN, syscall.SIGTTOU, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2,
		syscall.SIGURG, syscall.SIGPIPE)
	defer signal.Stop(sigc)

	defer d.notify.cleanup()

	var watchdog <-chan time.Time
	if d.cfg.Watchdog > 0 {
		t := time.NewTicker(d.cfg.Watchdog)
		defer t.Stop()
		watchdog = t.C
	}
	controls := make(chan controlMessage, 64)
	d.channels.out = controls

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	// Orphans come to the master without a signal (a worker's child exits, leaving its own
	// children), and a stray group empties without one: the driver looks for both every second.
	housekeeping := time.NewTicker(housekeepingInterval)
	defer housekeeping.Stop()

	if d.adopted {
		for id, p := range d.procs {
			if p.conn != nil {
				d.channels.read(id, p.conn)
			}
		}
		d.step(cluster.Adopted{}) // the machine decides what follows: a phased restart, or nothing
		d.reap()                  // children that exited during the exec
	} else {
		d.step(cluster.Start{})
	}
	done := ctx.Done()
	for d.m.Phase() != cluster.PhaseStopped {
		if next, ok := d.m.NextDeadline(); ok {
			timer.Reset(time.Until(next))
		} else {
			timer.Stop()
		}
		var handle func()
		select {
		case sig := <-sigc:
			handle = func() { d.handleSignal(sig.(syscall.Signal)) }
		case dg := <-d.notify.datagrams:
			handle = func() { d.handleDatagram(dg) }
		case <-d.notify.wake:
			handle = d.stepDrops
		case cm := <-controls:
			handle = func() { d.handleControl(cm) }
		case e := <-d.helperEvents:
			handle = func() { d.handleHelperEvent(e) }
		case r := <-d.requests:
			handle = func() { d.handleRequest(r) }
		case <-timer.C:
			handle = func() {
				d.drainInputs(sigc, controls)
				d.step(cluster.Tick{})
			}
		case <-watchdog:
			handle = func() { d.step(cluster.WatchdogDue{}) }
		case <-housekeeping.C:
			handle = func() {
				d.stepDrops()
				d.checkStrayGroups()
				d.findOrphans()
			}
		case <-done:
			done = nil
			handle = func() {
				d.log.Warn("context cancelled: stopping immediately")
				d.step(cluster.Stop{Immediate: true})
			}
		}
		// A stall of forkd is told to the machine before anything learned on waking is.
		d.noticeStall()
		handle()
		d.noticeStall()
		d.x.Flush() // what the seams learned from the loop's own inputs (a helper's exit)
	}
	code, _ := d.x.ExitCode()
	return code, nil
}

// stallThreshold: the loop runs at least once per housekeepingInterval, so a longer gap between
// two moments it ran means forkd itself did not run (SIGSTOP, a frozen VM, CPU starvation).
const stallThreshold = 2 * housekeepingInterval

// noticeStall steps Stalled when the loop has not run for longer than stallThreshold. The whole
// gap counts, including the part the loop may have spent waiting: it errs in the workers' favour,
// by at most a housekeeping interval.
func (d *Driver) noticeStall() {
	now := time.Now()
	if gap := now.Sub(d.lastRan); !d.lastRan.IsZero() && gap > stallThreshold {
		d.step(cluster.Stalled{For: gap})
	}
	d.lastRan = now
}

// Bounds of drainInputs: a flood must not hold a Tick back for long.
const (
	maxDrain      = 1024
	drainDuration = 100 * time.Millisecond
)

// drainInputs handles what has arrived before a Tick judges the deadlines: a heartbeat waiting in
// the notify socket (or in the goroutine that reads it), a SIGCHLD, a template's reply, so that a
// deadline is never judged on a message that came in time but was not read yet.
func (d *Driver) drainInputs(sigc <-chan os.Signal, controls <-chan controlMessage) {
	end := time.Now().Add(drainDuration)
	for range maxDrain {
		select {
		case sig := <-sigc:
			d.handleSignal(sig.(syscall.Signal))
			continue
		case dg := <-d.notify.datagrams:
			d.handleDatagram(dg)
			continue
		case cm := <-controls:
			d.handleControl(cm)
			continue
		default:
		}
		if !d.notify.pending() {
			return
		}
		// A reading goroutine has it, or is about to.
		wait := time.NewTimer(time.Until(end))
		select {
		case dg := <-d.notify.datagrams:
			wait.Stop()
			d.handleDatagram(dg)
		case <-wait.C:
			return
		}
	}
}

// step steps an input of the loop, between batches (Executor.Step).
func (d *Driver) step(ev cluster.Event) { d.x.Step(ev) }

// learn queues what a seam learned while carrying an action out, for after the batch.
func (d *Driver) learn(ev cluster.Event) { d.x.Learn(ev) }

func (d *Driver) spawn(a cluster.SpawnWorker) {
	sp := d.specs[a.Spec]
	if sp == nil {
		d.learn(cluster.SpawnFailed{Worker: a.Worker, Err: fmt.Sprintf("cluster: no spec %d to spawn from (a bug)", a.Spec)})
		return
	}
	files := []uintptr{d.devNull.Fd(), uintptr(syscall.Stdout), uintptr(syscall.Stderr)}
	files = append(files, activation.WorkerFiles(d.cfg.Listeners)...)
	// A worker that may become the template shares its socket with the workers it forks.
	ns, err := d.notify.open(a.Worker, a.Channel)
	if err != nil {
		d.learn(cluster.SpawnFailed{Worker: a.Worker, Err: err.Error()})
		return
	}
	env := d.workerEnv(sp, a.Slot, a.Generation, a.Heartbeat, ns.sock.Addr())
	if out, stream := d.workerOutput(a.Slot); out != nil {
		defer out.Close()
		files[1], files[2] = out.Fd(), out.Fd()
		if stream != "" {
			env = append(env, "JOURNAL_STREAM="+stream)
		}
	}
	var conn *protocol.Conn
	if a.Channel {
		var workerEnd int
		conn, workerEnd, err = protocol.Socketpair()
		if err != nil {
			ns.release()
			d.learn(cluster.SpawnFailed{Worker: a.Worker, Err: err.Error()})
			return
		}
		defer unix.Close(workerEnd)
		env = append(env, fmt.Sprintf("%s=%d", protocol.EnvControlFD, len(files)))
		files = append(files, uintptr(workerEnd))
	}
	pidfd := -1
	attr := &syscall.ProcAttr{
		Dir:   sp.dir,
		Env:   env,
		Files: files,
		Sys: &syscall.SysProcAttr{
			// Its own process group: a Ctrl-C on forkd's terminal reaches the master only, which
			// then drains the workers instead of having them all die at once.
			Setpgid: true,
			// If the master dies without draining (SIGKILL, crash), workers get SIGTERM from the
			// kernel. The spawner's thread outlives even a hot restart's exec (spawner.go), so
			// this fires only when the master dies.
			Pdeathsig: syscall.SIGTERM,
			PidFD:     &pidfd,
		},
	}
	pid, err := d.spawner.start("/proc/self/exe", shim.Argv("/proc/self/exe", sp.command), attr)
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		ns.release()
		d.learn(cluster.SpawnFailed{Worker: a.Worker, Err: describeSpawnError(err)})
		return
	}
	if pidfd < 0 {
		// Kernels before 5.3 have no CLONE_PIDFD; forkd needs pidfds to signal safely.
		pidfd, err = unix.PidfdOpen(pid, 0)
		if err != nil {
			d.log.Error("cannot open a pidfd for a worker", "pid", pid, "error", err)
		}
	}
	d.procs[a.Worker] = &process{pid: pid, pidfd: pidfd, conn: conn, notify: ns}
	if conn != nil {
		d.channels.read(a.Worker, conn)
	}
	d.learn(cluster.Spawned{Worker: a.Worker, PID: pid})
}

// signal signals a worker's tree: its process group (driver_tree.go).
func (d *Driver) signal(a cluster.SignalWorker) {
	p, ok := d.procs[a.Worker]
	if !ok || p.pid != a.PID {
		return
	}
	if err := d.signalTree(p.pid, p.pidfd, a.Signal); err != nil && !errors.Is(err, unix.ESRCH) {
		d.log.Error("cannot signal worker", "pid", p.pid, "signal", a.Signal.String(), "error", err)
	}
}

// reap collects every exited child, workers and orphans alike, so forkd can be a container's PID 1.
// What an exited process leaves behind (the rest of its process group, its children, now the
// master's) is reported as strays before its exit, so the machine never counts a cluster as stopped
// while part of a worker's tree runs.
func (d *Driver) reap() {
	var exits []cluster.Exited
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			break
		}
		if !ws.Exited() && !ws.Signaled() {
			continue
		}
		st := cluster.ExitStatusFromWait(syscall.WaitStatus(ws))
		if d.helperExited(pid, st) {
			continue
		}
		if id, ok := d.m.WorkerByPID(pid); ok {
			if p := d.procs[id]; p != nil && p.pid == pid {
				if d.groupOutlives(pid, p.pidfd) {
					p.pidfd = -1 // it names the stray group now
				}
				p.close()
				delete(d.procs, id)
			}
		} else if pidfd, ok := d.strays[strayKey{pid: pid}]; ok {
			delete(d.strays, strayKey{pid: pid})
			if !d.groupOutlives(pid, pidfd) {
				unix.Close(pidfd)
			}
		}
		exits = append(exits, cluster.Exited{PID: pid, Status: st})
	}
	d.checkStrayGroups()
	d.findOrphans()
	for _, e := range exits {
		d.step(e)
	}
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
	if r.ev == nil {
		r.status <- d.m.Status()
		return
	}
	ev := r.ev
	var id cluster.RequestID
	if r.reply != nil {
		id = d.expectReply(func(a cluster.Reply) { r.reply <- a })
		switch e := ev.(type) {
		case cluster.Stop:
			e.Request = id
			ev = e
		case cluster.Scale:
			e.Request = id
			ev = e
		case cluster.Refork:
			e.Request = id
			ev = e
		case cluster.Reload:
			e.Request = id
			ev = e
		case cluster.Restart:
			e.Request = id
			ev = e
		}
	}
	d.step(ev)
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
func (d *Driver) call(ctx context.Context, ev cluster.Event) (cluster.Reply, error) {
	reply := make(chan cluster.Reply, 1)
	select {
	case d.requests <- request{ev: ev, reply: reply}:
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
func (d *Driver) rollout(ctx context.Context, ev cluster.Event, wait bool) error {
	c := make(chan cluster.Reply, 1)
	select {
	case d.requests <- request{ev: ev, reply: c, early: !wait}:
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

// loadConfig loads the config again for a reload and registers the spec of its workers, and
// steps ConfigLoaded: the machine decides whether the reload begins.
func (d *Driver) loadConfig() {
	g := d.cfg.Generation
	if d.cfg.Reconfigure != nil {
		var err error
		if g, err = d.cfg.Reconfigure(); err != nil {
			d.learn(cluster.ConfigLoaded{Err: fmt.Errorf("%w: %v", cluster.ErrBadConfig, err)})
			return
		}
	}
	sp, err := newSpec(g)
	if err != nil {
		d.learn(cluster.ConfigLoaded{Err: fmt.Errorf("%w: %v", cluster.ErrBadConfig, err)})
		return
	}
	cfg := g.Machine
	d.register(sp, &cfg)
	d.learn(cluster.ConfigLoaded{Config: &cfg, Warnings: g.Warnings})
}

// workerEnv is the environment of a new worker: forkd's own minus what belongs to forkd and
// systemd, the config's env, then the protocol variables, which nothing overrides.
func (d *Driver) workerEnv(sp *spec, slot, generation int, heartbeat time.Duration, notifySocket string) []string {
	env := make([]string, 0, len(d.baseEnv)+len(sp.env)+8)
	for _, kv := range d.baseEnv {
		if k, _, _ := strings.Cut(kv, "="); sp.env != nil {
			if _, overridden := sp.env[k]; overridden {
				continue
			}
		}
		env = append(env, kv)
	}
	for k, v := range sp.env {
		if isProtocolVar(k) {
			continue
		}
		env = append(env, k+"="+v)
	}
	env = append(env, activation.WorkerEnv(d.cfg.Listeners)...)
	env = append(env,
		"NOTIFY_SOCKET="+notifySocket,
		protocol.EnvProtocol+"="+strconv.Itoa(protocol.Version),
		protocol.EnvWorker+"="+strconv.Itoa(slot),
		protocol.EnvGeneration+"="+strconv.Itoa(generation),
	)
	if heartbeat > 0 {
		env = append(env, "WATCHDOG_USEC="+strconv.FormatInt(heartbeat.Microseconds(), 10))
	}
	return env
}

// workerOutput opens a worker's own output, if forkd gives workers one: (nil, "") means forkd's.
func (d *Driver) workerOutput(slot int) (*os.File, string) {
	if d.cfg.WorkerOutput == nil {
		return nil, ""
	}
	out, stream, err := d.cfg.WorkerOutput(slot)
	if err != nil {
		d.log.Warn(fmt.Sprintf("worker %d writes to forkd's own output: %v", slot, err), "event", "worker-output", "worker", slot)
		return nil, ""
	}
	return out, stream
}

// isProtocolVar names the variables forkd sets for each worker (sd_listen_fds(3), sd_notify(3) and
// its own), and those systemd sets for forkd itself that do not describe a worker (FDSTORE), which
// neither forkd's environment nor the config may pass through.
func isProtocolVar(key string) bool {
	switch key {
	case "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
		"FDSTORE":
		return true
	}
	return strings.HasPrefix(key, "FORKD_")
}

// inheritedEnv filters forkd's environment down to what workers inherit.
func inheritedEnv(environ []string) []string {
	var env []string
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if isProtocolVar(k) {
			continue
		}
		if k == "GODEBUG" {
			// The master runs with async preemption off (see cmd/forkd); workers get the
			// GODEBUG forkd was started with.
			v = strings.TrimSuffix(strings.TrimSuffix(v, "asyncpreemptoff=1"), ",")
			if v == "" {
				continue
			}
			kv = k + "=" + v
		}
		env = append(env, kv)
	}
	return env
}
