package cluster

import (
	"errors"
	"fmt"
	"time"
)

// Config is the machine's view of forkd's configuration.
type Config struct {
	Workers    int
	MaxWorkers int
	// ReadyOnStart counts a worker as ready when it is spawned, without waiting for READY=1.
	ReadyOnStart bool

	BootTimeout time.Duration
	// HeartbeatTimeout is the initial WATCHDOG_USEC of every worker; zero disables heartbeats.
	HeartbeatTimeout time.Duration
	// ShutdownTimeout is the time between SIGTERM and SIGKILL; zero sends SIGKILL at once.
	ShutdownTimeout time.Duration

	BackoffMin, BackoffMax, ResetAfter time.Duration

	// ForkWorker turns on fork-worker mode: worker 0 is exec'd with a control channel and, if it
	// declares it can fork, every other worker is forked from it.
	ForkWorker bool
	// ForkTimeout bounds a fork (from spawn request to the template's reply) and a pause.
	ForkTimeout time.Duration
	// Mold turns on mold mode (mold.go): slot 0 is a template that never serves, Workers counts
	// the serving workers beside it, and a refork forks the new template from the warmest serving
	// worker. Without it, worker 0 serves and is the template (Puma's fork_worker).
	Mold bool
	// ReforkNice, above 0, lowers the CPU priority of the serving workers a refork replaces by
	// that many nice steps while it runs (priority.go); 0 leaves it alone.
	ReforkNice int
	// ReforkAfter lists, for each automatic refork in turn, how many requests the busiest worker
	// serves since the previous one (since the workers were replaced, for the first); empty
	// disables automatic reforks. Past the end of the list, the last entry repeats if
	// ReforkAfterRepeats, else automatic reforks stop.
	ReforkAfter        []uint64
	ReforkAfterRepeats bool
	// ReforkOnDecay, when set, also starts an automatic refork when the forked workers' private
	// memory has grown (decay.go); it needs MemorySampled events.
	ReforkOnDecay *DecayPolicy
	// WarmUp holds a reload's (or a hot restart's) forks back until the new template has served
	// a while (in mold mode: until a new serving worker has, and forked the mold; warm.go); zero:
	// it forks at once.
	WarmUp WarmUp
	// CarryHeapSize carries the heap size an exec'd template reports to the next worker 0 forkd
	// execs (heapsize.go), unless HeapSizeSet.
	CarryHeapSize bool
	// HeapSizeSet is the variable of the app's environment (forkd's or the config's env) that
	// sizes Ruby's heap at start (HeapSizePrefix...), as NAME=VALUE; empty: none. The driver fills
	// it in for each spec it registers: the operator's choice wins over a carried size.
	HeapSizeSet string

	// Recycle replaces workers that served too many requests or hold too much private memory.
	Recycle RecyclePolicy

	// MaxSurge and MaxUnavailable shape rollouts: at most MaxSurge workers above the desired count,
	// at most MaxUnavailable of the desired workers stopped before their replacement is ready.
	MaxSurge, MaxUnavailable int

	// Spec names what new workers are spawned from (the app's command, directory, environment):
	// a handle the driver registered, which SpawnWorker carries back. A reload's config brings its
	// own; the machine says when one is no longer needed (ReleaseSpec).
	Spec SpecHandle
	// Hooks are the commands the master runs at moments of the cluster's life (RunHook).
	Hooks Hooks
	// WatchdogMinReady, above 0, withholds systemd's watchdog ping (WatchdogDue) while fewer workers
	// are ready, so that systemd restarts a cluster that stays down.
	WatchdogMinReady int

	// Settings names the settings the machine's messages point to, as the operator writes them.
	// Zero values name the config file's.
	Settings SettingNames
}

// SpecHandle names a spec the driver keeps: what a worker is spawned from. Zero names none.
type SpecHandle uint64

// Hooks are the master's hook commands (argv lists; nil: none), and how long each may run (zero:
// defaultHookTimeout).
type Hooks struct {
	BeforeReload, AfterReload, BeforeRestart, OnWorkerCrash []string
	Timeout                                                 time.Duration
}

// SettingNames names the settings behind the machine's advice: a config file's attributes, or the
// flags of quick mode (forkd --readiness started -- app).
type SettingNames struct {
	// ReadyOnNotify and ReadyOnStart set readiness: `readiness = "notify"`, `readiness = "started"`.
	ReadyOnNotify, ReadyOnStart string
	// ForkWorker turns fork-worker mode on: "a fork_worker block in the config".
	ForkWorker string
}

// withDefaults fills in the config file's names for the settings left unnamed.
func (s SettingNames) withDefaults() SettingNames {
	if s.ReadyOnNotify == "" {
		s.ReadyOnNotify = `readiness = "notify"`
	}
	if s.ReadyOnStart == "" {
		s.ReadyOnStart = `readiness = "started"`
	}
	if s.ForkWorker == "" {
		s.ForkWorker = "a fork_worker block in the config"
	}
	return s
}

func (c *Config) validate() error {
	switch {
	case c.MaxWorkers < 1:
		return errors.New("cluster: MaxWorkers must be at least 1")
	case c.Workers < 1 || c.Workers > c.MaxWorkers:
		return fmt.Errorf("cluster: Workers must be in 1..%d", c.MaxWorkers)
	case c.BootTimeout <= 0:
		return errors.New("cluster: BootTimeout must be positive")
	case c.HeartbeatTimeout < 0 || c.ShutdownTimeout < 0:
		return errors.New("cluster: timeouts must not be negative")
	case c.BackoffMin <= 0 || c.BackoffMax < c.BackoffMin:
		return errors.New("cluster: need 0 < BackoffMin <= BackoffMax")
	case c.ResetAfter <= 0:
		return errors.New("cluster: ResetAfter must be positive")
	case c.ForkWorker && c.ForkTimeout <= 0:
		return errors.New("cluster: ForkTimeout must be positive in fork-worker mode")
	case c.MaxSurge < 0 || c.MaxUnavailable < 0 || c.MaxSurge+c.MaxUnavailable < 1:
		return errors.New("cluster: MaxSurge and MaxUnavailable must not be negative, and not both zero")
	}
	if c.Mold && !c.ForkWorker {
		return errors.New("cluster: Mold needs ForkWorker")
	}
	if c.ReforkNice < 0 || c.ReforkNice > 19 {
		return errors.New("cluster: ReforkNice must be in 0..19")
	}
	if c.WatchdogMinReady < 0 || c.Hooks.Timeout < 0 {
		return errors.New("cluster: WatchdogMinReady and the hooks' Timeout must not be negative")
	}
	if err := c.Recycle.validate(); err != nil {
		return err
	}
	if p := c.ReforkOnDecay; p != nil {
		if err := p.validate(); err != nil {
			return err
		}
	}
	for _, n := range c.ReforkAfter {
		if n == 0 {
			return errors.New("cluster: ReforkAfter entries must be positive")
		}
	}
	return nil
}
