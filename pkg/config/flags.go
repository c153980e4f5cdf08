package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Flags are the command-line values that override (or, without a file, replace) the config file.
// The zero value of each field means "not given": the file's value, or the default, applies.
type Flags struct {
	// Config is the config file (--config, -c). Empty means quick mode: no file, everything comes
	// from the other flags and the defaults.
	Config string
	// Name overrides name (--name).
	Name string
	// Workers overrides workers (--workers). 0 means not given; an explicit --workers 0 on a
	// registered FlagSet is remembered and reported as out of range.
	Workers int
	// Listen replaces all of the file's listen blocks when given (--listen URL, repeatable). The
	// listeners are named "listen0", "listen1", … in flag order.
	Listen []string
	// Readiness overrides readiness (--readiness).
	Readiness string
	// Socket overrides control.socket (--socket). A relative path is relative to forkd's working
	// directory.
	Socket string
	// BootTimeout, WorkerTimeout and ShutdownTimeout override the timeouts block (--boot-timeout,
	// --worker-timeout, --shutdown-timeout); they are parsed with time.ParseDuration.
	BootTimeout, WorkerTimeout, ShutdownTimeout string
	// MetricsListen overrides metrics.listen (--metrics-listen URL); a relative unix path is
	// relative to forkd's working directory.
	MetricsListen string
	// MemorySampleInterval overrides memory.sample_interval (--memory-sample-interval).
	MemorySampleInterval string
	// ForkWorker turns on fork-worker mode with its defaults (--fork-worker), when the file has no
	// fork_worker block.
	ForkWorker bool
	// Command replaces command when given: the arguments after "--". Register does not define it;
	// the caller sets it from its positional arguments.
	Command []string

	// workersGiven records an explicit --workers 0, which Workers alone cannot tell from absence.
	workersGiven bool
}

// Register defines forkd's config flags on fs, storing their values in f.
func (f *Flags) Register(fs *pflag.FlagSet) {
	fs.StringVarP(&f.Config, "config", "c", "",
		"read the configuration from `FILE`; without it forkd runs in quick mode, from flags alone")
	fs.StringVar(&f.Name, "name", "",
		"instance `NAME` used in logs and the default control socket path (default: the config file's name without extension, or \"forkd\")")
	fs.Var(&workersFlag{f}, "workers",
		fmt.Sprintf("run `N` worker processes, 1..%d (default: the number of CPUs)", MaxWorkers))
	fs.StringArrayVar(&f.Listen, "listen", nil,
		"bind `URL`: tcp://HOST:PORT, tcp4://, tcp6://, unix:///PATH or unix://@NAME; repeat for more sockets; replaces the file's listen blocks")
	fs.StringVar(&f.Readiness, "readiness", "",
		"when a worker counts as ready: `MODE` is notify (when it sends READY=1) or started (as soon as it runs); default: started in quick mode, notify with --config or --fork-worker")
	fs.StringVar(&f.Socket, "socket", "",
		"control socket `PATH` for forkctl (default: /run/forkd/NAME/control.sock as root, $XDG_RUNTIME_DIR/forkd/NAME/control.sock otherwise)")
	fs.StringVar(&f.BootTimeout, "boot-timeout", "",
		"how long a worker may take from spawn to ready, a `DURATION` like 90s or 2m (default 60s)")
	fs.StringVar(&f.WorkerTimeout, "worker-timeout", "",
		"kill a ready worker that sends no WATCHDOG=1 heartbeat for this `DURATION`; 0s disables (default 0s)")
	fs.BoolVar(&f.ForkWorker, "fork-worker", false,
		"fork-worker mode: fork workers 1..n-1 from a warmed-up worker 0 (the app needs a forkd SDK); refork once, after a worker has served 1000 requests")
	fs.StringVar(&f.ShutdownTimeout, "shutdown-timeout", "",
		"how long a worker may take to exit after SIGTERM before it gets SIGKILL, a `DURATION` (default 30s)")
	fs.StringVar(&f.MetricsListen, "metrics-listen", "",
		"serve Prometheus metrics at /metrics on `URL` too, a listen URL like tcp://127.0.0.1:9090 (default: on the control socket only)")
	fs.StringVar(&f.MemorySampleInterval, "memory-sample-interval", "",
		"read every worker's memory (smaps_rollup) every `DURATION`, at least 1s (default 10s)")
}

// workersFlag is the pflag.Value behind --workers; unlike an int flag it notes that the flag was
// given, so "--workers 0" is reported rather than read as "not given".
type workersFlag struct{ f *Flags }

func (w *workersFlag) String() string { return strconv.Itoa(w.f.Workers) }

func (w *workersFlag) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("%q is not a whole number", s)
	}
	w.f.Workers, w.f.workersGiven = n, true
	return nil
}

func (w *workersFlag) Type() string { return "int" }

// applyFlags sets every value a flag gives, over the file's.
func (b *builder) applyFlags(f Flags) {
	c, s := &b.cfg, &b.src
	given := func(flag string) origin { return origin{what: flag, given: true, flag: true} }

	if f.Name != "" {
		c.Name, s.name = f.Name, given("--name")
	}
	if f.Workers != 0 || f.workersGiven {
		c.Workers, s.workers = f.Workers, given("--workers")
	}
	if f.Readiness != "" {
		c.Readiness, s.readiness = Readiness(f.Readiness), given("--readiness")
	}
	if len(f.Listen) > 0 {
		c.Listeners, s.listeners = nil, nil
		for i, url := range f.Listen {
			b.addFlagListener(i, url)
		}
	}
	if f.Socket != "" {
		c.Control.Socket, s.socket = b.resolvePath(f.Socket, true), given("--socket")
	}
	b.flagDuration(f.BootTimeout, "--boot-timeout", &c.Timeouts.Boot, &s.boot)
	b.flagDuration(f.WorkerTimeout, "--worker-timeout", &c.Timeouts.Worker, &s.worker)
	b.flagDuration(f.ShutdownTimeout, "--shutdown-timeout", &c.Timeouts.Shutdown, &s.shutdown)
	if f.MetricsListen != "" {
		s.metricsListen = given("--metrics-listen")
		b.setMetricsListen(f.MetricsListen, true)
	}
	b.flagDuration(f.MemorySampleInterval, "--memory-sample-interval", &c.Memory.SampleInterval, &s.sampleInterval)
	if f.ForkWorker && c.ForkWorker == nil {
		c.ForkWorker = &ForkWorker{}
		s.forkWorker = given("--fork-worker")
	}
	if len(f.Command) > 0 {
		c.Command = f.Command
		// Named "command", since "--" is not a flag a reader would recognize in a message.
		s.command, s.commandArgs = given("command"), nil
	}
}

// addFlagListener adds the listener for the i-th --listen.
func (b *builder) addFlagListener(i int, url string) {
	o := origin{what: "--listen", given: true, flag: true}
	l := Listener{Name: fmt.Sprintf("listen%d", i)}
	network, address, err := parseListenURL(url)
	if err != nil {
		b.report(o, "%v", err)
		o.failed = true
	} else {
		if network == "unix" && !strings.HasPrefix(address, "@") {
			address = b.resolvePath(address, true)
		}
		l.Network, l.Address = network, address
	}
	b.cfg.Listeners = append(b.cfg.Listeners, l)
	unset := origin{what: "--listen", flag: true} // backlog, reuseport, mode: no flags, defaults
	b.src.listeners = append(b.src.listeners, listenerSources{
		name: o, address: o, backlog: unset, reusePort: unset, mode: unset,
	})
}

// flagDuration sets *dst from a duration flag, when given.
func (b *builder) flagDuration(value, flag string, dst *time.Duration, o *origin) {
	if value == "" {
		return
	}
	*o = origin{what: flag, given: true, flag: true}
	d, err := parseDuration(value)
	if err != nil {
		b.report(*o, "%v", err)
		o.failed = true
		return
	}
	*dst = d
}
