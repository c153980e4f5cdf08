package config

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/zclconf/go-cty/cty"
)

// The file structs are the HCL schema, decoded by gohcl; it rejects unknown attributes and blocks.
// Attributes are kept as *hcl.Attribute (nil when absent) rather than decoded straight into Go
// values, so that every value keeps its source range for validation, and a missing attribute can be
// told from a zero value.

// fileConfig is the top level of a config file.
type fileConfig struct {
	Name      *hcl.Attribute `hcl:"name,optional"`
	Command   *hcl.Attribute `hcl:"command,optional"` // required, unless given after "--"
	Directory *hcl.Attribute `hcl:"directory,optional"`
	Env       *hcl.Attribute `hcl:"env,optional"`
	Workers   *hcl.Attribute `hcl:"workers,optional"`
	Readiness *hcl.Attribute `hcl:"readiness,optional"`

	Listen     []*fileListen   `hcl:"listen,block"`
	Timeouts   *fileTimeouts   `hcl:"timeouts,block"`
	Restart    *fileRestart    `hcl:"restart,block"`
	ForkWorker *fileForkWorker `hcl:"fork_worker,block"`
	Rollout    *fileRollout    `hcl:"rollout,block"`
	Recycle    *fileRecycle    `hcl:"recycle,block"`
	Hooks      *fileHooks      `hcl:"hooks,block"`
	Systemd    *fileSystemd    `hcl:"systemd,block"`
	Notify     *fileNotify     `hcl:"notify,block"`
	Control    *fileControl    `hcl:"control,block"`
	Cgroups    *fileCgroups    `hcl:"cgroups,block"`
	Metrics    *fileMetrics    `hcl:"metrics,block"`
	Memory     *fileMemory     `hcl:"memory,block"`
	Log        *fileLog        `hcl:"log,block"`
}

type fileListen struct {
	Name      string         `hcl:"name,label"`
	NameRange hcl.Range      `hcl:"name,label_range"`
	DefRange  hcl.Range      `hcl:",def_range"`
	Address   *hcl.Attribute `hcl:"address,optional"` // required; gohcl treats pointers as optional
	Backlog   *hcl.Attribute `hcl:"backlog,optional"`
	ReusePort *hcl.Attribute `hcl:"reuseport,optional"`
	Mode      *hcl.Attribute `hcl:"mode,optional"`
}

type fileTimeouts struct {
	Boot     *hcl.Attribute `hcl:"boot,optional"`
	Worker   *hcl.Attribute `hcl:"worker,optional"`
	Shutdown *hcl.Attribute `hcl:"shutdown,optional"`
}

type fileRestart struct {
	BackoffMin *hcl.Attribute `hcl:"backoff_min,optional"`
	BackoffMax *hcl.Attribute `hcl:"backoff_max,optional"`
	ResetAfter *hcl.Attribute `hcl:"reset_after,optional"`
}

type fileForkWorker struct {
	DefRange      hcl.Range          `hcl:",def_range"`
	ReforkAfter   *hcl.Attribute     `hcl:"refork_after,optional"`
	Timeout       *hcl.Attribute     `hcl:"timeout,optional"`
	ReforkOnDecay *fileReforkOnDecay `hcl:"refork_on_decay,block"`
	WarmUp        *fileWarmUp        `hcl:"warm_up,block"`
	ReforkFrom    *hcl.Attribute     `hcl:"refork_from,optional"`
	ReforkNice    *hcl.Attribute     `hcl:"refork_nice,optional"`
	CarryHeap     *hcl.Attribute     `hcl:"carry_heap_size,optional"`
}

type fileWarmUp struct {
	Requests *hcl.Attribute `hcl:"requests,optional"`
	MaxWait  *hcl.Attribute `hcl:"max_wait,optional"`
}

type fileReforkOnDecay struct {
	DefRange      hcl.Range      `hcl:",def_range"`
	PrivateGrowth *hcl.Attribute `hcl:"private_growth,optional"`
	Ratio         *hcl.Attribute `hcl:"ratio,optional"`
	MinInterval   *hcl.Attribute `hcl:"min_interval,optional"`
	MaxFruitless  *hcl.Attribute `hcl:"max_fruitless,optional"`
}

type fileRollout struct {
	MaxSurge       *hcl.Attribute `hcl:"max_surge,optional"`
	MaxUnavailable *hcl.Attribute `hcl:"max_unavailable,optional"`
}

type fileRecycle struct {
	MaxRequests       *hcl.Attribute `hcl:"max_requests,optional"`
	MaxRequestsJitter *hcl.Attribute `hcl:"max_requests_jitter,optional"`
	MaxPrivate        *hcl.Attribute `hcl:"max_private,optional"`
	MinLifetime       *hcl.Attribute `hcl:"min_lifetime,optional"`
}

type fileHooks struct {
	BeforeReload  *hcl.Attribute `hcl:"before_reload,optional"`
	AfterReload   *hcl.Attribute `hcl:"after_reload,optional"`
	BeforeRestart *hcl.Attribute `hcl:"before_restart,optional"`
	OnWorkerCrash *hcl.Attribute `hcl:"on_worker_crash,optional"`
	Timeout       *hcl.Attribute `hcl:"timeout,optional"`
}

type fileSystemd struct {
	FDStore          *hcl.Attribute `hcl:"fd_store,optional"`
	WatchdogMinReady *hcl.Attribute `hcl:"watchdog_min_ready,optional"`
}

type fileNotify struct {
	Abstract  *hcl.Attribute `hcl:"abstract,optional"`
	Directory *hcl.Attribute `hcl:"directory,optional"`
}

type fileControl struct {
	Socket       *hcl.Attribute `hcl:"socket,optional"`
	WorkerAccess *hcl.Attribute `hcl:"worker_access,optional"`
}

type fileCgroups struct {
	Mode       *hcl.Attribute `hcl:"mode,optional"`
	MemoryMax  *hcl.Attribute `hcl:"memory_max,optional"`
	MemoryHigh *hcl.Attribute `hcl:"memory_high,optional"`
}

type fileMetrics struct {
	Listen *hcl.Attribute `hcl:"listen,optional"`
}

type fileMemory struct {
	SampleInterval *hcl.Attribute `hcl:"sample_interval,optional"`
	KSM            *hcl.Attribute `hcl:"ksm,optional"`
}

type fileLog struct {
	Level  *hcl.Attribute `hcl:"level,optional"`
	Format *hcl.Attribute `hcl:"format,optional"`
}

// decodeFile parses src and sets every value the file gives. It reports false when the file does
// not parse at all; decoding problems are collected and decoding goes on, so one run reports as
// many problems as it can.
func (b *builder) decodeFile(src []byte, filename string) bool {
	parser := hclparse.NewParser()
	file, diags := parser.ParseHCL(src, filename)
	b.files = parser.Files()
	b.diags = append(b.diags, diags...)
	if diags.HasErrors() {
		return false
	}

	var fc fileConfig
	b.diags = append(b.diags, gohcl.DecodeBody(file.Body, nil, &fc)...)

	c, s := &b.cfg, &b.src
	b.decodeValue(fc.Name, "name", &c.Name, &s.name)
	b.decodeCommand(fc.Command)
	if b.decodeValue(fc.Directory, "directory", &c.Directory, &s.directory) {
		c.Directory = b.resolvePath(c.Directory, false)
	}
	b.decodeEnv(fc.Env)
	b.decodeValue(fc.Workers, "workers", &c.Workers, &s.workers)
	var readiness string
	if b.decodeValue(fc.Readiness, "readiness", &readiness, &s.readiness) {
		c.Readiness = Readiness(readiness)
	}

	for _, fl := range fc.Listen {
		b.decodeListener(fl)
	}
	if t := fc.Timeouts; t != nil {
		b.decodeDuration(t.Boot, "timeouts.boot", &c.Timeouts.Boot, &s.boot)
		b.decodeDuration(t.Worker, "timeouts.worker", &c.Timeouts.Worker, &s.worker)
		b.decodeDuration(t.Shutdown, "timeouts.shutdown", &c.Timeouts.Shutdown, &s.shutdown)
	}
	if r := fc.Restart; r != nil {
		b.decodeDuration(r.BackoffMin, "restart.backoff_min", &c.Restart.BackoffMin, &s.backoffMin)
		b.decodeDuration(r.BackoffMax, "restart.backoff_max", &c.Restart.BackoffMax, &s.backoffMax)
		b.decodeDuration(r.ResetAfter, "restart.reset_after", &c.Restart.ResetAfter, &s.resetAfter)
	}
	if fw := fc.ForkWorker; fw != nil {
		c.ForkWorker = &ForkWorker{}
		s.forkWorker = origin{what: "fork_worker", given: true, subject: fw.DefRange.Ptr()}
		b.decodeReforkAfter(fw.ReforkAfter)
		b.decodeDuration(fw.Timeout, "fork_worker.timeout", &c.ForkWorker.Timeout, &s.forkTimeout)
		var from string
		if b.decodeValue(fw.ReforkFrom, "fork_worker.refork_from", &from, &s.reforkFrom) {
			c.ForkWorker.ReforkFrom = ReforkFrom(from)
		}
		b.decodeValue(fw.ReforkNice, "fork_worker.refork_nice", &c.ForkWorker.ReforkNice, &s.reforkNice)
		b.decodeValue(fw.CarryHeap, "fork_worker.carry_heap_size", &c.ForkWorker.CarryHeapSize, &s.carryHeap)
		if w := fw.WarmUp; w != nil {
			c.ForkWorker.WarmUp = &WarmUp{}
			b.decodeValue(w.Requests, "fork_worker.warm_up.requests", &c.ForkWorker.WarmUp.Requests, &s.warmRequests)
			b.decodeDuration(w.MaxWait, "fork_worker.warm_up.max_wait", &c.ForkWorker.WarmUp.MaxWait, &s.warmMaxWait)
		}
		if d := fw.ReforkOnDecay; d != nil {
			p := &ReforkOnDecay{}
			c.ForkWorker.ReforkOnDecay = p
			b.decodeSize(d.PrivateGrowth, "fork_worker.refork_on_decay.private_growth", &p.PrivateGrowth, &s.decayGrowth)
			b.decodeValue(d.Ratio, "fork_worker.refork_on_decay.ratio", &p.Ratio, &s.decayRatio)
			b.decodeDuration(d.MinInterval, "fork_worker.refork_on_decay.min_interval", &p.MinInterval, &s.decayInterval)
			b.decodeValue(d.MaxFruitless, "fork_worker.refork_on_decay.max_fruitless", &p.MaxFruitless, &s.decayFruitless)
		}
	}
	if r := fc.Rollout; r != nil {
		b.decodeValue(r.MaxSurge, "rollout.max_surge", &c.Rollout.MaxSurge, &s.maxSurge)
		b.decodeValue(r.MaxUnavailable, "rollout.max_unavailable", &c.Rollout.MaxUnavailable, &s.maxUnavailable)
	}
	if r := fc.Recycle; r != nil {
		b.decodeValue(r.MaxRequests, "recycle.max_requests", &c.Recycle.MaxRequests, &s.maxRequests)
		b.decodeValue(r.MaxRequestsJitter, "recycle.max_requests_jitter", &c.Recycle.MaxRequestsJitter, &s.maxRequestsJitter)
		b.decodeSize(r.MaxPrivate, "recycle.max_private", &c.Recycle.MaxPrivate, &s.maxPrivate)
		b.decodeDuration(r.MinLifetime, "recycle.min_lifetime", &c.Recycle.MinLifetime, &s.minLifetime)
	}
	if h := fc.Hooks; h != nil {
		b.decodeValue(h.BeforeReload, "hooks.before_reload", &c.Hooks.BeforeReload, &s.beforeReload)
		b.decodeValue(h.AfterReload, "hooks.after_reload", &c.Hooks.AfterReload, &s.afterReload)
		b.decodeValue(h.BeforeRestart, "hooks.before_restart", &c.Hooks.BeforeRestart, &s.beforeRestart)
		b.decodeValue(h.OnWorkerCrash, "hooks.on_worker_crash", &c.Hooks.OnWorkerCrash, &s.onWorkerCrash)
		b.decodeDuration(h.Timeout, "hooks.timeout", &c.Hooks.Timeout, &s.hookTimeout)
	}
	if sd := fc.Systemd; sd != nil {
		b.decodeValue(sd.FDStore, "systemd.fd_store", &c.Systemd.FDStore, &s.fdStore)
		b.decodeValue(sd.WatchdogMinReady, "systemd.watchdog_min_ready", &c.Systemd.WatchdogMinReady, &s.watchdogMinReady)
	}
	if n := fc.Notify; n != nil {
		b.decodeValue(n.Abstract, "notify.abstract", &c.Notify.Abstract, &s.notifyAbstract)
		if b.decodeValue(n.Directory, "notify.directory", &c.Notify.Directory, &s.notifyDirectory) {
			c.Notify.Directory = b.resolvePath(c.Notify.Directory, false)
		}
	}
	if ctl := fc.Control; ctl != nil {
		if b.decodeValue(ctl.Socket, "control.socket", &c.Control.Socket, &s.socket) {
			c.Control.Socket = b.resolvePath(c.Control.Socket, false)
		}
		b.decodeValue(ctl.WorkerAccess, "control.worker_access", &c.Control.WorkerAccess, &s.workerAccess)
	}
	if cg := fc.Cgroups; cg != nil {
		b.decodeValue(cg.Mode, "cgroups.mode", &c.Cgroups.Mode, &s.cgroupsMode)
		b.decodeSize(cg.MemoryMax, "cgroups.memory_max", &c.Cgroups.MemoryMax, &s.memoryMax)
		b.decodeSize(cg.MemoryHigh, "cgroups.memory_high", &c.Cgroups.MemoryHigh, &s.memoryHigh)
	}
	if m := fc.Metrics; m != nil {
		b.decodeMetricsListen(m.Listen)
	}
	if m := fc.Memory; m != nil {
		b.decodeDuration(m.SampleInterval, "memory.sample_interval", &c.Memory.SampleInterval, &s.sampleInterval)
		b.decodeValue(m.KSM, "memory.ksm", &c.Memory.KSM, &s.ksm)
	}
	if l := fc.Log; l != nil {
		b.decodeValue(l.Level, "log.level", &c.Log.Level, &s.level)
		b.decodeValue(l.Format, "log.format", &c.Log.Format, &s.format)
	}
	return true
}

// attrOrigin locates the attribute a: its value is the subject of a problem, the whole attribute the
// context shown around it.
func attrOrigin(what string, a *hcl.Attribute) origin {
	return origin{what: what, given: true, subject: a.Expr.Range().Ptr(), context: a.Range.Ptr()}
}

// decodeValue decodes attribute a, if present, into dst (any type gocty converts to), and records
// its origin in o. It reports whether dst was set; null counts as absent, so the default applies.
func (b *builder) decodeValue(a *hcl.Attribute, what string, dst any, o *origin) bool {
	if a == nil {
		return false
	}
	*o = attrOrigin(what, a)
	val, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		// Variables, functions: HCL's own message says what is wrong.
		b.diags = append(b.diags, diags...)
		o.failed = true
		return false
	}
	if val.IsNull() {
		o.given = false
		return false
	}
	if diags := gohcl.DecodeExpression(a.Expr, nil, dst); diags.HasErrors() {
		// gohcl says "Unsuitable value type" about the first character of the value; say which
		// type is wanted, about the whole value.
		msg := typeWanted(dst)
		reason := strings.TrimPrefix(diags[0].Detail, "Unsuitable value: ")
		if strings.HasPrefix(reason, "element ") {
			msg += ": " + reason
		}
		b.report(*o, "%s", msg)
		o.failed = true
		return false
	}
	return true
}

// typeWanted describes the type decodeValue decodes into, for a value that does not convert to it.
func typeWanted(dst any) string {
	switch dst.(type) {
	case *string:
		return "must be a string"
	case *int:
		return "must be a whole number"
	case *float64:
		return "must be a number"
	case *bool:
		return "must be true or false"
	case *[]string:
		return `must be a list of strings, like ["python3", "app.py"]`
	case *[]int:
		return "must be a list of whole numbers, like [1000, 5000]"
	case *map[string]string:
		return `must be a map of strings, like { APP_ENV = "production" }`
	}
	return "has the wrong type"
}

// decodeDuration decodes a duration written as a string for time.ParseDuration ("90s", "1m30s").
func (b *builder) decodeDuration(a *hcl.Attribute, what string, dst *time.Duration, o *origin) {
	var s string
	if !b.decodeValue(a, what, &s, o) {
		return
	}
	d, err := parseDuration(s)
	if err != nil {
		b.report(*o, "%v", err)
		o.failed = true
		return
	}
	*dst = d
}

// parseDuration is time.ParseDuration with a message that shows the expected form.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration; write a number and a unit, like \"30s\", \"2m\" or \"1m30s\"", s)
	}
	return d, nil
}

// decodeSize decodes a size in bytes: a whole number, or a string of one with a suffix K, M, G or
// T (powers of 1024, as systemd's MemoryMax= takes them; "KiB", "MiB"... too).
func (b *builder) decodeSize(a *hcl.Attribute, what string, dst *uint64, o *origin) {
	if a == nil {
		return
	}
	if val, diags := a.Expr.Value(nil); !diags.HasErrors() && val.Type() == cty.Number && !val.IsNull() {
		*o = attrOrigin(what, a)
		n, accuracy := val.AsBigFloat().Uint64()
		if !val.AsBigFloat().IsInt() || accuracy != big.Exact {
			b.report(*o, "must be a size in bytes, like \"512M\", \"2G\" or 536870912, not %s", val.AsBigFloat().Text('g', -1))
			o.failed = true
			return
		}
		*dst = n
		return
	}
	var s string
	if !b.decodeValue(a, what, &s, o) {
		return
	}
	n, err := parseSize(s)
	if err != nil {
		b.report(*o, "%v", err)
		o.failed = true
		return
	}
	*dst = n
}

// parseSize parses "512M" and the like (see decodeSize).
func parseSize(s string) (uint64, error) {
	bad := fmt.Errorf("%q is not a size; write a whole number of bytes with a suffix K, M, G or T, like \"512M\" or \"2G\"", s)
	digits := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	suffix := strings.TrimSpace(s[len(digits):])
	shift := 0
	switch strings.TrimSuffix(strings.TrimSuffix(suffix, "iB"), "B") {
	case "":
	case "K", "k":
		shift = 10
	case "M":
		shift = 20
	case "G":
		shift = 30
	case "T":
		shift = 40
	default:
		return 0, bad
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || digits == "" {
		return 0, bad
	}
	if n > math.MaxUint64>>shift {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return n << shift, nil
}

// decodeReforkAfter decodes refork_after: request counts greater than 0, perhaps ending with false
// (the list does not repeat its last count), as pitchfork's refork_after does. [] (or [false])
// disables automatic reforks.
func (b *builder) decodeReforkAfter(a *hcl.Attribute) {
	s := &b.src
	if a == nil {
		return
	}
	s.reforkAfter = attrOrigin("fork_worker.refork_after", a)
	val, diags := a.Expr.Value(nil)
	if diags.HasErrors() {
		b.diags = append(b.diags, diags...)
		s.reforkAfter.failed = true
		return
	}
	if val.IsNull() {
		s.reforkAfter.given = false
		return
	}
	const form = "must be a list of request counts, perhaps ending with false: [1000] refork after every 1000 requests, [1000, false] once, [] never"
	if !val.Type().IsTupleType() && !val.Type().IsListType() || !val.IsWhollyKnown() {
		b.report(s.reforkAfter, "%s", form)
		s.reforkAfter.failed = true
		return
	}
	fw := b.cfg.ForkWorker
	fw.ReforkAfter, fw.ReforkAfterRepeats = []uint64{}, true
	elems := val.AsValueSlice()
	for i, e := range elems {
		switch {
		case e.Type() == cty.Bool && e.False() && i == len(elems)-1:
			fw.ReforkAfterRepeats = false
		case e.Type() == cty.Bool:
			b.report(s.reforkAfter, "%s: false may only end the list, and true has no meaning here", form)
			s.reforkAfter.failed = true
			return
		case e.Type() != cty.Number || e.IsNull():
			b.report(s.reforkAfter, "%s: element %d is not a number", form, i)
			s.reforkAfter.failed = true
			return
		default:
			f := e.AsBigFloat()
			n, accuracy := f.Uint64()
			if !f.IsInt() || accuracy != big.Exact || n == 0 {
				b.report(s.reforkAfter, "entries must be whole request counts greater than 0, not %s ([] disables automatic reforks)",
					e.AsBigFloat().Text('g', -1))
				s.reforkAfter.failed = true
				return
			}
			fw.ReforkAfter = append(fw.ReforkAfter, n)
		}
	}
}

// decodeCommand decodes the argv list, keeping each element's range so a problem with the program
// name points at it.
func (b *builder) decodeCommand(a *hcl.Attribute) {
	s := &b.src
	if a == nil {
		return
	}
	if val, diags := a.Expr.Value(nil); !diags.HasErrors() && val.Type() == cty.String {
		// The common mistake, from shell habits and Procfiles: say what to write instead of
		// gohcl's "list of string required".
		s.command = attrOrigin("command", a)
		b.report(s.command, "must be a list of strings, like [\"python3\", \"app.py\"]: no shell splits it")
		s.command.failed = true
		return
	}
	if !b.decodeValue(a, "command", &b.cfg.Command, &s.command) {
		return
	}
	if elems, diags := hcl.ExprList(a.Expr); !diags.HasErrors() && len(elems) == len(b.cfg.Command) {
		for _, e := range elems {
			s.commandArgs = append(s.commandArgs, origin{
				what: "command", given: true, subject: e.Range().Ptr(), context: a.Range.Ptr(),
			})
		}
	}
}

// decodeEnv decodes the env map, keeping each key's range for problems with one variable.
func (b *builder) decodeEnv(a *hcl.Attribute) {
	s := &b.src
	if !b.decodeValue(a, "env", &b.cfg.Env, &s.env) {
		return
	}
	pairs, diags := hcl.ExprMap(a.Expr)
	if diags.HasErrors() {
		return // not a literal map; problems are reported against the whole attribute
	}
	s.envKeys = map[string]origin{}
	for _, kv := range pairs {
		var key string
		if gohcl.DecodeExpression(kv.Key, nil, &key).HasErrors() {
			continue
		}
		s.envKeys[key] = origin{what: "env", given: true, subject: kv.Key.Range().Ptr(), context: a.Range.Ptr()}
	}
}

// decodeMetricsListen decodes metrics.listen, a listen URL as a listen block's address.
func (b *builder) decodeMetricsListen(a *hcl.Attribute) {
	var url string
	if !b.decodeValue(a, "metrics.listen", &url, &b.src.metricsListen) {
		return
	}
	b.setMetricsListen(url, false)
}

// setMetricsListen sets metrics.listen from url, reported at b.src.metricsListen; a relative unix
// path is resolved as resolvePath does for the file (fromFlag false) or a flag.
func (b *builder) setMetricsListen(url string, fromFlag bool) {
	network, address, err := parseListenURL(url)
	if err != nil {
		b.report(b.src.metricsListen, "%v", err)
		b.src.metricsListen.failed = true
		return
	}
	if network == "unix" && !strings.HasPrefix(address, "@") {
		address = b.resolvePath(address, fromFlag)
	}
	b.cfg.Metrics = Metrics{Network: network, Address: address}
}

// decodeListener decodes one listen block.
func (b *builder) decodeListener(fl *fileListen) {
	what := func(attr string) string { return fmt.Sprintf("listen %q %s", fl.Name, attr) }
	l := Listener{Name: fl.Name}
	ls := listenerSources{
		name:      origin{what: fmt.Sprintf("listen %q", fl.Name), given: true, subject: fl.NameRange.Ptr()},
		address:   origin{what: what("address")},
		backlog:   origin{what: what("backlog")},
		reusePort: origin{what: what("reuseport")},
		mode:      origin{what: what("mode")},
	}
	var url string
	if fl.Address == nil {
		b.report(origin{what: ls.name.what, subject: fl.DefRange.Ptr()},
			`needs an address, like address = "tcp://127.0.0.1:8080"`)
		ls.address.failed = true
	} else if b.decodeValue(fl.Address, what("address"), &url, &ls.address) {
		network, address, err := parseListenURL(url)
		if err != nil {
			b.report(ls.address, "%v", err)
			ls.address.failed = true
		} else {
			if network == "unix" && !strings.HasPrefix(address, "@") {
				address = b.resolvePath(address, false)
			}
			l.Network, l.Address = network, address
		}
	}
	b.decodeValue(fl.Backlog, what("backlog"), &l.Backlog, &ls.backlog)
	b.decodeValue(fl.ReusePort, what("reuseport"), &l.ReusePort, &ls.reusePort)
	var mode string
	if b.decodeValue(fl.Mode, what("mode"), &mode, &ls.mode) {
		m, err := parseMode(mode)
		if err != nil {
			b.report(ls.mode, "%v", err)
			ls.mode.failed = true
		}
		l.Mode = m
	}
	b.cfg.Listeners = append(b.cfg.Listeners, l)
	b.src.listeners = append(b.src.listeners, ls)
}
