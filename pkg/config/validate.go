package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/hashicorp/hcl/v2"

	"github.com/forkd/forkd/pkg/protocol"
)

// maxUnixPath is the longest unix socket address the kernel takes: sun_path holds 108 bytes, and a
// path needs one of them for its terminating NUL. (An abstract name has a leading NUL instead; "@"
// stands for it here, so the same limit applies to "@name".)
const maxUnixPath = 107

// origin says where a value came from, so a problem with it is reported there: against the
// attribute's source range for the file, naming the flag for the command line.
type origin struct {
	// what names the value as the user wrote it: "workers", "timeouts.boot", `listen "http" mode`,
	// or a flag such as "--workers".
	what string
	// given is set when the file or a flag set the value; otherwise it is a default.
	given bool
	// flag is set for values from the command line (and defaults in quick mode): their problems are
	// plain errors rather than diagnostics.
	flag bool
	// subject is the range of the value in the file and context the whole attribute, for the
	// snippet; both are nil for flags and defaults.
	subject, context *hcl.Range
	// failed is set when the value could not be decoded. That problem is already reported, so
	// validation stays quiet about the zero value left behind.
	failed bool
}

// sources records an origin for every value of the Config being built.
type sources struct {
	name, command, directory, env, workers, readiness origin
	fdStore, watchdogMinReady                         origin
	// commandArgs and envKeys locate single elements, for a problem with one of them.
	commandArgs []origin
	envKeys     map[string]origin
	listeners   []listenerSources

	boot, worker, shutdown             origin
	backoffMin, backoffMax, resetAfter origin
	forkWorker, reforkAfter            origin
	forkTimeout, reforkFrom            origin
	reforkNice, carryHeap              origin
	decayGrowth, decayRatio            origin
	decayInterval, decayFruitless      origin
	warmRequests, warmMaxWait          origin
	maxSurge, maxUnavailable           origin
	maxRequests, maxRequestsJitter     origin
	maxPrivate, minLifetime            origin
	beforeReload, afterReload          origin
	beforeRestart, onWorkerCrash       origin
	hookTimeout                        origin
	notifyAbstract, notifyDirectory    origin
	socket, workerAccess               origin
	cgroupsMode, memoryMax, memoryHigh origin
	metricsListen, sampleInterval, ksm origin
	level, format                      origin
}

// listenerSources holds the origins of one Listener's values.
type listenerSources struct {
	name, address, backlog, reusePort, mode origin
}

// defaultSources names every value as the file does; in quick mode those names only appear in
// problems with defaults, which are plain errors.
func defaultSources(quick bool) sources {
	at := func(what string) origin { return origin{what: what, flag: quick} }
	return sources{
		name: at("name"), command: at("command"), directory: at("directory"), env: at("env"),
		workers: at("workers"), readiness: at("readiness"),
		fdStore: at("systemd.fd_store"), watchdogMinReady: at("systemd.watchdog_min_ready"),
		boot: at("timeouts.boot"), worker: at("timeouts.worker"), shutdown: at("timeouts.shutdown"),
		backoffMin: at("restart.backoff_min"), backoffMax: at("restart.backoff_max"),
		resetAfter: at("restart.reset_after"),
		forkWorker: at("fork_worker"), reforkAfter: at("fork_worker.refork_after"),
		forkTimeout: at("fork_worker.timeout"), reforkFrom: at("fork_worker.refork_from"),
		reforkNice: at("fork_worker.refork_nice"), carryHeap: at("fork_worker.carry_heap_size"),
		decayGrowth: at("fork_worker.refork_on_decay.private_growth"), decayRatio: at("fork_worker.refork_on_decay.ratio"),
		decayInterval: at("fork_worker.refork_on_decay.min_interval"), decayFruitless: at("fork_worker.refork_on_decay.max_fruitless"),
		warmRequests: at("fork_worker.warm_up.requests"), warmMaxWait: at("fork_worker.warm_up.max_wait"),
		maxSurge: at("rollout.max_surge"), maxUnavailable: at("rollout.max_unavailable"),
		maxRequests: at("recycle.max_requests"), maxRequestsJitter: at("recycle.max_requests_jitter"),
		maxPrivate: at("recycle.max_private"), minLifetime: at("recycle.min_lifetime"),
		beforeReload: at("hooks.before_reload"), afterReload: at("hooks.after_reload"),
		beforeRestart: at("hooks.before_restart"), onWorkerCrash: at("hooks.on_worker_crash"),
		hookTimeout:    at("hooks.timeout"),
		notifyAbstract: at("notify.abstract"), notifyDirectory: at("notify.directory"),
		socket: at("control.socket"), workerAccess: at("control.worker_access"),
		cgroupsMode: at("cgroups.mode"), memoryMax: at("cgroups.memory_max"), memoryHigh: at("cgroups.memory_high"),
		metricsListen: at("metrics.listen"), sampleInterval: at("memory.sample_interval"), ksm: at("memory.ksm"),
		level: at("log.level"), format: at("log.format"),
	}
}

// report records one problem with the value from o, as one plain sentence.
func (b *builder) report(o origin, format string, args ...any) {
	if o.failed {
		return
	}
	msg := o.what + ": " + fmt.Sprintf(format, args...)
	if o.flag {
		b.flagErrs = append(b.flagErrs, errors.New(msg))
		return
	}
	b.diags = append(b.diags, &hcl.Diagnostic{
		Severity: hcl.DiagError,
		Summary:  msg,
		Subject:  o.subject,
		Context:  o.context,
	})
}

// validate checks every value of the Config, after defaults are filled, reporting one sentence per
// bad value. It reads like the schema in docs/configuration.md, in the same order.
func (b *builder) validate() {
	c, s := &b.cfg, &b.src

	b.validateName()

	dirOK := true
	if c.Directory != "" {
		dirOK = b.validateDirectory()
	}
	b.validateEnv()
	b.validateCommand(dirOK)

	if c.Workers < 1 || c.Workers > MaxWorkers {
		b.report(s.workers, "%d is out of range 1..%d", c.Workers, MaxWorkers)
	}
	switch c.Readiness {
	case ReadyOnNotify, ReadyOnStart:
	default:
		b.report(s.readiness, "%q is not one of %q, %q", c.Readiness, ReadyOnNotify, ReadyOnStart)
	}

	b.validateListeners()
	switch c.Systemd.FDStore {
	case FDStoreAuto, FDStoreYes, FDStoreNo:
	default:
		b.report(s.fdStore, "%q is not one of %q, %q, %q", c.Systemd.FDStore, FDStoreAuto, FDStoreYes, FDStoreNo)
	}
	if n := c.Systemd.WatchdogMinReady; n < 0 || n > c.Workers && c.Workers >= 1 && c.Workers <= MaxWorkers {
		b.report(s.watchdogMinReady, "%d is out of range 0..workers (%d)", n, c.Workers)
	}

	t := c.Timeouts
	if t.Boot <= 0 {
		b.report(s.boot, "must be greater than 0, not %s", t.Boot)
	}
	if t.Worker < 0 {
		b.report(s.worker, "must not be negative (0s turns heartbeats off), not %s", t.Worker)
	}
	if t.Shutdown < 0 {
		b.report(s.shutdown, "must not be negative, not %s", t.Shutdown)
	}

	r := c.Restart
	if r.BackoffMin <= 0 {
		b.report(s.backoffMin, "must be greater than 0, not %s", r.BackoffMin)
	}
	if r.BackoffMax < r.BackoffMin && !s.backoffMin.failed {
		b.report(s.backoffMax, "%s is less than restart.backoff_min (%s)", r.BackoffMax, r.BackoffMin)
	}
	if r.ResetAfter <= 0 {
		b.report(s.resetAfter, "must be greater than 0, not %s", r.ResetAfter)
	}

	if fw := c.ForkWorker; fw != nil && fw.Timeout <= 0 {
		b.report(s.forkTimeout, "must be greater than 0, not %s", fw.Timeout)
	}
	if fw := c.ForkWorker; fw != nil {
		switch fw.ReforkFrom {
		case ReforkFromTemplate:
		case ReforkFromWarmest:
		default:
			b.report(s.reforkFrom, "%q is not one of %q, %q", fw.ReforkFrom, ReforkFromWarmest, ReforkFromTemplate)
		}
	}
	if fw := c.ForkWorker; fw != nil && (fw.ReforkNice < 0 || fw.ReforkNice > 19) {
		b.report(s.reforkNice, "must be in 0..19 (nice steps; 0 leaves the workers' priority alone), not %d", fw.ReforkNice)
	}
	if fw := c.ForkWorker; fw != nil && fw.ReforkOnDecay != nil {
		b.validateReforkOnDecay(fw.ReforkOnDecay)
	}
	if fw := c.ForkWorker; fw != nil && fw.WarmUp != nil {
		if fw.WarmUp.Requests < 0 {
			b.report(s.warmRequests, "must not be negative, not %d (0 waits max_wait)", fw.WarmUp.Requests)
		}
		if fw.WarmUp.MaxWait < 0 {
			b.report(s.warmMaxWait, "must not be negative, not %s (\"0s\" turns the warm-up off)", fw.WarmUp.MaxWait)
		}
	}
	ro := c.Rollout
	if ro.MaxSurge < 0 {
		b.report(s.maxSurge, "must not be negative, not %d", ro.MaxSurge)
	}
	if ro.MaxUnavailable < 0 {
		b.report(s.maxUnavailable, "must not be negative, not %d", ro.MaxUnavailable)
	}
	if ro.MaxSurge == 0 && ro.MaxUnavailable == 0 {
		o := s.maxSurge
		if !o.given {
			o = s.maxUnavailable
		}
		b.report(o, "rollout.max_surge and rollout.max_unavailable cannot both be 0: a rollout could never replace a worker")
	}

	b.validateRecycle()

	for _, h := range []struct {
		argv []string
		o    origin
	}{{c.Hooks.BeforeReload, s.beforeReload}, {c.Hooks.AfterReload, s.afterReload},
		{c.Hooks.BeforeRestart, s.beforeRestart}, {c.Hooks.OnWorkerCrash, s.onWorkerCrash}} {
		b.validateHook(h.argv, h.o)
	}
	if c.Hooks.Timeout <= 0 {
		b.report(s.hookTimeout, "must be greater than 0, not %s", c.Hooks.Timeout)
	}

	if n := c.Notify; n.Abstract && s.notifyDirectory.given {
		b.report(s.notifyDirectory, "does not apply with notify.abstract = true: abstract sockets have no file")
	} else if !n.Abstract && len(n.Directory) > maxNotifyDirectory {
		what := strconv.Quote(n.Directory)
		if !s.notifyDirectory.given {
			what = "the default, " + what + ","
		}
		b.report(s.notifyDirectory, "%s is %d bytes long; the sockets forkd makes in it need it to be at most %d (set a shorter notify.directory)",
			what, len(n.Directory), maxNotifyDirectory)
	}

	if c.Control.Socket == "" {
		b.report(s.socket, "must not be empty")
	} else {
		b.validateSocketPath(s.socket, c.Control.Socket)
	}
	switch c.Control.WorkerAccess {
	case WorkerAccessNone, WorkerAccessStatus, WorkerAccessFull:
	default:
		b.report(s.workerAccess, "%q is not one of %q, %q, %q", c.Control.WorkerAccess, WorkerAccessNone, WorkerAccessStatus, WorkerAccessFull)
	}

	b.validateCgroups()
	if m := c.Metrics; m.Network == "unix" && !strings.HasPrefix(m.Address, "@") {
		b.validateSocketPath(s.metricsListen, m.Address)
	}
	if m := c.Metrics; m.Enabled() && m.Network == "unix" && m.Address == c.Control.Socket {
		b.report(s.metricsListen, "is the control socket, which serves /metrics already; give the metrics a socket of their own, or leave metrics.listen out")
	}
	for i, l := range c.Listeners {
		if m := c.Metrics; m.Enabled() && l.URL() == m.URL() && !s.metricsListen.failed {
			b.report(s.metricsListen, "is the address of listen %q, where the workers serve; give the metrics an address of their own", c.Listeners[i].Name)
		}
	}
	if d := c.Memory.SampleInterval; d < MinMemorySampleInterval {
		b.report(s.sampleInterval, "must be at least %s (each sample reads every worker's page tables), not %s", MinMemorySampleInterval, d)
	}

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		b.report(s.level, "%q is not one of \"debug\", \"info\", \"warn\", \"error\"", c.Log.Level)
	}
	switch c.Log.Format {
	case "auto", "text", "json", "journal":
	default:
		b.report(s.format, "%q is not one of \"auto\", \"text\", \"json\", \"journal\"", c.Log.Format)
	}
}

// validateCgroups checks the cgroups block: a known mode, and limits that a worker can live with
// and that mean something together.
func (b *builder) validateCgroups() {
	c, s := &b.cfg.Cgroups, &b.src
	switch c.Mode {
	case CgroupsAuto, CgroupsOn:
	case CgroupsOff:
		for _, l := range []origin{s.memoryMax, s.memoryHigh} {
			if l.given {
				b.report(l, "does not apply with cgroups.mode = %q: limits need the workers' cgroups", CgroupsOff)
			}
		}
		return
	default:
		b.report(s.cgroupsMode, "%q is not one of %q, %q, %q", c.Mode, CgroupsAuto, CgroupsOn, CgroupsOff)
	}
	for _, l := range []struct {
		o     origin
		bytes uint64
	}{{s.memoryMax, c.MemoryMax}, {s.memoryHigh, c.MemoryHigh}} {
		if l.o.given && l.bytes < MinMemoryLimit {
			b.report(l.o, "%d bytes is less than a worker can run in: give at least 1M (leave it out for no limit)", l.bytes)
		}
	}
	if c.MemoryHigh != 0 && c.MemoryMax != 0 && c.MemoryHigh >= c.MemoryMax && !s.memoryMax.failed {
		b.report(s.memoryHigh, "%d bytes is not below cgroups.memory_max (%d): past memory_max the kernel kills the worker, so a memory_high there never throttles it",
			c.MemoryHigh, c.MemoryMax)
	}
}

// validateName checks Name, which becomes a path component of the default control socket
// (/run/forkd/NAME/control.sock) and appears in logs.
func (b *builder) validateName() {
	name, o := b.cfg.Name, b.src.name
	hint := ""
	if !o.given && !o.flag {
		hint = ` (it comes from the file name; set name = "..." in the file)`
	}
	if err := CheckName(name); err != nil {
		b.report(o, "%v%s", err, hint)
	}
}

// CheckName says what is wrong with an instance name, or returns nil. The name is a path
// component of the default control socket (/run/forkd/NAME/control.sock) and appears in logs.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("must not be empty")
	case name == "." || name == "..":
		return fmt.Errorf("%q is not allowed, since the name is used as a directory name", name)
	}
	for _, r := range name {
		if !isNameChar(r) {
			return fmt.Errorf("%q may contain only letters, digits and \"_.@-\", not %q", name, r)
		}
	}
	return nil
}

func isNameChar(r rune) bool {
	return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' ||
		r == '_' || r == '.' || r == '@' || r == '-'
}

// validateDirectory checks that Directory is an existing directory, following symlinks only to
// check: the configured path is kept, so a deploy that moves a symlink is seen by new workers.
func (b *builder) validateDirectory() bool {
	dir, o := b.cfg.Directory, b.src.directory
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		b.report(o, "%q does not exist", dir)
	case err != nil:
		b.report(o, "%v", err)
	case !fi.IsDir():
		b.report(o, "%q is not a directory", dir)
	default:
		return true
	}
	return false
}

// validateEnv checks the keys and values of Env, which become "KEY=value" strings in the workers'
// environment.
func (b *builder) validateEnv() {
	for key, value := range b.cfg.Env {
		o, ok := b.src.envKeys[key]
		if !ok {
			o = b.src.env
		}
		switch {
		case key == "":
			b.report(o, "a variable name must not be empty")
		case strings.Contains(key, "="):
			b.report(o, "variable name %q must not contain \"=\"", key)
		case strings.Contains(key, "\x00"):
			b.report(o, "variable name %q must not contain a NUL byte", key)
		case strings.Contains(value, "\x00"):
			b.report(o, "the value of %s must not contain a NUL byte", key)
		case protocol.IsWorkerVar(key):
			b.report(o, "%s is set by forkd for each worker (FORKD_*, LISTEN_*, NOTIFY_SOCKET, WATCHDOG_*), so a value here would never reach them: choose another name", key)
		}
	}
}

// validateHook checks a hook's argv: a program forkd can run, found as forkd itself finds it (the
// master runs hooks in its own working directory, with its own PATH).
func (b *builder) validateHook(argv []string, o origin) {
	if argv == nil || !o.given {
		return
	}
	switch {
	case len(argv) == 0:
		b.report(o, `must not be empty: give the program and its arguments, like ["/usr/local/bin/notify", "reload"]`)
	case argv[0] == "":
		b.report(o, "the program name (the first element) must not be empty")
	case strings.Contains(argv[0], "/"):
		if err := checkExecutable(argv[0]); err != nil {
			b.report(o, "%q %v", argv[0], err)
		}
	default:
		if !inPath(argv[0], os.Getenv("PATH")) {
			b.report(o, "%q not found in PATH", argv[0])
		}
	}
}

// validateCommand checks that Command names a program forkd can run: a path (relative to Directory)
// when it contains a slash, else a name found in PATH, the workers' PATH when env sets one.
func (b *builder) validateCommand(dirOK bool) {
	c, s := &b.cfg, &b.src
	if len(c.Command) == 0 {
		switch {
		case b.quick:
			b.report(s.command, `missing: give the program to run after "--", like forkd --listen tcp://:8080 -- python3 app.py`)
		case !s.command.given:
			b.report(s.command, `missing: set command = ["python3", "app.py"] in the file, or give it after "--"`)
		default:
			b.report(s.command, `must not be empty: give the program to run and its arguments, like ["python3", "app.py"]`)
		}
		return
	}
	argOrigin := func(i int) origin {
		if i < len(s.commandArgs) {
			return s.commandArgs[i]
		}
		return s.command
	}
	for i, arg := range c.Command {
		if strings.Contains(arg, "\x00") {
			b.report(argOrigin(i), "argument %d must not contain a NUL byte", i)
			return
		}
	}
	prog, o := c.Command[0], argOrigin(0)
	switch {
	case prog == "":
		b.report(o, "the program name (the first element) must not be empty")
	case strings.Contains(prog, "/"):
		if !dirOK {
			return // already reported; every relative program would be "missing" too
		}
		path, written, base := prog, prog, ""
		switch {
		case b.programAsWritten != "":
			written, base = b.programAsWritten, "the config file's directory"
		case filepath.IsAbs(prog):
		case c.Directory != "":
			path, base = filepath.Join(c.Directory, prog), "directory"
		default:
			base = "forkd's working directory"
			if abs, err := filepath.Abs(prog); err == nil {
				path = abs
			}
		}
		if err := checkExecutable(path); err != nil {
			where := ""
			if base != "" {
				where = fmt.Sprintf(" (%s, relative to %s)", path, base)
			}
			b.report(o, "%q%s %v", written, where, err)
		}
	default:
		pathList, fromEnv := c.Env["PATH"]
		if !fromEnv {
			pathList = os.Getenv("PATH")
		}
		if !inPath(prog, pathList) {
			if fromEnv {
				b.report(o, "%q not found in PATH (%q, set in env)", prog, pathList)
			} else {
				b.report(o, "%q not found in PATH", prog)
			}
		}
	}
}

// inPath reports whether an executable named prog is in one of the directories of pathList, as
// exec.LookPath would find it (an empty entry means the current directory).
func inPath(prog, pathList string) bool {
	for _, dir := range filepath.SplitList(pathList) {
		if dir == "" {
			dir = "."
		}
		if checkExecutable(filepath.Join(dir, prog)) == nil {
			return true
		}
	}
	return false
}

// checkExecutable says why path cannot be exec'd, or returns nil. Like exec.LookPath it only looks at
// the mode bits: whether this user may run it is decided by the kernel at exec time.
func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return errors.New("does not exist")
	case err != nil:
		return fmt.Errorf("cannot be checked: %w", err)
	case fi.IsDir():
		return errors.New("is a directory")
	case fi.Mode()&0o111 == 0:
		return fmt.Errorf("is not executable (mode %04o)", fi.Mode().Perm())
	}
	return nil
}

// validateListeners checks each listener and that no two share a name (they must be told apart in
// LISTEN_FDNAMES) or an address (the second bind would fail, or take over a unix socket).
func (b *builder) validateListeners() {
	byName := map[string]origin{}
	byAddr := map[string]string{}
	for i, l := range b.cfg.Listeners {
		ls := b.src.listeners[i]

		if first, dup := byName[l.Name]; dup {
			where := ""
			if first.subject != nil {
				where = " at " + first.subject.String()
			}
			b.report(ls.name, "name %q is already used by another listener%s", l.Name, where)
		} else {
			byName[l.Name] = ls.name
			if err := checkFDName(l.Name); err != nil {
				b.report(ls.name, "name %q %v", l.Name, err)
			}
		}

		if ls.address.failed || l.Network == "" {
			continue // the address did not parse; its problem is reported
		}
		abstract := l.Network == "unix" && strings.HasPrefix(l.Address, "@")
		if l.Network == "unix" {
			b.validateSocketPath(ls.address, l.Address)
		}
		if key := l.URL(); !strings.HasSuffix(key, ":0") {
			if other, dup := byAddr[key]; dup {
				b.report(ls.address, "%q is already used by listener %q", key, other)
			} else {
				byAddr[key] = l.Name
			}
		}
		if l.Backlog < 1 {
			b.report(ls.backlog, "must be at least 1, not %d", l.Backlog)
		}
		if l.ReusePort && l.Network == "unix" {
			b.report(ls.reusePort, "applies only to tcp listeners")
		}
		if ls.mode.given && !ls.mode.failed {
			switch {
			case l.Network != "unix":
				b.report(ls.mode, "applies only to unix listeners")
			case abstract:
				b.report(ls.mode, "does not apply to an abstract unix socket, which has no file")
			}
		}
	}
}

// checkFDName applies systemd's rules for a name in LISTEN_FDNAMES (fdname_is_valid): 1 to 255
// printable ASCII characters, no ':' since it separates the names.
func checkFDName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("must be 1 to 255 characters long, not %d", len(name))
	}
	for _, c := range []byte(name) {
		if c == ':' {
			return errors.New("must not contain ':', which separates names in LISTEN_FDNAMES")
		}
		if c < ' ' || c > '~' {
			return errors.New("may contain only printable ASCII characters")
		}
	}
	return nil
}

// validateSocketPath checks that a unix socket address fits in sun_path.
func (b *builder) validateSocketPath(o origin, path string) {
	if len(path) > maxUnixPath {
		b.report(o, "%q is %d bytes long, more than a unix socket address can hold (%d)", path, len(path), maxUnixPath)
	}
}

// validateReforkOnDecay checks a refork_on_decay block.
func (b *builder) validateReforkOnDecay(p *ReforkOnDecay) {
	s := &b.src
	if s.decayGrowth.given && p.PrivateGrowth == 0 {
		b.report(s.decayGrowth, "must be greater than 0, like \"64M\" (leave it out to use ratio alone)")
	}
	if s.decayRatio.given && !(p.Ratio > 1) {
		b.report(s.decayRatio, "must be greater than 1, like 1.5 (the workers' private memory grown by half), not %g", p.Ratio)
	}
	if p.MinInterval <= 0 {
		b.report(s.decayInterval, "must be greater than 0, not %s", p.MinInterval)
	}
	if p.MaxFruitless < 1 {
		b.report(s.decayFruitless, "must be at least 1, not %d", p.MaxFruitless)
	}
}

// validateRecycle checks the recycle block.
func (b *builder) validateRecycle() {
	r, s := b.cfg.Recycle, &b.src
	if r.MaxRequests < 0 {
		b.report(s.maxRequests, "must not be negative, not %d (0 never recycles for requests)", r.MaxRequests)
	}
	if r.MaxRequestsJitter < 0 {
		b.report(s.maxRequestsJitter, "must not be negative, not %d", r.MaxRequestsJitter)
	}
	if r.MaxRequestsJitter > 0 && r.MaxRequests == 0 && !s.maxRequests.failed {
		b.report(s.maxRequestsJitter, "has no meaning without recycle.max_requests")
	}
	if r.MaxPrivate != 0 && r.MaxPrivate < 1<<20 {
		b.report(s.maxPrivate, "%d bytes is less than a worker can run in: give at least 1M (0 never recycles for memory)", r.MaxPrivate)
	}
	if r.MinLifetime < 0 {
		b.report(s.minLifetime, "must not be negative, not %s", r.MinLifetime)
	}
}
