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

	"github.com/forkd/forkd/pkg/notify"
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
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			step := func(ev Event) string {
				if err := m.Step(now, ev); err != nil {
					return "error: " + err.Error() + "\n"
				}
				return formatActions(m.Ready())
			}
			// stepAndPrepare steps ev and plays the driver's side of a PrepareReload it causes at
			// once, with the config the arguments give, unless the script plays it later itself
			// (prepare=later).
			stepAndPrepare := func(ev Event) string {
				if err := m.Step(now, ev); err != nil {
					return "error: " + err.Error() + "\n"
				}
				actions := m.Ready()
				out := formatActions(actions)
				if slices.ContainsFunc(actions, func(a Action) bool { _, ok := a.(PrepareReload); return ok }) && !d.HasArg("prepare") {
					out += step(prepared(t, d, m))
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
					default:
						t.Fatalf("new: unknown argument %s", a.Key)
					}
				}
				var err error
				m, err = NewMachine(cfg)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				now = epoch
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
				return step(Exited{PID: intArg(t, d, "pid"), Status: st})
			case "notify":
				msg, err := notify.Parse([]byte(d.Input))
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				return step(Notified{Worker: WorkerID(intArg(t, d, "id")), Message: msg})
			case "hello":
				v := 1
				if d.HasArg("v") {
					v = intArg(t, d, "v")
				}
				return step(Hello{Worker: WorkerID(intArg(t, d, "id")), PID: optIntArg(t, d, "pid"), Version: v, Fork: d.HasArg("fork")})
			case "replied":
				var op string
				d.ScanArgs(t, "op", &op)
				return step(TemplateReplied{Worker: WorkerID(intArg(t, d, "id")), Op: op})
			case "refork":
				return step(Refork{Request: RequestID(optIntArg(t, d, "req"))})
			case "reload":
				return stepAndPrepare(Reload{Request: RequestID(optIntArg(t, d, "req"))})
			case "prepared":
				return step(prepared(t, d, m))
			case "restart":
				return step(Restart{Request: RequestID(optIntArg(t, d, "req")), KeepWorkers: d.HasArg("keep-workers")})
			case "restart-failed":
				return step(RestartFailed{Err: errors.New("the new binary speaks another handover version")})
			case "exec":
				// The hot restart's exec: a new machine restored from this one's export.
				st, err := m.Export(now)
				if err != nil {
					return "error: " + err.Error() + "\n"
				}
				if m, err = Restore(m.Config(), st, now); err != nil {
					return "error: " + err.Error() + "\n"
				}
				return stepAndPrepare(Tick{})
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
				return step(NotifyRejected{PID: intArg(t, d, "pid"), Reason: "sender is not a worker", Count: uint64(optIntArg(t, d, "count"))})
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
			if a.Template != 0 {
				fmt.Fprintf(&b, " fork-from=%d", a.Template)
			}
			if a.Channel {
				b.WriteString(" channel")
			}
			b.WriteString("\n")
		case CancelSpawn:
			fmt.Fprintf(&b, "cancel-spawn id=%d\n", a.Worker)
		case ControlWorker:
			fmt.Fprintf(&b, "control id=%d %s", a.Worker, a.Op)
			if a.Op == "welcome" {
				fmt.Fprintf(&b, " worker=%d gen=%d", a.Slot, a.Generation)
			}
			if a.Error != "" {
				fmt.Fprintf(&b, " error=%q", a.Error)
			}
			b.WriteString("\n")
		case SignalWorker:
			fmt.Fprintf(&b, "signal id=%d pid=%d %s\n", a.Worker, a.PID, signalName(a.Signal))
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
		case RolloutEnded:
			fmt.Fprintf(&b, "%s ended gen=%d", a.Kind, a.Generation)
			if a.Err != nil {
				b.WriteString(" failed")
			}
			b.WriteString("\n")
		case WorkerCrashed:
			fmt.Fprintf(&b, "crashed worker=%d pid=%d\n", a.Slot, a.PID)
		case PrepareReload:
			fmt.Fprintf(&b, "prepare-reload gen=%d", a.Generation)
			if a.Restart {
				b.WriteString(" restart")
			}
			b.WriteString("\n")
		case BeginRestart:
			fmt.Fprintf(&b, "begin-restart keep-workers=%v\n", a.KeepWorkers)
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
	if st.Rollout != "" {
		fmt.Fprintf(&b, " rollout=%s", st.Rollout)
	}
	if len(st.Queued) > 0 {
		fmt.Fprintf(&b, " queued=%s", strings.Join(st.Queued, ","))
	}
	if l := st.LastRollout; l.Seq != 0 {
		fmt.Fprintf(&b, " last=%s#%d", l.Kind, l.Seq)
		if l.Err != nil {
			b.WriteString("(failed)")
		}
	}
	if st.Forking {
		b.WriteString(" forking")
	}
	if st.Strays > 0 {
		fmt.Fprintf(&b, " strays=%d", st.Strays)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "status: %s\n", st.StatusLine)
	for _, w := range st.Workers {
		fmt.Fprintf(&b, "worker %d: id=%d pid=%d state=%s restarts=%d crashes=%d", w.Index, w.ID, w.PID, w.State, w.Restarts, w.Crashes)
		if w.StatusLine != "" {
			fmt.Fprintf(&b, " status=%q", w.StatusLine)
		}
		if w.Requests != 0 {
			fmt.Fprintf(&b, " requests=%d", w.Requests)
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
		for _, flag := range []struct {
			on   bool
			name string
		}{{w.Template, "template"}, {w.Forked, "forked"}, {w.Replacement, "replacement"}, {w.Detached, "detached"}} {
			if flag.on {
				b.WriteString(" " + flag.name)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// prepared is the driver's answer to PrepareReload in a script: the config as it is, with workers=N
// a new worker count, or with bad-config a config that does not load.
func prepared(t *testing.T, d *datadriven.TestData, m *Machine) ReloadPrepared {
	if d.HasArg("bad-config") {
		return ReloadPrepared{Err: errors.New("cluster: invalid config: forkd.hcl:2,11-12: workers: 0 is out of range 1..1024")}
	}
	if !d.HasArg("workers") {
		return ReloadPrepared{}
	}
	cfg := m.cfg
	cfg.Workers = intArg(t, d, "workers")
	return ReloadPrepared{Config: &cfg}
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
