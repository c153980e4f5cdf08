package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/cgroup"
	"github.com/forkd/forkd/pkg/activation"
	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/protocol"
)

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
	// Cgroups are the workers' cgroups (driver_cgroup.go); nil runs the workers without.
	Cgroups *cgroup.Set
}

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
	// priority is what the driver lowered for reforks (driver_priority.go).
	priority priorityState
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

	if d.lastRan.IsZero() {
		d.lastRan = time.Now() // a stall before the loop first wakes counts too (adopt sets it earlier)
	}
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
				d.cgroupSweep()
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
	d.cgroupsDone()
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
	if gap := now.Sub(d.lastRan); gap > stallThreshold {
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
