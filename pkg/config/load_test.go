package config

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fullConfig sets every attribute of the schema (docs/configuration.md), none to its default.
const fullConfig = `
name      = "demo"
command   = ["sh", "app.sh", "--port", "8080"]
directory = "app"
env       = { APP_ENV = "production", PATH = "/usr/bin:/bin" }
workers   = 4
readiness = "started"

listen "http" {
  address   = "tcp://127.0.0.1:8080"
  backlog   = 512
  reuseport = true
}

listen "admin" {
  address = "unix://admin.sock"
  mode    = "0660"
}

listen "abstract" {
  address = "unix://@demo"
}

timeouts {
  boot     = "2m"
  worker   = "10s"
  shutdown = "1m30s"
}

restart {
  backoff_min = "500ms"
  backoff_max = "1m"
  reset_after = "5m"
}

fork_worker {
  refork_from     = "warmest"
  refork_nice     = 5
  refork_after    = [100, 2000]
  timeout         = "5s"
  carry_heap_size = false
}

rollout {
  max_surge       = 2
  max_unavailable = 1
}

systemd {
  fd_store           = "no"
  watchdog_min_ready = 2
}

hooks {
  before_reload   = ["/bin/sh", "-c", "exit 0"]
  after_reload    = ["/bin/sh", "-c", "echo done"]
  before_restart  = ["/bin/true"]
  on_worker_crash = ["/bin/sh", "-c", "logger crash"]
  timeout         = "5s"
}

notify {
  directory = "run/notify"
}

control {
  socket        = "run/control.sock"
  worker_access = "status"
}

cgroups {
  mode        = "on"
  memory_max  = "512M"
  memory_high = 402653184
}

metrics {
  listen = "unix://run/metrics.sock"
}

memory {
  sample_interval = "30s"
  ksm             = true
}

log {
  level  = "debug"
  format = "json"
}
`

func TestParseFullConfig(t *testing.T) {
	dir := sandbox(t)
	cfg, err := Parse([]byte(fullConfig), "demo.hcl")
	require.NoError(t, err)
	assert.Equal(t, &Config{
		Name:      "demo",
		File:      "demo.hcl",
		Command:   []string{"sh", "app.sh", "--port", "8080"},
		Directory: filepath.Join(dir, "app"),
		Env:       map[string]string{"APP_ENV": "production", "PATH": "/usr/bin:/bin"},
		Workers:   4,
		Readiness: ReadyOnStart,
		Listeners: []Listener{
			{Name: "http", Network: "tcp", Address: "127.0.0.1:8080", Backlog: 512, ReusePort: true},
			{Name: "admin", Network: "unix", Address: filepath.Join(dir, "admin.sock"), Backlog: DefaultBacklog, Mode: 0o660},
			{Name: "abstract", Network: "unix", Address: "@demo", Backlog: DefaultBacklog},
		},
		Timeouts: Timeouts{Boot: 2 * time.Minute, Worker: 10 * time.Second, Shutdown: 90 * time.Second},
		Restart:  Restart{BackoffMin: 500 * time.Millisecond, BackoffMax: time.Minute, ResetAfter: 5 * time.Minute},
		ForkWorker: &ForkWorker{ReforkAfter: []uint64{100, 2000}, ReforkAfterRepeats: true, Timeout: 5 * time.Second,
			ReforkFrom: ReforkFromWarmest, ReforkNice: 5, WarmUp: &WarmUp{Requests: DefaultWarmUpRequests, MaxWait: DefaultWarmUpMaxWait},
			CarryHeapSize: false},
		Rollout: Rollout{MaxSurge: 2, MaxUnavailable: 1},
		Hooks: Hooks{
			BeforeReload:  []string{"/bin/sh", "-c", "exit 0"},
			AfterReload:   []string{"/bin/sh", "-c", "echo done"},
			BeforeRestart: []string{"/bin/true"},
			OnWorkerCrash: []string{"/bin/sh", "-c", "logger crash"},
			Timeout:       5 * time.Second,
		},
		Systemd: Systemd{FDStore: FDStoreNo, WatchdogMinReady: 2},
		Notify:  Notify{Directory: filepath.Join(dir, "run", "notify")},
		Control: Control{Socket: filepath.Join(dir, "run", "control.sock"), WorkerAccess: WorkerAccessStatus},
		Cgroups: Cgroups{Mode: CgroupsOn, MemoryMax: 512 << 20, MemoryHigh: 384 << 20},
		Metrics: Metrics{Network: "unix", Address: filepath.Join(dir, "run", "metrics.sock")},
		Memory:  Memory{SampleInterval: 30 * time.Second, KSM: true},
		Log:     Log{Level: "debug", Format: "json"},
	}, cfg)
}

func TestParseFillsDefaults(t *testing.T) {
	sandbox(t)
	cfg, err := Parse([]byte(`command = ["server"]`), "/etc/forkd/web.hcl")
	require.NoError(t, err)
	assert.Equal(t, &Config{
		Name:      "web",
		File:      "/etc/forkd/web.hcl",
		Command:   []string{"server"},
		Workers:   defaultWorkers(),
		Readiness: ReadyOnNotify,
		Timeouts:  Timeouts{Boot: DefaultBootTimeout, Worker: 0, Shutdown: DefaultShutdownTimeout},
		Restart:   Restart{BackoffMin: DefaultBackoffMin, BackoffMax: DefaultBackoffMax, ResetAfter: DefaultResetAfter},
		Rollout:   Rollout{MaxSurge: DefaultMaxSurge, MaxUnavailable: DefaultMaxUnavailable},
		Hooks:     Hooks{Timeout: DefaultHookTimeout},
		Systemd:   Systemd{FDStore: FDStoreAuto},
		Notify:    Notify{Directory: filepath.Dir(DefaultControlSocket("web"))},
		Control:   Control{Socket: DefaultControlSocket("web"), WorkerAccess: WorkerAccessNone},
		Cgroups:   Cgroups{Mode: CgroupsAuto},
		Memory:    Memory{SampleInterval: DefaultMemorySampleInterval},
		Log:       Log{Level: "info", Format: "auto"},
	}, cfg)
}

// TestNotifyDirectory: the notify sockets go to the service's runtime directory under systemd,
// else beside the control socket; abstract addresses need none.
func TestNotifyDirectory(t *testing.T) {
	sandbox(t)
	cfg, err := Parse([]byte("command = [\"server\"]\ncontrol { socket = \"/srv/ctl/control.sock\" }"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, Notify{Directory: "/srv/ctl"}, cfg.Notify)

	t.Setenv("RUNTIME_DIRECTORY", "/run/forkd/web:/run/other")
	cfg, err = Parse([]byte(`command = ["server"]`), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, Notify{Directory: "/run/forkd/web"}, cfg.Notify, "the first of RuntimeDirectory='s directories")

	cfg, err = Parse([]byte("command = [\"server\"]\nnotify { abstract = true }"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, Notify{Abstract: true}, cfg.Notify)
}

func TestParseListenerDefaults(t *testing.T) {
	dir := sandbox(t)
	cfg, err := Parse([]byte(`
command = ["server"]
listen "web" { address = "tcp://:8080" }
listen "sock" { address = "unix:///run/app.sock" }
listen "rel" { address = "unix://sockets/app.sock" }
listen "v6" { address = "tcp6://[::1]:0" }
`), "demo.hcl")
	require.NoError(t, err)
	assert.Equal(t, []Listener{
		{Name: "web", Network: "tcp", Address: ":8080", Backlog: DefaultBacklog},
		{Name: "sock", Network: "unix", Address: "/run/app.sock", Backlog: DefaultBacklog, Mode: DefaultSocketMode},
		{Name: "rel", Network: "unix", Address: filepath.Join(dir, "sockets/app.sock"), Backlog: DefaultBacklog, Mode: DefaultSocketMode},
		{Name: "v6", Network: "tcp6", Address: "[::1]:0", Backlog: DefaultBacklog},
	}, cfg.Listeners)
}

// TestParseNullMeansDefault: null is how HCL says "not set", so the default applies.
func TestParseNullMeansDefault(t *testing.T) {
	sandbox(t)
	cfg, err := Parse([]byte("command = [\"server\"]\nworkers = null\ntimeouts { boot = null }\n"), "demo.hcl")
	require.NoError(t, err)
	assert.Equal(t, defaultWorkers(), cfg.Workers)
	assert.Equal(t, DefaultBootTimeout, cfg.Timeouts.Boot)
}

func TestParseRelativePathsFollowTheFile(t *testing.T) {
	dir := sandbox(t)
	mustWrite(t, filepath.Join(dir, "etc", "app", "run"), "#!/bin/sh\n", 0o755)
	path := writeConfig(t, filepath.Join("etc", "demo.hcl"), `
command   = ["./run"]
directory = "app"
control { socket = "demo.sock" }
listen "s" { address = "unix://s.sock" }
`)
	// Change somewhere else: the file must mean the same wherever forkd runs.
	t.Chdir(filepath.Join(dir, "app"))
	cfg, err := LoadFile(filepath.Join(dir, path))
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "etc", "app"), cfg.Directory)
	assert.Equal(t, filepath.Join(dir, "etc", "demo.sock"), cfg.Control.Socket)
	assert.Equal(t, filepath.Join(dir, "etc", "s.sock"), cfg.Listeners[0].Address)
	assert.Equal(t, []string{"./run"}, cfg.Command, "the command is kept as written")
}

// TestParseDirectorySymlinkKept: a deploy switches current -> releases/N, so the configured path is
// kept rather than the symlink's target of the day.
func TestParseDirectorySymlinkKept(t *testing.T) {
	dir := sandbox(t)
	require.NoError(t, os.Symlink(filepath.Join(dir, "app"), filepath.Join(dir, "current")))
	cfg, err := Parse([]byte(`
command   = ["./run"]
directory = "current"
`), "demo.hcl")
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "current"), cfg.Directory)
}

// TestRelativeCommandFollowsTheFile: a relative program path in the file, like every other path
// in it, is relative to the file's directory (without a directory), not to forkd's; the error
// says what it is relative to.
func TestRelativeCommandFollowsTheFile(t *testing.T) {
	dir := sandbox(t)
	mustWrite(t, filepath.Join(dir, "etc", "bin", "server"), "#!/bin/sh\n", 0o755)
	path := filepath.Join(dir, writeConfig(t, filepath.Join("etc", "demo.hcl"), `command = ["./bin/server", "--flag"]`))
	bad := filepath.Join(dir, writeConfig(t, filepath.Join("etc", "bad.hcl"), `command = ["bin/nope"]`))
	t.Chdir(filepath.Join(dir, "app"))
	cfg, err := LoadFile(path)
	require.NoError(t, err)
	assert.Equal(t, []string{filepath.Join(dir, "etc", "bin", "server"), "--flag"}, cfg.Command)

	_, err = LoadFile(bad)
	require.Error(t, err)
	assert.Contains(t, diagnosticsText(t, err),
		fmt.Sprintf(`command: "bin/nope" (%s, relative to the config file's directory) does not exist`, filepath.Join(dir, "etc", "bin", "nope")))

	// After "--", the command is the operator's, relative to forkd's working directory.
	_, err = Load(parseFlags(t, "--", "bin/nope"))
	require.Error(t, err)
	assert.Contains(t, err.Error(),
		fmt.Sprintf(`command: "bin/nope" (%s, relative to forkd's working directory) does not exist`, filepath.Join(dir, "app", "bin", "nope")))
}

func TestParseCommandLookup(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		wantErr string
	}{
		{"in PATH", `command = ["server"]`, ""},
		{"absolute", `command = ["/bin/sh", "-c", "exit 0"]`, ""},
		{"relative to the file's directory", `command = ["bin/server"]`, ""},
		{"relative to directory", "directory = \"app\"\ncommand = [\"./run\"]", ""},
		{"PATH from env wins", "env = { PATH = \"/nonexistent\" }\ncommand = [\"server\"]",
			`command: "server" not found in PATH ("/nonexistent", set in env)`},
		{"PATH from env finds it", "env = { PATH = \"/nonexistent:bin\" }\ncommand = [\"server\"]", ""},
		{"not in PATH", `command = ["pythn3", "app.py"]`, `command: "pythn3" not found in PATH`},
		{"directory is not in PATH", `command = ["app"]`, `command: "app" not found in PATH`},
		{"missing relative to directory", "directory = \"app\"\ncommand = [\"./nope\"]", `/app/nope, relative to directory) does not exist`},
		{"not executable", `command = ["bin/notexec"]`, `/bin/notexec, relative to the config file's directory) is not executable (mode 0644)`},
		{"a directory", `command = ["./app"]`, `command: "./app" (`},
		{"missing", `command = ["./nope"]`, `/nope, relative to the config file's directory) does not exist`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sandbox(t)
			_, err := Parse([]byte(tt.src), "demo.hcl")
			if tt.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, diagnosticsText(t, err), tt.wantErr)
		})
	}
}

func TestLoadReadError(t *testing.T) {
	sandbox(t)
	_, err := LoadFile("/nonexistent/forkd/x.hcl")
	require.Error(t, err)
	assert.Equal(t, "config: read /nonexistent/forkd/x.hcl: no such file or directory", err.Error())
	assert.ErrorIs(t, err, fs.ErrNotExist)

	_, err = LoadFile(".")
	require.Error(t, err)
	assert.Equal(t, "config: read .: is a directory", err.Error())
}

func TestForkWorkerDefaults(t *testing.T) {
	sandbox(t)
	cfg, err := Parse([]byte("command = [\"server\"]\nfork_worker {}\n"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, &ForkWorker{ReforkAfter: []uint64{1000}, ReforkAfterRepeats: false, Timeout: DefaultForkTimeout,
		ReforkFrom: DefaultReforkFrom, ReforkNice: DefaultReforkNice, WarmUp: &WarmUp{Requests: 1000, MaxWait: 5 * time.Second},
		CarryHeapSize: true}, cfg.ForkWorker,
		"one refork after 1000 requests, as Puma's fork_worker; a reload's template warms up; the heap size carried")

	for src, want := range map[string]ForkWorker{
		"[]":                {ReforkAfter: []uint64{}, ReforkAfterRepeats: true},
		"[false]":           {ReforkAfter: []uint64{}},
		"[1000]":            {ReforkAfter: []uint64{1000}, ReforkAfterRepeats: true},
		"[1000, false]":     {ReforkAfter: []uint64{1000}},
		"[50, 100, 1000]":   {ReforkAfter: []uint64{50, 100, 1000}, ReforkAfterRepeats: true},
		"[50, 1000, false]": {ReforkAfter: []uint64{50, 1000}},
	} {
		cfg, err = Parse([]byte("command = [\"server\"]\nfork_worker {\n  refork_after = "+src+"\n}\n"), "web.hcl")
		require.NoError(t, err, src)
		want.Timeout, want.ReforkFrom, want.ReforkNice = DefaultForkTimeout, DefaultReforkFrom, DefaultReforkNice
		want.CarryHeapSize = DefaultCarryHeapSize
		want.WarmUp = &WarmUp{Requests: DefaultWarmUpRequests, MaxWait: DefaultWarmUpMaxWait}
		assert.Equal(t, &want, cfg.ForkWorker, src)
	}

	cfg, err = Parse([]byte("command = [\"server\"]\n"), "web.hcl")
	require.NoError(t, err)
	assert.Nil(t, cfg.ForkWorker, "no block: exec mode")
}

func TestReforkOnDecay(t *testing.T) {
	sandbox(t)
	parse := func(block string) *ReforkOnDecay {
		t.Helper()
		cfg, err := Parse([]byte("command = [\"server\"]\nfork_worker {\n  refork_on_decay {\n"+block+"  }\n}\n"), "web.hcl")
		require.NoError(t, err, block)
		return cfg.ForkWorker.ReforkOnDecay
	}
	assert.Equal(t, &ReforkOnDecay{PrivateGrowth: 64 << 20, MinInterval: time.Minute, MaxFruitless: 2}, parse(""),
		"an empty block: 64 MiB of growth, once a minute at most, stopped by 2 fruitless reforks")
	assert.Equal(t, &ReforkOnDecay{Ratio: 1.5, MinInterval: 5 * time.Minute, MaxFruitless: 1},
		parse("    ratio = 1.5\n    min_interval = \"5m\"\n    max_fruitless = 1\n"), "a ratio alone: no growth in bytes")
	assert.Equal(t, &ReforkOnDecay{PrivateGrowth: 256 << 20, Ratio: 2, MinInterval: time.Minute, MaxFruitless: 2},
		parse("    private_growth = \"256MiB\"\n    ratio = 2\n"))

	cfg, err := Parse([]byte("command = [\"server\"]\nfork_worker {}\n"), "web.hcl")
	require.NoError(t, err)
	assert.Nil(t, cfg.ForkWorker.ReforkOnDecay, "off without the block")
}

func TestRecycle(t *testing.T) {
	sandbox(t)
	cfg, err := Parse([]byte("command = [\"server\"]\n"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, Recycle{}, cfg.Recycle, "recycles nothing by default")
	cfg, err = Parse([]byte("command = [\"server\"]\nrecycle {\n  max_requests = 10000\n  max_requests_jitter = 500\n"+
		"  max_private = \"512M\"\n  min_lifetime = \"1m\"\n}\n"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, Recycle{MaxRequests: 10000, MaxRequestsJitter: 500, MaxPrivate: 512 << 20, MinLifetime: time.Minute}, cfg.Recycle)
}

func TestWarmUp(t *testing.T) {
	sandbox(t)
	defaults := &WarmUp{Requests: 1000, MaxWait: 5 * time.Second}
	cfg, err := Parse([]byte("command = [\"server\"]\nfork_worker {}\n"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, defaults, cfg.ForkWorker.WarmUp, "on by default: 1000 requests, 5 s at most")
	assert.Equal(t, DefaultReforkAfter[0], uint64(DefaultWarmUpRequests), "the default warm-up stands for the default first refork")
	cfg, err = Parse([]byte("command = [\"server\"]\nfork_worker {\n  warm_up {}\n}\n"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, defaults, cfg.ForkWorker.WarmUp, "an empty block: the defaults")
	cfg, err = Parse([]byte("command = [\"server\"]\nfork_worker {\n  warm_up {\n    max_wait = \"0s\"\n  }\n}\n"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, &WarmUp{Requests: 1000}, cfg.ForkWorker.WarmUp, "max_wait 0s: off")
	cfg, err = Parse([]byte("command = [\"server\"]\nfork_worker {\n  refork_from = \"warmest\"\n}\n"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, defaults, cfg.ForkWorker.WarmUp, "on by default in mold mode too: a new serving worker warms up and forks the mold")
	cfg, err = Parse([]byte("command = [\"server\"]\nfork_worker {\n  refork_from = \"warmest\"\n  warm_up {\n    requests = 50\n  }\n}\n"), "web.hcl")
	require.NoError(t, err, "a warm-up goes with a template that serves nothing")
	assert.Equal(t, &WarmUp{Requests: 50, MaxWait: 5 * time.Second}, cfg.ForkWorker.WarmUp)
	cfg, err = Parse([]byte("command = [\"server\"]\nfork_worker {\n  warm_up {\n    requests = 200\n    max_wait = \"30s\"\n  }\n}\n"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, &WarmUp{Requests: 200, MaxWait: 30 * time.Second}, cfg.ForkWorker.WarmUp)
}

func TestReforkFrom(t *testing.T) {
	sandbox(t)
	cfg, err := Parse([]byte("command = [\"server\"]\nfork_worker {}\n"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, ReforkFromTemplate, cfg.ForkWorker.ReforkFrom, "the default keeps worker 0 serving")
	cfg, err = Parse([]byte("command = [\"server\"]\nfork_worker {\n  refork_from = \"warmest\"\n}\n"), "web.hcl")
	require.NoError(t, err)
	assert.Equal(t, ReforkFromWarmest, cfg.ForkWorker.ReforkFrom)
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{
		"1048576": 1 << 20, "512K": 512 << 10, "512k": 512 << 10, "256M": 256 << 20, "256MiB": 256 << 20,
		"256MB": 256 << 20, "2G": 2 << 30, "1T": 1 << 40, "16 M": 16 << 20,
	} {
		got, err := parseSize(in)
		if assert.NoError(t, err, in) {
			assert.Equal(t, want, got, in)
		}
	}
	for _, in := range []string{"", "M", "1.5G", "-1M", "1P", "1 GB extra", "99999999999999999999", "16777216T"} {
		_, err := parseSize(in)
		assert.Error(t, err, in)
	}
}
