package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// parseFlags parses args as forkd's command line would, with everything after "--" as the command.
func parseFlags(t *testing.T, args ...string) Flags {
	t.Helper()
	var f Flags
	fs := pflag.NewFlagSet("forkd", pflag.ContinueOnError)
	f.Register(fs)
	require.NoError(t, fs.Parse(args))
	if n := fs.ArgsLenAtDash(); n >= 0 {
		f.Command = fs.Args()[n:]
	}
	return f
}

func TestRegister(t *testing.T) {
	f := parseFlags(t,
		"-c", "demo.hcl", "--name", "web", "--workers", "3",
		"--listen", "tcp://:8080", "--listen", "unix:///run/a,b.sock",
		"--readiness", "started", "--socket", "/run/web.sock",
		"--boot-timeout", "10s", "--worker-timeout", "5s", "--shutdown-timeout", "1s",
		"--metrics-listen", "tcp://127.0.0.1:9090", "--memory-sample-interval", "2s",
		"--", "server", "--port", "8080")
	assert.Equal(t, Flags{
		Config: "demo.hcl", Name: "web", Workers: 3,
		// A comma is part of the URL: --listen is not split like a StringSlice.
		Listen:    []string{"tcp://:8080", "unix:///run/a,b.sock"},
		Readiness: "started", Socket: "/run/web.sock",
		BootTimeout: "10s", WorkerTimeout: "5s", ShutdownTimeout: "1s",
		MetricsListen: "tcp://127.0.0.1:9090", MemorySampleInterval: "2s",
		Command:      []string{"server", "--port", "8080"},
		workersGiven: true,
	}, f)

	var none Flags
	fs := pflag.NewFlagSet("forkd", pflag.ContinueOnError)
	none.Register(fs)
	require.NoError(t, fs.Parse(nil))
	assert.Equal(t, Flags{}, none, "no flags, no values")

	err := fs.Parse([]string{"--workers", "four"})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `"four" is not a whole number`)
}

func TestQuickMode(t *testing.T) {
	dir := sandbox(t)
	cfg, err := Load(parseFlags(t,
		"--workers", "4", "--listen", "tcp://127.0.0.1:8080", "--listen", "unix://app.sock",
		"--", "server", "app.py"))
	require.NoError(t, err)
	assert.Equal(t, &Config{
		Name:      "forkd",
		Command:   []string{"server", "app.py"},
		Workers:   4,
		Readiness: ReadyOnStart,
		Listeners: []Listener{
			{Name: "listen0", Network: "tcp", Address: "127.0.0.1:8080", Backlog: DefaultBacklog},
			{Name: "listen1", Network: "unix", Address: filepath.Join(dir, "app.sock"), Backlog: DefaultBacklog, Mode: DefaultSocketMode},
		},
		Timeouts: Timeouts{Boot: DefaultBootTimeout, Shutdown: DefaultShutdownTimeout},
		Restart:  Restart{BackoffMin: DefaultBackoffMin, BackoffMax: DefaultBackoffMax, ResetAfter: DefaultResetAfter},
		Rollout:  Rollout{MaxSurge: DefaultMaxSurge},
		Hooks:    Hooks{Timeout: DefaultHookTimeout},
		Systemd:  Systemd{FDStore: FDStoreAuto},
		Notify:   Notify{Directory: filepath.Dir(DefaultControlSocket("forkd"))},
		Control:  Control{Socket: DefaultControlSocket("forkd"), WorkerAccess: WorkerAccessNone},
		Cgroups:  Cgroups{Mode: CgroupsAuto},
		Memory:   Memory{SampleInterval: DefaultMemorySampleInterval},
		Log:      Log{Level: "info", Format: "auto"},
	}, cfg)
}

// TestQuickModeMetricsAndMemory: quick mode has flags for metrics.listen and
// memory.sample_interval; a relative unix path is relative to the working directory, as for
// --listen.
func TestQuickModeMetricsAndMemory(t *testing.T) {
	dir := sandbox(t)
	cfg, err := Load(parseFlags(t, "--metrics-listen", "tcp://127.0.0.1:9090", "--memory-sample-interval", "2s", "--", "server"))
	require.NoError(t, err)
	assert.Equal(t, Metrics{Network: "tcp", Address: "127.0.0.1:9090"}, cfg.Metrics)
	assert.Equal(t, 2*time.Second, cfg.Memory.SampleInterval)

	cfg, err = Load(parseFlags(t, "--metrics-listen", "unix://metrics.sock", "--", "server"))
	require.NoError(t, err)
	assert.Equal(t, Metrics{Network: "unix", Address: filepath.Join(dir, "metrics.sock")}, cfg.Metrics)

	// Over a file, the flags replace its values.
	file := writeConfig(t, "app.hcl", "command = [\"server\"]\nmetrics { listen = \"tcp://127.0.0.1:9091\" }\nmemory { sample_interval = \"30s\" }\n")
	cfg, err = Load(parseFlags(t, "--config", file, "--metrics-listen", "tcp://127.0.0.1:9092", "--memory-sample-interval", "5s"))
	require.NoError(t, err)
	assert.Equal(t, "tcp://127.0.0.1:9092", cfg.Metrics.URL())
	assert.Equal(t, 5*time.Second, cfg.Memory.SampleInterval)
}

// TestQuickModeReadiness: quick mode runs an app as it is, so its workers are ready once started,
// unless --readiness says otherwise or --fork-worker asks for an SDK, which says READY=1; a config
// file's app is expected to say READY=1.
func TestQuickModeReadiness(t *testing.T) {
	sandbox(t)
	tests := []struct {
		args []string
		want Readiness
	}{
		{[]string{"--", "server"}, ReadyOnStart},
		{[]string{"--readiness", "notify", "--", "server"}, ReadyOnNotify},
		{[]string{"--fork-worker", "--", "server"}, ReadyOnNotify},
		{[]string{"--fork-worker", "--readiness", "started", "--", "server"}, ReadyOnStart},
		{[]string{"--config", writeConfig(t, "app.hcl", "command = [\"server\"]\n")}, ReadyOnNotify},
	}
	for _, tt := range tests {
		cfg, err := Load(parseFlags(t, tt.args...))
		require.NoError(t, err, "%v", tt.args)
		assert.Equal(t, tt.want, cfg.Readiness, "%v", tt.args)
	}
}

// TestFlagProblems: in quick mode and for flags over a file, problems are plain errors naming the
// flag, never diagnostics.
func TestFlagProblems(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"workers zero", []string{"--workers", "0", "--", "server"},
			"--workers: 0 is out of range 1..1024"},
		{"workers too many", []string{"--workers", "5000", "--", "server"},
			"--workers: 5000 is out of range 1..1024"},
		{"no command", []string{"--workers", "2"},
			`command: missing: give the program to run after "--", like forkd --listen tcp://:8080 -- python3 app.py`},
		{"command not found", []string{"--", "pythn3", "app.py"},
			`command: "pythn3" not found in PATH`},
		{"command empty program", []string{"--", "", "app.py"},
			`command: the program name (the first element) must not be empty`},
		{"listen bad scheme", []string{"--listen", "http://:80", "--", "server"},
			`--listen: "http://:80" has the unknown scheme "http"; use tcp, tcp4, tcp6 or unix`},
		{"listen bad port", []string{"--listen", "tcp://:99999", "--", "server"},
			`--listen: "tcp://:99999": port 99999 is out of range 0..65535`},
		{"listen duplicate", []string{"--listen", "tcp://:80", "--listen", "tcp://:80", "--", "server"},
			`--listen: "tcp://:80" is already used by listener "listen0"`},
		{"readiness", []string{"--readiness", "ready", "--", "server"},
			`--readiness: "ready" is not one of "notify", "started"`},
		{"name", []string{"--name", "my/app", "--", "server"},
			`--name: "my/app" may contain only letters, digits and "_.@-", not '/'`},
		{"boot timeout not a duration", []string{"--boot-timeout", "10", "--", "server"},
			`--boot-timeout: "10" is not a duration; write a number and a unit, like "30s", "2m" or "1m30s"`},
		{"boot timeout zero", []string{"--boot-timeout", "0s", "--", "server"},
			`--boot-timeout: must be greater than 0, not 0s`},
		{"worker timeout negative", []string{"--worker-timeout", "-1s", "--", "server"},
			`--worker-timeout: must not be negative (0s turns heartbeats off), not -1s`},
		{"shutdown timeout", []string{"--shutdown-timeout", "soon", "--", "server"},
			`--shutdown-timeout: "soon" is not a duration`},
		{"metrics listen bad scheme", []string{"--metrics-listen", "http://:9090", "--", "server"},
			`--metrics-listen: "http://:9090" has the unknown scheme "http"`},
		{"metrics listen on a worker listener", []string{"--listen", "tcp://127.0.0.1:8080", "--metrics-listen", "tcp://127.0.0.1:8080", "--", "server"},
			`--metrics-listen: is the address of listen "listen0", where the workers serve`},
		{"memory sample interval too short", []string{"--memory-sample-interval", "100ms", "--", "server"},
			`--memory-sample-interval: must be at least 1s (each sample reads every worker's page tables), not 100ms`},
		{"memory sample interval not a duration", []string{"--memory-sample-interval", "often", "--", "server"},
			`--memory-sample-interval: "often" is not a duration`},
		{"socket too long", []string{"--socket", "/" + strings.Repeat("s", 120), "--", "server"},
			`--socket: "/` + strings.Repeat("s", 120) + `" is 121 bytes long`},
		{"several", []string{"--workers", "0", "--readiness", "x"},
			"--workers: 0 is out of range 1..1024\n" +
				"--readiness: \"x\" is not one of \"notify\", \"started\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sandbox(t)
			_, err := Load(parseFlags(t, tt.args...))
			require.Error(t, err)
			var diagErr *DiagnosticsError
			assert.False(t, errors.As(err, &diagErr), "flag problems are plain errors")
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

const overriddenConfig = `
name     = "demo"
command  = ["server"]
workers  = 2
listen "http" { address = "tcp://:8080" }
listen "admin" { address = "tcp://127.0.0.1:8081" }
timeouts {
  boot   = "5s"
  worker = "10s"
}
control { socket = "demo.sock" }
`

func TestFlagsOverrideFile(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		check func(t *testing.T, cfg *Config)
	}{
		{"nothing given keeps the file", nil, func(t *testing.T, cfg *Config) {
			assert.Equal(t, "demo", cfg.Name)
			assert.Equal(t, 2, cfg.Workers)
			assert.Len(t, cfg.Listeners, 2)
			assert.Equal(t, 5*time.Second, cfg.Timeouts.Boot)
			assert.Equal(t, []string{"server"}, cfg.Command)
		}},
		{"workers", []string{"--workers", "8"}, func(t *testing.T, cfg *Config) {
			assert.Equal(t, 8, cfg.Workers)
		}},
		{"name keeps the file's socket", []string{"--name", "other"}, func(t *testing.T, cfg *Config) {
			assert.Equal(t, "other", cfg.Name)
			assert.Equal(t, "demo.sock", filepath.Base(cfg.Control.Socket), "the file's socket still wins over the default")
		}},
		{"listen replaces every listen block", []string{"--listen", "tcp://:9090"}, func(t *testing.T, cfg *Config) {
			assert.Equal(t, []Listener{{Name: "listen0", Network: "tcp", Address: ":9090", Backlog: DefaultBacklog}}, cfg.Listeners)
		}},
		{"one timeout leaves the others", []string{"--boot-timeout", "1m"}, func(t *testing.T, cfg *Config) {
			assert.Equal(t, time.Minute, cfg.Timeouts.Boot)
			assert.Equal(t, 10*time.Second, cfg.Timeouts.Worker)
			assert.Equal(t, DefaultShutdownTimeout, cfg.Timeouts.Shutdown)
		}},
		{"readiness", []string{"--readiness", "started"}, func(t *testing.T, cfg *Config) {
			assert.Equal(t, ReadyOnStart, cfg.Readiness)
		}},
		{"socket is relative to the working directory", []string{"--socket", "ctl.sock"}, func(t *testing.T, cfg *Config) {
			assert.Equal(t, filepath.Join(mustAbs(t, "."), "ctl.sock"), cfg.Control.Socket)
		}},
		{"command replaces the file's", []string{"--", "bin/server", "--debug"}, func(t *testing.T, cfg *Config) {
			assert.Equal(t, []string{"bin/server", "--debug"}, cfg.Command)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sandbox(t)
			// The default notify.directory is the control socket's, too long in a sandbox named
			// after a long subtest.
			t.Setenv("RUNTIME_DIRECTORY", "/run/forkd/demo")
			path := writeConfig(t, "demo.hcl", overriddenConfig)
			cfg, err := Load(parseFlags(t, append([]string{"--config", path}, tt.args...)...))
			require.NoError(t, err)
			tt.check(t, cfg)
		})
	}
}

// TestFlagsOverBadFile: a value a flag replaces is not validated (it is never used), and flag
// problems are reported before the file's.
func TestFlagsOverBadFile(t *testing.T) {
	sandbox(t)
	path := writeConfig(t, "demo.hcl", "command = [\"server\"]\nworkers = 0\n")

	_, err := Load(parseFlags(t, "--config", path, "--workers", "2"))
	assert.NoError(t, err, "the flag replaces the bad value, which is never used")

	// A bad flag is reported first, as a plain error, even when the file has problems too.
	path = writeConfig(t, "bad.hcl", "command = [\"server\"]\nreadiness = \"x\"\n")
	_, err = Load(parseFlags(t, "--config", path, "--workers", "0"))
	require.Error(t, err)
	assert.Equal(t, "--workers: 0 is out of range 1..1024", err.Error())

	_, err = Load(parseFlags(t, "--config", path, "--workers", "2"))
	require.Error(t, err)
	assert.Contains(t, diagnosticsText(t, err), `Error: bad.hcl:2,13-16: readiness: "x" is not one of "notify", "started"`)
}

func mustAbs(t *testing.T, path string) string {
	t.Helper()
	abs, err := filepath.Abs(path)
	require.NoError(t, err)
	return abs
}

func TestForkWorkerFlag(t *testing.T) {
	sandbox(t)
	cfg, err := Load(parseFlags(t, "--fork-worker", "--", "server"))
	require.NoError(t, err)
	assert.Equal(t, &ForkWorker{ReforkAfter: DefaultReforkAfter, ReforkAfterRepeats: DefaultReforkAfterRepeats, Timeout: DefaultForkTimeout,
		ReforkFrom: DefaultReforkFrom, ReforkNice: DefaultReforkNice, WarmUp: &WarmUp{Requests: DefaultWarmUpRequests, MaxWait: DefaultWarmUpMaxWait},
		CarryHeapSize: DefaultCarryHeapSize}, cfg.ForkWorker)
}
