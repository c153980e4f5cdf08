package supervisor

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
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

// This file holds how workers start and end: what a generation is spawned from (its spec), the
// exec through the shim, signals to a worker's process group, the reaper, and the config a reload
// loads.

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
	// KSM opts the workers in to the kernel's same-page merging (memory.ksm): the shim calls
	// prctl(PR_SET_MEMORY_MERGE) before it execs the app (shim.EnvKSM).
	KSM bool
	// Warnings are changes in the config that a reload cannot apply (listeners, the control
	// socket): they are logged.
	Warnings []string
}

// spec is how workers are started: the app's command, in a directory, with an environment.
type spec struct {
	command []string
	dir     string
	env     map[string]string
	ksm     bool
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
	return &spec{command: g.Command, dir: dir, env: g.Env, ksm: g.KSM}, nil
}

// register keeps sp under a new handle, which cfg names from now on.
func (d *Driver) register(sp *spec, cfg *cluster.Config) {
	d.lastSpec++
	d.specs[d.lastSpec] = sp
	cfg.Spec = d.lastSpec
	cfg.HeapSizeSet = heapSizeSet(d.baseEnv, sp.env)
}

// heapSizeSet is the variable of the app's environment (the config's env, then forkd's own) that
// sizes Ruby's heap at start, as NAME=VALUE; "" when none does. The operator's choice wins over
// the size a template reports (cluster.HeapSize).
func heapSizeSet(base []string, env map[string]string) string {
	keys := slices.Sorted(maps.Keys(env))
	for _, k := range keys {
		if strings.HasPrefix(k, cluster.HeapSizePrefix) {
			return k + "=" + env[k]
		}
	}
	for _, kv := range base {
		if strings.HasPrefix(kv, cluster.HeapSizePrefix) {
			return kv
		}
	}
	return ""
}

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
	if h := a.HeapSize; h != nil {
		env = append(env, h.String())
	}
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
	pid, err := d.startInCgroup(a, attr, func() (int, error) {
		return d.spawner.start("/proc/self/exe", shim.Argv("/proc/self/exe", sp.command), attr)
	})
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
	if a.Signal == syscall.SIGKILL {
		d.cgroupKill(a.Worker, p.pid)
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
		var oom cluster.OOMKill
		if id, ok := d.m.WorkerByPID(pid); ok {
			oom = d.cgroupExited(id, st)
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
		exits = append(exits, cluster.Exited{PID: pid, Status: st, OOM: oom})
	}
	d.checkStrayGroups()
	d.findOrphans()
	for _, e := range exits {
		d.step(e)
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
		if protocol.IsWorkerVar(k) {
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
	if sp.ksm {
		env = append(env, shim.EnvKSM+"=1")
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

// inheritedEnv filters forkd's environment down to what workers inherit.
func inheritedEnv(environ []string) []string {
	var env []string
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		if protocol.IsWorkerVar(k) {
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
