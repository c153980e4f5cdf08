package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// epoch is the simulated clock's zero; scripts print times relative to it.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func testConfig() Config {
	return Config{
		Workers:         2,
		MaxWorkers:      8,
		BootTimeout:     10 * time.Second,
		ShutdownTimeout: 5 * time.Second,
		BackoffMin:      time.Second,
		BackoffMax:      8 * time.Second,
		ResetAfter:      30 * time.Second,
		ForkTimeout:     5 * time.Second,
		MaxSurge:        1,
	}
}

// TestScripts runs testdata/*.txt: each command steps the machine and prints the actions it
// emits (log records below warn level are left out), so a script reads as a story of the cluster.
// Rewrite the expected output with: go test ./pkg/cluster -run TestScripts -rewrite
func TestScripts(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		var m *Machine
		now := epoch
		// exec is the state of the last ExecRestart, for the exec that follows; specs numbers the
		// specs of the configs the scripts' reloads load.
		var exec *State
		var specs SpecHandle
		batch := func(ev Event) ([]Action, error) {
			if err := m.Step(now, ev); err != nil {
				return nil, err
			}
			actions := m.Ready()
			m.Advance()
			for _, a := range actions {
				if x, ok := a.(ExecRestart); ok {
					exec = &x.State
				}
			}
			return actions, nil
		}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			step := func(ev Event) string {
				actions, err := batch(ev)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				return formatActions(actions)
			}
			// stepAndPrepare steps ev and plays the driver's side of a LoadConfig it causes at once,
			// with the config the arguments give, unless the script plays it later itself
			// (prepare=later).
			stepAndPrepare := func(ev Event) string {
				actions, err := batch(ev)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				out := formatActions(actions)
				if slices.ContainsFunc(actions, func(a Action) bool { _, ok := a.(LoadConfig); return ok }) && !d.HasArg("prepare") {
					out += step(prepared(t, d, m, &specs))
				}
				return out
			}
			switch d.Cmd {
			case "new":
				cfg := testConfig()
				for _, a := range d.CmdArgs {
					v := a.Vals[0]
					switch a.Key {
					case "workers":
						cfg.Workers = atoi(t, v)
					case "boot":
						cfg.BootTimeout = duration(t, v)
					case "heartbeat":
						cfg.HeartbeatTimeout = duration(t, v)
					case "shutdown":
						cfg.ShutdownTimeout = duration(t, v)
					case "ready-on-start":
						cfg.ReadyOnStart = v == "true"
					case "fork":
						cfg.ForkWorker = v == "true"
					case "fork-timeout":
						cfg.ForkTimeout = duration(t, v)
					case "mold":
						cfg.Mold = v == "true"
					case "refork-nice":
						cfg.ReforkNice = atoi(t, v)
					case "carry-heap":
						cfg.CarryHeapSize = v == "true"
					case "heap-set":
						// The app's environment sets RUBY_GC_HEAP_INIT_SLOTS=v.
						cfg.HeapSizeSet = "RUBY_GC_HEAP_INIT_SLOTS=" + v
					case "refork-after":
						// As in the config file: the last count repeats, unless false ends the list.
						cfg.ReforkAfterRepeats = true
						for _, v := range a.Vals {
							if v == "false" {
								cfg.ReforkAfterRepeats = false
								continue
							}
							cfg.ReforkAfter = append(cfg.ReforkAfter, uint64(atoi(t, v)))
						}
					case "max-surge":
						cfg.MaxSurge = atoi(t, v)
					case "max-unavailable":
						cfg.MaxUnavailable = atoi(t, v)
					case "hooks":
						// Each hook named runs a command of its name.
						for _, h := range a.Vals {
							hook := map[string]*[]string{"before_reload": &cfg.Hooks.BeforeReload, "after_reload": &cfg.Hooks.AfterReload,
								"before_restart": &cfg.Hooks.BeforeRestart, "on_worker_crash": &cfg.Hooks.OnWorkerCrash}[h]
							if hook == nil {
								t.Fatalf("new: unknown hook %s", h)
							}
							*hook = []string{"./" + h + ".sh"}
						}
					case "watchdog-min-ready":
						cfg.WatchdogMinReady = atoi(t, v)
					case "warm-up":
						// warm-up=(requests=N,max-wait=D)
						for _, kv := range a.Vals {
							k, v, _ := strings.Cut(kv, "=")
							switch k {
							case "requests":
								cfg.WarmUp.Requests = uint64(atoi(t, v))
							case "max-wait":
								cfg.WarmUp.MaxWait = duration(t, v)
							default:
								t.Fatalf("new: unknown warm-up setting %s", k)
							}
						}
					case "recycle":
						// recycle=(requests=N,jitter=N,private=MiB,lifetime=D)
						for _, kv := range a.Vals {
							k, v, _ := strings.Cut(kv, "=")
							switch p := &cfg.Recycle; k {
							case "requests":
								p.MaxRequests = uint64(atoi(t, v))
							case "jitter":
								p.MaxRequestsJitter = uint64(atoi(t, v))
							case "private":
								p.MaxPrivate = uint64(atoi(t, v)) << 20
							case "lifetime":
								p.MinLifetime = duration(t, v)
							default:
								t.Fatalf("new: unknown recycle setting %s", k)
							}
						}
					case "decay":
						// refork_on_decay: growth=MiB, ratio=R, interval=D, confirm=N, fruitless=N.
						cfg.ReforkOnDecay = &DecayPolicy{MinInterval: time.Minute}
						for _, kv := range a.Vals {
							k, v, _ := strings.Cut(kv, "=")
							switch p := cfg.ReforkOnDecay; k {
							case "growth":
								p.PrivateGrowth = uint64(atoi(t, v)) << 20
							case "ratio":
								r, err := strconv.ParseFloat(v, 64)
								if err != nil {
									t.Fatal(err)
								}
								p.Ratio = r
							case "interval":
								p.MinInterval = duration(t, v)
							case "confirm":
								p.Confirm = atoi(t, v)
							case "fruitless":
								p.MaxFruitless = atoi(t, v)
							default:
								t.Fatalf("new: unknown decay setting %s", k)
							}
						}
					default:
						t.Fatalf("new: unknown argument %s", a.Key)
					}
				}
				cfg.Spec = 1
				var err error
				m, err = NewMachine(cfg)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				now, exec, specs = epoch, nil, 1
				return ""
			case "start":
				return step(Start{})
			case "spawned":
				return step(Spawned{Worker: WorkerID(intArg(t, d, "id")), PID: intArg(t, d, "pid")})
			case "spawn-failed":
				return step(SpawnFailed{Worker: WorkerID(intArg(t, d, "id")), Err: "fork: resource temporarily unavailable"})
			case "exit":
				st := ExitStatus{}
				if d.HasArg("signal") {
					var sig string
					d.ScanArgs(t, "signal", &sig)
					st.Signal = map[string]syscall.Signal{"KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM, "SEGV": syscall.SIGSEGV}[sig]
				} else if d.HasArg("code") {
					st.Code = intArg(t, d, "code")
				}
				e := Exited{PID: intArg(t, d, "pid"), Status: st}
				if d.HasArg("oom") {
					// The kernel's OOM killer, in the worker's cgroup, at memory.max (oom=0: none).
					e.OOM = OOMKill{Killed: true, MemoryMax: uint64(optIntArg(t, d, "oom"))}
				}
				return step(e)
			case "notify":
				return step(Notified{Worker: WorkerID(intArg(t, d, "id")), Message: parseNotification(t, d.Input)})
			case "hello":
				v := 1
				if d.HasArg("v") {
					v = intArg(t, d, "v")
				}
				hello := Hello{Worker: WorkerID(intArg(t, d, "id")), PID: optIntArg(t, d, "pid"), Fork: d.HasArg("fork"), Mold: d.HasArg("mold")}
				if v != 1 {
					// What the driver says when it decodes a hello of another version.
					hello.Mismatch = fmt.Sprintf("this forkd master speaks protocol 1, the worker speaks %d: upgrade the worker's SDK or forkd", v)
				}
				return step(hello)
			case "mold-refused":
				return step(MoldRefused{Worker: WorkerID(intArg(t, d, "id")), Err: `unknown op "mold"`})
			case "replied":
				var op string
				d.ScanArgs(t, "op", &op)
				if op == "paused" {
					return step(TemplatePaused{Worker: WorkerID(intArg(t, d, "id"))})
				}
				return step(TemplateResumed{Worker: WorkerID(intArg(t, d, "id"))})
			case "refork":
				return step(Refork{Request: RequestID(optIntArg(t, d, "req"))})
			case "reload":
				return stepAndPrepare(Reload{Request: RequestID(optIntArg(t, d, "req"))})
			case "prepared":
				return step(prepared(t, d, m, &specs))
			case "hook-done":
				// The hook's end: exit status 0, or 1 with fail.
				e := HookFinished{ID: HookID(intArg(t, d, "id"))}
				if d.HasArg("fail") {
					e.Status, e.Output = ExitStatus{Code: 1}, "the hook said no"
				}
				return step(e)
			case "watchdog":
				return step(WatchdogDue{})
			case "restart":
				return step(Restart{Request: RequestID(optIntArg(t, d, "req")), KeepWorkers: d.HasArg("keep-workers")})
			case "restart-failed":
				return step(RestartChecked{Err: errors.New("the new binary speaks another handover version")})
			case "restart-checked":
				return step(RestartChecked{})
			case "exec", "exec-failed":
				// The hot restart's exec (the new binary passed its check, unless a before_restart
				// hook ran for it): a new machine restored from the state ExecRestart carried,
				// whose first event is Adopted. Or an exec that fails.
				out := ""
				if exec == nil {
					out = step(RestartChecked{})
				}
				if exec == nil {
					return out + "(no exec)\n"
				}
				st := *exec
				exec = nil
				if d.Cmd == "exec-failed" {
					return out + step(ExecFailed{Err: errors.New("exec /usr/sbin/forkd: permission denied")})
				}
				restored, err := Restore(m.Config(), st, now)
				if err != nil {
					return out + "error: " + err.Error() + "\n"
				}
				m = restored
				return out + "-- the new image --\n" + stepAndPrepare(Adopted{})
			case "stray":
				return step(StrayFound{PID: intArg(t, d, "pid"), Group: d.HasArg("group")})
			case "stall":
				// forkd did not run for the duration: the clock moves on, then the driver says so.
				d := duration(t, d.CmdArgs[0].Key)
				now = now.Add(d)
				return step(Stalled{For: d})
			case "group-empty":
				return step(GroupEmptied{PGID: intArg(t, d, "pgid")})
			case "reject":
				return step(NotifyRejected{PID: intArg(t, d, "pid"), Reason: DropUnknownSender, Detail: "sender is not a worker", Count: uint64(optIntArg(t, d, "count"))})
			case "tick":
				if len(d.CmdArgs) > 0 {
					now = now.Add(duration(t, d.CmdArgs[0].Key))
				}
				return step(Tick{})
			case "advance":
				now = now.Add(duration(t, d.CmdArgs[0].Key))
				return ""
			case "stop":
				return step(Stop{Request: RequestID(optIntArg(t, d, "req")), Immediate: d.HasArg("immediate")})
			case "scale":
				return step(Scale{Request: RequestID(optIntArg(t, d, "req")), Workers: optIntArg(t, d, "workers"), Delta: optIntArg(t, d, "delta")})
			case "sample":
				// A memory sample, after the time given: one line per process, "PID PRIVATE_DIRTY_MIB".
				if len(d.CmdArgs) > 0 {
					now = now.Add(duration(t, d.CmdArgs[0].Key))
				}
				e := MemorySampled{At: now, Processes: map[int]Memory{}}
				for _, line := range strings.Split(strings.TrimSpace(d.Input), "\n") {
					f := strings.Fields(line)
					if len(f) != 2 {
						t.Fatalf("sample: %q is not \"PID MIB\"", line)
					}
					private := uint64(atoi(t, f[1])) << 20
					e.Processes[atoi(t, f[0])] = Memory{PSS: private, PrivateDirty: private}
				}
				return step(e)
			case "deadline":
				if dl, ok := m.NextDeadline(); ok {
					return fmt.Sprintf("next deadline at +%s\n", dl.Sub(epoch))
				}
				return "no deadline\n"
			case "status":
				return formatStatus(m.Status())
			default:
				t.Fatalf("unknown command %q", d.Cmd)
				return ""
			}
		})
	})
}

func formatActions(actions []Action) string {
	var b strings.Builder
	for _, a := range actions {
		switch a := a.(type) {
		case SpawnWorker:
			fmt.Fprintf(&b, "spawn id=%d slot=%d gen=%d", a.Worker, a.Slot, a.Generation)
			if a.Mold {
				fmt.Fprintf(&b, " mold-from=%d", a.Template)
			} else if a.Template != 0 {
				fmt.Fprintf(&b, " fork-from=%d", a.Template)
			} else if a.Spec != 1 {
				fmt.Fprintf(&b, " spec=%d", a.Spec)
			}
			if a.Channel {
				b.WriteString(" channel")
			}
			if a.HeapSize != nil {
				fmt.Fprintf(&b, " env=%s(from-gen=%d)", a.HeapSize, a.HeapSize.Generation)
			}
			b.WriteString("\n")
		case CancelSpawn:
			fmt.Fprintf(&b, "cancel-spawn id=%d\n", a.Worker)
		case SendWelcome:
			fmt.Fprintf(&b, "control id=%d welcome worker=%d gen=%d", a.Worker, a.Slot, a.Generation)
			if a.NonServing {
				b.WriteString(" serve=false")
			}
			if a.ReportHeap {
				b.WriteString(" report-heap")
			}
			b.WriteString("\n")
		case SendRefuse:
			fmt.Fprintf(&b, "control id=%d refuse error=%q\n", a.Worker, a.Reason)
		case PauseTemplate:
			fmt.Fprintf(&b, "control id=%d pause\n", a.Worker)
		case ResumeTemplate:
			fmt.Fprintf(&b, "control id=%d resume\n", a.Worker)
		case SignalWorker:
			fmt.Fprintf(&b, "signal id=%d pid=%d %s\n", a.Worker, a.PID, signalName(a.Signal))
		case SetPriority:
			fmt.Fprintf(&b, "priority id=%d pid=%d nice=%d\n", a.Worker, a.PID, a.Nice)
		case SignalStray:
			what := "pid"
			if a.Group {
				what = "pgid"
			}
			fmt.Fprintf(&b, "signal stray %s=%d %s\n", what, a.PID, signalName(a.Signal))
		case NotifySystemd:
			fmt.Fprintf(&b, "systemd %q\n", a.State)
		case Reply:
			fmt.Fprintf(&b, "reply req=%d", a.Request)
			if a.Err != nil {
				fmt.Fprintf(&b, " error=%q", a.Err)
			}
			if a.Result != nil {
				fmt.Fprintf(&b, " result=%+v", a.Result)
			}
			b.WriteString("\n")
		case Log:
			if a.Level < slog.LevelWarn {
				continue
			}
			fmt.Fprintf(&b, "log %s: %s\n", a.Level, a.Msg)
		case Exit:
			fmt.Fprintf(&b, "exit code=%d\n", a.Code)
		case Record:
			// The records that tell the story: a rollout's end, an exit forkd did not ask for.
			switch r := a.What.(type) {
			case RolloutEnded:
				fmt.Fprintf(&b, "%s ended gen=%d", r.Kind, r.Generation)
				if r.Err != nil {
					b.WriteString(" failed")
				}
				b.WriteString("\n")
			case WorkerExited:
				if r.Reason != ExitStopped {
					fmt.Fprintf(&b, "exited worker=%d pid=%d reason=%s\n", r.Slot, r.PID, r.Reason)
				}
			case RolloutStarted:
				if r.Trigger == TriggerMemory {
					fmt.Fprintf(&b, "%s started gen=%d trigger=%s\n", r.Kind, r.Generation, r.Trigger)
				}
			case WorkerRecycling:
				fmt.Fprintf(&b, "recycling worker=%d pid=%d reason=%s\n", r.Slot, r.PID, r.Reason)
			case DecayJudged:
				fmt.Fprintf(&b, "decay judged before=%s after=%s fruitful=%v stopped=%v\n", mib(r.Before), mib(r.After), r.Fruitful, r.Stopped)
			}
		case LoadConfig:
			fmt.Fprintf(&b, "load-config gen=%d\n", a.Generation)
		case ReleaseSpec:
			fmt.Fprintf(&b, "release-spec %d\n", a.Spec)
		case RunHook:
			fmt.Fprintf(&b, "hook id=%d %s %v %v\n", a.ID, a.Hook, a.Argv, a.Vars)
		case CheckRestart:
			fmt.Fprintf(&b, "check-restart keep-workers=%v\n", a.KeepWorkers)
		case ExecRestart:
			fmt.Fprintf(&b, "exec-restart workers=%d\n", len(a.State.Workers))
		default:
			fmt.Fprintf(&b, "%T %+v\n", a, a)
		}
	}
	return b.String()
}

func formatStatus(st Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase=%s generation=%d desired=%d ready=%d dropped=%d", st.Phase, st.Generation, st.Desired, st.Ready, st.Dropped)
	if st.Late > 0 {
		fmt.Fprintf(&b, " late=%d", st.Late)
	}
	if st.Rollout != NoRollout {
		fmt.Fprintf(&b, " rollout=%s", st.Rollout)
	}
	if len(st.Queued) > 0 {
		var kinds []string
		for _, k := range st.Queued {
			kinds = append(kinds, k.String())
		}
		fmt.Fprintf(&b, " queued=%s", strings.Join(kinds, ","))
	}
	if l := st.LastRollout; l.Seq != 0 {
		fmt.Fprintf(&b, " last=%s#%d", l.Kind, l.Seq)
		switch {
		case l.Err != nil && l.Target != 0:
			fmt.Fprintf(&b, "(target=%d failed)", l.Target)
		case l.Err != nil:
			b.WriteString("(failed)")
		}
	}
	if st.Forking {
		b.WriteString(" forking")
	}
	if st.Strays > 0 {
		fmt.Fprintf(&b, " strays=%d", st.Strays)
	}
	if h := st.HeapSize; h != nil {
		fmt.Fprintf(&b, " heap=%s(gen=%d,carried=%v)", h, h.Generation, st.HeapSizeCarried)
	}
	b.WriteString("\n")
	if dc := st.Decay; dc.Enabled {
		fmt.Fprintf(&b, "decay: measured=%v", dc.Measured)
		if dc.Measured {
			fmt.Fprintf(&b, " baseline=%s current=%s threshold=%s ratio=%.2f workers=%d", mib(dc.Baseline), mib(dc.Current), mib(dc.Threshold), dc.Ratio(), dc.Workers)
		}
		fmt.Fprintf(&b, " fruitless=%d stopped=%v\n", dc.Fruitless, dc.Stopped)
	}
	if wu := st.WarmUp; wu != nil {
		fmt.Fprintf(&b, "warm-up: worker=%d slot=%d pid=%d served=%d requests=%d until=+%s idle-until=+%s",
			wu.Worker, wu.Slot, wu.PID, wu.Served, wu.Requests, wu.Until.Sub(epoch), wu.IdleUntil.Sub(epoch))
		if wu.Mold {
			b.WriteString(" then=mold")
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "status: %s\n", st.StatusLine)
	for _, w := range st.Workers {
		fmt.Fprintf(&b, "worker %d: id=%d pid=%d state=%s restarts=%d crashes=%d", w.Index, w.ID, w.PID, w.State, w.Restarts, w.Crashes)
		if w.StatusLine != "" {
			fmt.Fprintf(&b, " status=%q", w.StatusLine)
		}
		if w.Requests != 0 {
			fmt.Fprintf(&b, " requests=%d", w.Requests)
		}
		if w.Busy != nil {
			fmt.Fprintf(&b, " busy=%d", *w.Busy)
		}
		if w.Memory != nil {
			fmt.Fprintf(&b, " private=%s", mib(w.Memory.PrivateDirty))
		}
		if w.LastExit != "" {
			fmt.Fprintf(&b, " last-exit=%q", w.LastExit)
		}
		if !w.NextSpawn.IsZero() {
			fmt.Fprintf(&b, " next-spawn=+%s", w.NextSpawn.Sub(epoch))
		}
		if w.Retiring {
			b.WriteString(" retiring")
		}
		if s := w.Source; s != nil {
			fmt.Fprintf(&b, " mold-of=(worker=%d,pid=%d,requests=%d)", s.Slot, s.PID, s.Requests)
		}
		for _, flag := range []struct {
			on   bool
			name string
		}{{w.Template, "template"}, {w.Forked, "forked"}, {w.NonServing, "non-serving"}, {w.Replacement, "replacement"}, {w.Detached, "detached"}} {
			if flag.on {
				b.WriteString(" " + flag.name)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// prepared is the driver's answer to LoadConfig in a script: the config as it is, with workers=N
// a new worker count (and a spec of its own), or with bad-config a config that does not load.
func prepared(t *testing.T, d *datadriven.TestData, m *Machine, specs *SpecHandle) ConfigLoaded {
	if d.HasArg("bad-config") {
		return ConfigLoaded{Err: errors.New("cluster: invalid config: forkd.hcl:2,11-12: workers: 0 is out of range 1..1024")}
	}
	if !d.HasArg("workers") && !d.HasArg("heap-set") {
		return ConfigLoaded{}
	}
	*specs++
	cfg := m.cfg
	if d.HasArg("workers") {
		cfg.Workers = intArg(t, d, "workers")
	}
	if d.HasArg("heap-set") {
		// The new config's env sets RUBY_GC_HEAP_INIT_SLOTS (heap-set=none: no longer).
		var v string
		d.ScanArgs(t, "heap-set", &v)
		cfg.HeapSizeSet = ""
		if v != "none" {
			cfg.HeapSizeSet = "RUBY_GC_HEAP_INIT_SLOTS=" + v
		}
	}
	cfg.Spec = *specs
	return ConfigLoaded{Config: &cfg}
}

// parseNotification reads a script's datagram: the assignments the scripts use, one a line.
func parseNotification(t *testing.T, text string) Notification {
	t.Helper()
	var n Notification
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		key, value, _ := strings.Cut(line, "=")
		switch key + "=" + value {
		case "READY=1":
			n.Ready = true
		case "STOPPING=1":
			n.Stopping = true
		case "WATCHDOG=1":
			n.Watchdog = true
		case "WATCHDOG=trigger":
			n.WatchdogTrigger = true
		default:
			switch key {
			case "STATUS":
				n.Status, n.HasStatus = value, true
			case "X_FORKD_REQUESTS":
				v, err := strconv.ParseUint(value, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				n.Requests, n.HasRequests = v, true
			case "X_FORKD_HEAP_SIZE":
				n.HeapSize, n.HasHeapSize = value, true
			case "X_FORKD_BUSY":
				v, err := strconv.Atoi(value)
				if err != nil {
					t.Fatal(err)
				}
				n.Busy, n.HasBusy = v, true
			case "WATCHDOG_USEC", "EXTEND_TIMEOUT_USEC":
				us, err := strconv.ParseInt(value, 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				if key == "WATCHDOG_USEC" {
					n.WatchdogTimeout = time.Duration(us) * time.Microsecond
				} else {
					n.ExtendTimeout = time.Duration(us) * time.Microsecond
				}
			default:
				t.Fatalf("notify: %q is not an assignment the scripts know", line)
			}
		}
	}
	return n
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func duration(t *testing.T, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func intArg(t *testing.T, d *datadriven.TestData, key string) int {
	t.Helper()
	var v int
	d.ScanArgs(t, key, &v)
	return v
}

func optIntArg(t *testing.T, d *datadriven.TestData, key string) int {
	t.Helper()
	if !d.HasArg(key) {
		return 0
	}
	return intArg(t, d, key)
}

func TestConfigValidation(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"no workers":        func(c *Config) { c.Workers = 0 },
		"too many workers":  func(c *Config) { c.Workers = 9 },
		"no boot timeout":   func(c *Config) { c.BootTimeout = 0 },
		"negative shutdown": func(c *Config) { c.ShutdownTimeout = -1 },
		"backoff inverted":  func(c *Config) { c.BackoffMax = c.BackoffMin / 2 },
		"no reset":          func(c *Config) { c.ResetAfter = 0 },
	} {
		cfg := testConfig()
		mutate(&cfg)
		if _, err := NewMachine(cfg); err == nil {
			t.Errorf("%s: NewMachine accepted %+v", name, cfg)
		}
	}
	if _, err := NewMachine(testConfig()); err != nil {
		t.Fatal(err)
	}
}

func TestBackoffDoublesUpToMax(t *testing.T) {
	m, err := NewMachine(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	var got []time.Duration
	for n := 1; n <= 7; n++ {
		got = append(got, m.backoff(n))
	}
	want := []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second, 8 * time.Second}
	if !slices.Equal(got, want) {
		t.Fatalf("backoff(1..7) = %v, want %v", got, want)
	}
	if d := m.backoff(1 << 20); d != 8*time.Second {
		t.Fatalf("backoff(huge) = %v, want the max", d)
	}
}
