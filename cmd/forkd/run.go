package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/forkd/forkd/internal/fds"
	"github.com/forkd/forkd/internal/memsample"
	"github.com/forkd/forkd/internal/supervisor"
	"github.com/forkd/forkd/internal/version"
	"github.com/forkd/forkd/pkg/activation"
	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/config"
	"github.com/forkd/forkd/pkg/control"
	"github.com/forkd/forkd/pkg/logging"
	"github.com/forkd/forkd/pkg/notify"
	"github.com/forkd/forkd/pkg/restart"
)

// handoverExtra is what the master, outside the driver, hands its new image in a hot restart.
type handoverExtra struct {
	// Config is the config in effect, which the new image keeps if the file no longer loads.
	Config    *config.Config
	ControlFD int
	StartedAt time.Time
	Activated bool
	// Events is the control API's event stream: what it remembers, and the rollout in progress.
	Events *eventsHandover `json:"events,omitempty"`
}

// run is the master: it returns an *exitError for every way it ends.
func run(flags config.Flags) error {
	if err := disableAsyncPreemption(); err != nil {
		return &exitError{1, err}
	}
	// After a hot restart, the previous image of this process handed over the cluster.
	var adopt *supervisor.Handover
	var extra handoverExtra
	var h supervisor.Handover
	if handed, err := restart.Receive(&h); err != nil {
		return &exitError{1, fmt.Errorf("hot restart: %w", err)}
	} else if handed {
		if err := json.Unmarshal(h.Extra, &extra); err != nil || extra.Config == nil {
			return &exitError{1, fmt.Errorf("hot restart: the handover lacks the master's part: %v", err)}
		}
		adopt = &h
	}
	reserveThreads()
	cfg, err := config.Load(flags)
	if err != nil && adopt != nil {
		// Keep serving with the config in effect; the phased restart that follows reports the
		// problem again.
		fmt.Fprintf(os.Stderr, "forkd: hot restart: the config no longer loads, keeping the one in effect: %v\n", err)
		cfg, err = extra.Config, nil
	}
	if err != nil {
		var diags *config.DiagnosticsError
		if errors.As(err, &diags) {
			diags.WriteTo(os.Stderr)
			return &exitError{code: config.ExitConfig}
		}
		return &exitError{config.ExitConfig, err}
	}
	identifier := logging.DefaultIdentifier
	if cfg.Name != "forkd" {
		identifier = "forkd@" + cfg.Name
	}
	logOptions := logging.Options{Level: cfg.Log.Level, Format: cfg.Log.Format, Identifier: identifier}
	logger, err := logging.New(logOptions, os.Stderr)
	if err != nil {
		return &exitError{config.ExitConfig, err}
	}
	// The control API's events come from the machine's records and the log's (events.go).
	events := newEventTranslator(control.NewEventHub())
	logger = slog.New(newEventHandler(logger.Handler(), events))
	// Under journald, each worker writes to a journal stream of its own, so that its output is
	// found under its own identifier.
	var workerOutput func(int) (*os.File, string, error)
	if logging.ToJournal(logOptions, os.Stderr) {
		workerOutput = func(slot int) (*os.File, string, error) {
			f, err := logging.JournalStream(fmt.Sprintf("%s-worker-%d", cfg.Name, slot), 6)
			if err != nil {
				return nil, "", err
			}
			id, _ := logging.StreamID(f)
			return f, id, nil
		}
	}
	code, err := supervise(cfg, flags, logger, events, workerOutput, adopt, extra)
	if err != nil {
		// Once, through the log (which is stderr, or the journal that stderr goes to), without
		// the prefix of the package that failed: it is the operator's sentence.
		logger.Error(startupMessage(err), "event", "master-failed")
		return &exitError{code: 1}
	}
	return &exitError{code: code}
}

func supervise(cfg *config.Config, flags config.Flags, logger *slog.Logger, events *eventTranslator,
	workerOutput func(int) (*os.File, string, error), adopt *supervisor.Handover, extra handoverExtra) (int, error) {
	// Whatever started forkd may have leaked descriptors without close-on-exec; none of them may
	// reach a worker. The listeners are passed explicitly, by position. (After a hot restart, this
	// also closes the handed-over descriptors on the next exec again.)
	fds.CloseOnExecFrom(3)
	startedAt, activated := time.Now(), false
	var listeners []activation.Listener
	var ctl net.Listener
	var err error
	if adopt != nil {
		startedAt, activated, listeners = extra.StartedAt, extra.Activated, adopt.Listeners
		events.restore(extra.Events)
		// FileListener dups the descriptor; closing the *os.File, not the number, closes the
		// original exactly once (a bare close would leave the File's finalizer to close the
		// number again later, by then another descriptor: a worker's pidfd, say).
		f := os.NewFile(uintptr(extra.ControlFD), "control")
		ctl, err = net.FileListener(f)
		f.Close()
		if err != nil {
			return 1, fmt.Errorf("hot restart: control socket: %w", err)
		}
	} else {
		if listeners, activated, err = activation.Open(cfg.Listeners); err != nil {
			return 1, err
		}
		if activated {
			checkActivated(cfg.Listeners, listeners, logger)
		} else {
			storeListeners(cfg.Systemd.FDStore, listeners, logger)
		}
		if ctl, err = control.Listen(cfg.Control.Socket); err != nil {
			return 1, controlSocketError(cfg, err)
		}
	}
	defer activation.CloseAll(listeners)
	defer os.Remove(cfg.Control.Socket)
	ctlFD, err := listenerFD(ctl)
	if err != nil {
		return 1, err
	}
	self, err := os.Executable()
	if err != nil {
		logger.Warn("hot restart unavailable: cannot find forkd's own binary: "+err.Error(), "event", "restart-unavailable")
		self = ""
	}
	var preflight []string
	if cfg.File != "" {
		preflight = []string{"check", cfg.File}
	}

	var systemd func(string) error
	if os.Getenv("NOTIFY_SOCKET") != "" {
		systemd = func(state string) error {
			_, err := daemon.SdNotify(false, state)
			return err
		}
	}
	var watchdog time.Duration
	if interval, err := daemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		watchdog = interval / 2
	}

	// Before any worker exists: the master moves itself into a leaf of its cgroup.
	tree, cgroupsLine, err := openCgroups(cfg.Cgroups, logger)
	if err != nil {
		return 1, err
	}
	cgroups := workerCgroups(tree, cfg.Cgroups, adopt)

	observed := newObservability(cfg)
	driver, err := supervisor.NewDriver(supervisor.DriverConfig{
		Generation: generation(cfg),
		Reconfigure: func() (supervisor.Generation, error) {
			g, next, err := reconfigure(cfg, flags)
			if err == nil && cgroups != nil {
				// The limits of the workers spawned from now on: the reload's.
				cgroups.SetLimits(cgroupLimits(tree, next.Cgroups))
			}
			return g, err
		},
		Listeners:      listeners,
		Notify:         supervisor.NotifyConfig{Dir: cfg.Notify.Directory, Abstract: cfg.Notify.Abstract},
		Systemd:        systemd,
		Watchdog:       watchdog,
		Logger:         logger,
		Name:           cfg.Name,
		WorkerOutput:   workerOutput,
		Self:           self,
		Argv:           os.Args,
		PreflightCheck: preflight,
		HandoverExtra: func() (any, []int) {
			return handoverExtra{Config: cfg, ControlFD: ctlFD, StartedAt: startedAt, Activated: activated,
				Events: events.handover(os.Getpid())}, []int{ctlFD}
		},
		Adopt: adopt,
		// The events stream, then the metrics (metrics.go).
		Observer: observers{events, observed},
		Cgroups:  cgroups,
	})
	if err != nil {
		return 1, err
	}

	var addrs []string
	for _, l := range listeners {
		addrs = append(addrs, l.String())
	}
	what := fmt.Sprintf("%s starting %d workers of %q", version.String(), cfg.Workers, strings.Join(cfg.Command, " "))
	if adopt != nil {
		what = fmt.Sprintf("%s taking over %s after a hot restart", version.String(), plural(len(adopt.Procs), "worker"))
	}
	logger.Info(what, "event", "master-starting", "pid", os.Getpid(), "listeners", strings.Join(addrs, ", "),
		"socket_activated", activated, "control_socket", cfg.Control.Socket)

	if cfg.Memory.KSM {
		// Once, before the first worker: the workers still run, opted in, and merge as soon as
		// ksmd is started.
		if problem := memsample.KSMProblem(); problem != "" {
			logger.Warn(problem, "event", "ksm-unavailable")
		}
	}

	b := &backend{driver: driver, cfg: cfg, startedAt: startedAt, listeners: listeners, activated: activated, events: events.hub,
		cgroups: cgroupsLine, workerCgroups: cgroups}
	// The memory samples reach the machine's memory policies too, until the driver stops.
	delivering, stopDelivering := context.WithCancel(context.Background())
	defer stopDelivering()
	observed.memory.Deliver = deliverSamples(delivering, driver)
	serveMetricsOption, err := observed.start(cfg, b, logger, adopt != nil)
	if err != nil {
		return 1, err
	}
	defer observed.Close()
	srv := control.NewServer(b, logger, control.WithWorkers(b, control.WorkerAccess(cfg.Control.WorkerAccess)), serveMetricsOption)
	go srv.Serve(ctl)

	code, err := driver.Run(context.Background())
	stopDelivering()
	// Let replies in flight (a stop --wait) reach their clients before the master exits.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	events.hub.Close()
	logger.Info("forkd exiting", "event", "master-exit", "code", code)
	return code, err
}

// startupMessage is err as the operator reads it: without the failing package's prefix, and with
// what to do about a port in use.
func startupMessage(err error) string {
	msg := err.Error()
	for _, prefix := range []string{"activation: ", "control: ", "notify: ", "cluster: "} {
		msg = strings.TrimPrefix(msg, prefix)
	}
	if errors.Is(err, syscall.EADDRINUSE) && strings.Contains(msg, "tcp") {
		msg += " (another process listens there: ss -ltnp shows which)"
	}
	return msg
}

// controlSocketError says what to do when another forkd answers on the control socket: name this
// one apart.
func controlSocketError(cfg *config.Config, err error) error {
	if !errors.Is(err, control.ErrAlreadyRunning) || cfg.Control.Socket != config.DefaultControlSocket(cfg.Name) {
		return err
	}
	if cfg.File == "" {
		return fmt.Errorf("another forkd already runs as instance %q (control socket %s): give this one a name of its own with --name NAME, and reach it with forkctl --name NAME",
			cfg.Name, cfg.Control.Socket)
	}
	return fmt.Errorf("another forkd already runs as instance %q (control socket %s): is this config already running? If not, set name (or control.socket) in %s",
		cfg.Name, cfg.Control.Socket, cfg.File)
}

// generation is the part of cfg that makes a generation of workers.
func generation(cfg *config.Config) supervisor.Generation {
	machine := cluster.Config{
		Workers:          cfg.Workers,
		MaxWorkers:       config.MaxWorkers,
		ReadyOnStart:     cfg.Readiness == config.ReadyOnStart,
		BootTimeout:      cfg.Timeouts.Boot,
		HeartbeatTimeout: cfg.Timeouts.Worker,
		ShutdownTimeout:  cfg.Timeouts.Shutdown,
		BackoffMin:       cfg.Restart.BackoffMin,
		BackoffMax:       cfg.Restart.BackoffMax,
		ResetAfter:       cfg.Restart.ResetAfter,
		MaxSurge:         cfg.Rollout.MaxSurge,
		MaxUnavailable:   cfg.Rollout.MaxUnavailable,
		WatchdogMinReady: cfg.Systemd.WatchdogMinReady,
		Recycle: cluster.RecyclePolicy{MaxRequests: uint64(cfg.Recycle.MaxRequests), MaxRequestsJitter: uint64(cfg.Recycle.MaxRequestsJitter),
			MaxPrivate: cfg.Recycle.MaxPrivate, MinLifetime: cfg.Recycle.MinLifetime},
		Hooks: cluster.Hooks{BeforeReload: cfg.Hooks.BeforeReload, AfterReload: cfg.Hooks.AfterReload,
			BeforeRestart: cfg.Hooks.BeforeRestart, OnWorkerCrash: cfg.Hooks.OnWorkerCrash, Timeout: cfg.Hooks.Timeout},
	}
	if cfg.File == "" {
		// Quick mode: the operator wrote flags, so advice names flags.
		machine.Settings = cluster.SettingNames{ReadyOnNotify: "--readiness notify", ReadyOnStart: "--readiness started",
			ForkWorker: "--fork-worker"}
	}
	if fw := cfg.ForkWorker; fw != nil {
		machine.ForkWorker = true
		machine.ForkTimeout = fw.Timeout
		machine.Mold = fw.ReforkFrom == config.ReforkFromWarmest
		machine.ReforkNice = fw.ReforkNice
		machine.CarryHeapSize = fw.CarryHeapSize
		machine.ReforkAfter, machine.ReforkAfterRepeats = fw.ReforkAfter, fw.ReforkAfterRepeats
		if w := fw.WarmUp; w != nil {
			machine.WarmUp = cluster.WarmUp{Requests: uint64(w.Requests), MaxWait: w.MaxWait}
		}
		if p := fw.ReforkOnDecay; p != nil {
			machine.ReforkOnDecay = &cluster.DecayPolicy{PrivateGrowth: p.PrivateGrowth, Ratio: p.Ratio, MinInterval: p.MinInterval,
				Confirm: config.DecayConfirmSamples, MaxFruitless: p.MaxFruitless}
		}
	}
	return supervisor.Generation{Machine: machine, Command: cfg.Command, Directory: cfg.Directory, Env: cfg.Env,
		KSM: cfg.Memory.KSM}
}

// reconfigure loads the config again for a reload, from the same file and flags as at start. What
// a reload cannot change (the listeners, the control socket) is reported, not applied.
func reconfigure(running *config.Config, flags config.Flags) (supervisor.Generation, *config.Config, error) {
	cfg, err := config.Load(flags)
	if err != nil {
		var diags *config.DiagnosticsError
		if errors.As(err, &diags) {
			// One line, with every problem, for the log and for forkctl alike; the check shows
			// their source lines.
			return supervisor.Generation{}, nil, fmt.Errorf("%s (forkctl check %s shows each with its source line)",
				strings.Join(diags.Problems(), "; "), diags.File)
		}
		return supervisor.Generation{}, nil, err
	}
	g := generation(cfg)
	// The systemd block needs a new master, as the listeners do; so does memory (metrics.go).
	g.Machine.WatchdogMinReady = running.Systemd.WatchdogMinReady
	g.KSM = running.Memory.KSM
	if !slices.Equal(cfg.Listeners, running.Listeners) {
		g.Warnings = append(g.Warnings, "the listen blocks changed: the sockets stay as they are until forkd is restarted (systemctl restart)")
	}
	if cfg.Notify != running.Notify {
		g.Warnings = append(g.Warnings, "the notify block changed: the workers' notify sockets stay as they are until forkd is restarted")
	}
	if cfg.Control.Socket != running.Control.Socket {
		g.Warnings = append(g.Warnings, "control.socket changed: it stays "+running.Control.Socket+" until forkd is restarted")
	}
	if cfg.Control.WorkerAccess != running.Control.WorkerAccess {
		g.Warnings = append(g.Warnings, fmt.Sprintf("control.worker_access changed: it stays %q until forkd is restarted (forkctl restart)",
			running.Control.WorkerAccess))
	}
	if cfg.Cgroups.Mode != running.Cgroups.Mode {
		g.Warnings = append(g.Warnings, fmt.Sprintf("cgroups.mode changed: it stays %q until forkd is restarted (systemctl restart)", running.Cgroups.Mode))
	}
	g.Warnings = append(g.Warnings, masterSettingsChanged(cfg, running)...)
	if cfg.Log != running.Log || cfg.Name != running.Name {
		g.Warnings = append(g.Warnings, "name and log settings take effect when forkd is restarted")
	}
	return g, cfg, nil
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// storeListeners offers the sockets forkd bound to systemd's file descriptor store: if the unit has
// FileDescriptorStoreMax=, systemd keeps them across a crash or a restart of forkd and passes them
// back (LISTEN_FDS), so the listening socket never closes and clients queue in its backlog
// meanwhile. systemd 254 and later set $FDSTORE when the store is enabled; earlier versions say
// nothing, so there fd_store = "yes" is needed (an offer to a disabled store makes systemd warn).
func storeListeners(mode string, listeners []activation.Listener, logger *slog.Logger) {
	addr := os.Getenv("NOTIFY_SOCKET")
	max, _ := strconv.Atoi(os.Getenv("FDSTORE"))
	if addr == "" || len(listeners) == 0 || mode == config.FDStoreNo || (mode == config.FDStoreAuto && max <= 0) {
		return
	}
	for _, l := range listeners {
		if err := notify.SendFDs(addr, "FDSTORE=1\nFDNAME="+l.Name, []int{l.FD}); err != nil {
			logger.Warn("cannot store the listening socket with systemd: "+err.Error(), "event", "fdstore", "listener", l.Name)
			return
		}
	}
	logger.Info(fmt.Sprintf("offered %s to systemd's fd store (kept if the unit has FileDescriptorStoreMax=)",
		plural(len(listeners), "listening socket")), "event", "fdstore")
}

// checkActivated warns when the sockets systemd passed (from a socket unit, or back from the fd
// store) are not what the listen blocks say: they win, and a changed address in the config would
// otherwise be ignored silently.
func checkActivated(want []config.Listener, got []activation.Listener, logger *slog.Logger) {
	if len(want) == 0 {
		return
	}
	byName := map[string]activation.Listener{}
	for _, l := range got {
		byName[l.Name] = l
	}
	for _, w := range want {
		l, ok := byName[w.Name]
		switch {
		case !ok:
			logger.Warn(fmt.Sprintf("listen %q is in the config, but systemd passed no socket of that name: forkd serves on systemd's sockets only (a socket unit, or the fd store: systemctl stop, then start, rebinds)", w.Name),
				"event", "listeners-mismatch")
		case !sameAddress(w, l):
			logger.Warn(fmt.Sprintf("listen %q is %s in the config, but systemd passed %s://%s: forkd serves on systemd's socket (a socket unit, or the fd store: systemctl stop, then start, rebinds)",
				w.Name, w.URL(), l.Network, l.Address), "event", "listeners-mismatch")
		}
	}
}

// sameAddress compares a configured listener with a bound one, for what the config pins down (a
// port 0 or an empty host matches any).
func sameAddress(w config.Listener, l activation.Listener) bool {
	if w.Network == "unix" || l.Network == "unix" {
		return w.Network == l.Network && w.Address == l.Address
	}
	wHost, wPort, err1 := net.SplitHostPort(w.Address)
	lHost, lPort, err2 := net.SplitHostPort(l.Address)
	if err1 != nil || err2 != nil {
		return w.Address == l.Address
	}
	if wPort != "0" && wPort != lPort {
		return false
	}
	return wHost == "" || wHost == lHost || net.ParseIP(wHost).Equal(net.ParseIP(lHost))
}

// listenerFD returns the control listener's descriptor, without os.File.Fd.
func listenerFD(l net.Listener) (int, error) {
	sc, ok := l.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("control socket: %T has no descriptor", l)
	}
	return fds.Raw(sc)
}

// disableAsyncPreemption re-execs the master with GODEBUG=asyncpreemptoff=1 unless it already runs
// with it. The Go runtime preempts goroutines by sending its own threads SIGURG, which os/signal
// cannot tell from an operator's SIGURG (refork). The master's loop never runs long without
// yielding, so it loses nothing by cooperative preemption alone.
func disableAsyncPreemption() error {
	godebug := os.Getenv("GODEBUG")
	for _, kv := range strings.Split(godebug, ",") {
		if kv == "asyncpreemptoff=1" {
			return nil
		}
	}
	if godebug != "" {
		godebug += ","
	}
	// Replace GODEBUG rather than add a second one: getenv reads the first.
	env := []string{"GODEBUG=" + godebug + "asyncpreemptoff=1"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	// The binary's own path, not /proc/self/exe, so the process keeps its name (ps, pgrep forkd).
	self, err := os.Executable()
	if err != nil {
		self = "/proc/self/exe"
	}
	// Same PID: systemd's MAINPID and LISTEN_PID stay right.
	err = syscall.Exec(self, os.Args, env)
	return fmt.Errorf("re-exec with GODEBUG=asyncpreemptoff=1: %w", err)
}
