package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// locationRE finds the line number in "demo.hcl:3,13-17".
var locationRE = regexp.MustCompile(`^[^:]+:(\d+),\d+-`)

// parseProblemTests covers each validation rule with a config that has exactly one problem. They
// are also the seed corpus of FuzzParse.
var parseProblemTests = []struct {
	name string
	src  string
	// at is the location, "demo.hcl:LINE,FROM-TO" (or just the file name for a problem with no
	// place in the file), and want the sentence that follows it.
	at, want string
}{
	// name
	{"name empty", "name = \"\"\ncommand = [\"server\"]",
		"demo.hcl:1,8-10", `name: must not be empty`},
	{"name with a space", "name = \"my app\"\ncommand = [\"server\"]",
		"demo.hcl:1,8-16", `name: "my app" may contain only letters, digits and "_.@-", not ' '`},
	{"name with a slash", "name = \"a/b\"\ncommand = [\"server\"]",
		"demo.hcl:1,8-13", `name: "a/b" may contain only letters, digits and "_.@-", not '/'`},
	{"name is ..", "name = \"..\"\ncommand = [\"server\"]",
		"demo.hcl:1,8-12", `name: ".." is not allowed, since the name is used as a directory name`},

	// command
	{"command missing", `workers = 2`,
		"demo.hcl", `command: missing: set command = ["python3", "app.py"] in the file, or give it after "--"`},
	{"command empty", `command = []`,
		"demo.hcl:1,11-13", `command: must not be empty`},
	{"command is a string", `command = "server --port 80"`,
		"demo.hcl:1,11-29", `command: must be a list of strings, like ["python3", "app.py"]: no shell splits it`},
	{"command program empty", `command = ["", "app.py"]`,
		"demo.hcl:1,12-14", `command: the program name (the first element) must not be empty`},
	{"command not in PATH", `command = ["pythn3", "app.py"]`,
		"demo.hcl:1,12-20", `command: "pythn3" not found in PATH`},
	{"command with NUL", `command = ["server", "a\u0000b"]`,
		"demo.hcl:1,22-32", `command: argument 1 must not contain a NUL byte`},
	{"command element not a string", `command = ["server", {}]`,
		"demo.hcl:1,11-25", `command: must be a list of strings, like ["python3", "app.py"]: element 1: string required, but have object`},

	// directory
	{"directory missing", "command = [\"server\"]\ndirectory = \"nope\"",
		"demo.hcl:2,13-19", `directory: "`},
	{"directory is a file", "command = [\"server\"]\ndirectory = \"file\"",
		"demo.hcl:2,13-19", `is not a directory`},

	// env
	{"env key empty", "command = [\"server\"]\nenv = { \"\" = \"x\" }",
		"demo.hcl:2,9-11", `env: a variable name must not be empty`},
	{"env key with =", "command = [\"server\"]\nenv = { OK = \"1\", \"A=B\" = \"x\" }",
		"demo.hcl:2,19-24", `env: variable name "A=B" must not contain "="`},
	{"env value with NUL", "command = [\"server\"]\nenv = { A = \"\\u0000\" }",
		"demo.hcl:2,9-10", `env: the value of A must not contain a NUL byte`},
	{"env sets a forkd variable", "command = [\"server\"]\nenv = { OK = \"1\", FORKD_READY = \"off\" }",
		"demo.hcl:2,19-30", `env: FORKD_READY is set by forkd for each worker`},
	{"env sets LISTEN_FDS", "command = [\"server\"]\nenv = { LISTEN_FDS = \"3\" }",
		"demo.hcl:2,9-19", `env: LISTEN_FDS is set by forkd for each worker`},
	{"env value not a string", "command = [\"server\"]\nenv = { A = [] }",
		"demo.hcl:2,7-17", `env: must be a map of strings, like { APP_ENV = "production" }: element "A": string required, but have tuple`},
	{"env not a map", "command = [\"server\"]\nenv = [\"A=B\"]",
		"demo.hcl:2,7-14", `env: must be a map of strings, like { APP_ENV = "production" }`},

	// workers
	{"workers zero", "command = [\"server\"]\nworkers = 0",
		"demo.hcl:2,11-12", `workers: 0 is out of range 1..1024`},
	{"workers too many", "command = [\"server\"]\nworkers = 1025",
		"demo.hcl:2,11-15", `workers: 1025 is out of range 1..1024`},
	{"workers negative", "command = [\"server\"]\nworkers = -2",
		"demo.hcl:2,11-13", `workers: -2 is out of range 1..1024`},
	{"workers not a number", "command = [\"server\"]\nworkers = \"four\"",
		"demo.hcl:2,11-17", `workers: must be a whole number`},
	{"workers fraction", "command = [\"server\"]\nworkers = 2.5",
		"demo.hcl:2,11-14", `workers: must be a whole number`},

	{"workers a bool", "command = [\"server\"]\nworkers = true",
		"demo.hcl:2,11-15", `workers: must be a whole number`},

	// readiness
	{"readiness unknown", "command = [\"server\"]\nreadiness = \"ready\"",
		"demo.hcl:2,13-20", `readiness: "ready" is not one of "notify", "started"`},

	// listen
	{"listen without scheme", "command = [\"server\"]\nlisten \"http\" { address = \"127.0.0.1:80\" }",
		"demo.hcl:2,27-41", `listen "http" address: "127.0.0.1:80" is not a listen URL like "tcp://127.0.0.1:8080" or "unix:///run/app.sock"`},
	{"listen unknown scheme", "command = [\"server\"]\nlisten \"http\" { address = \"udp://:53\" }",
		"demo.hcl:2,27-38", `listen "http" address: "udp://:53" has the unknown scheme "udp"; use tcp, tcp4, tcp6 or unix`},
	{"listen tcp without port", "command = [\"server\"]\nlisten \"http\" { address = \"tcp://localhost\" }",
		"demo.hcl:2,27-44", `listen "http" address: "tcp://localhost": the address must be host:port, like tcp://127.0.0.1:8080 or tcp://:8080`},
	{"listen port not a number", "command = [\"server\"]\nlisten \"http\" { address = \"tcp://:http\" }",
		"demo.hcl:2,27-40", `listen "http" address: "tcp://:http": port "http" is not a number`},
	{"listen port empty", "command = [\"server\"]\nlisten \"http\" { address = \"tcp://localhost:\" }",
		"demo.hcl:2,27-45", `listen "http" address: "tcp://localhost:": port "" is not a number`},
	{"listen port out of range", "command = [\"server\"]\nlisten \"http\" { address = \"tcp://:65536\" }",
		"demo.hcl:2,27-41", `listen "http" address: "tcp://:65536": port 65536 is out of range 0..65535`},
	{"listen bad host", "command = [\"server\"]\nlisten \"http\" { address = \"tcp://local host:80\" }",
		"demo.hcl:2,27-48", `listen "http" address: "tcp://local host:80": host "local host" is neither an IP address nor a host name`},
	{"listen tcp4 with IPv6", "command = [\"server\"]\nlisten \"http\" { address = \"tcp4://[::1]:80\" }",
		"demo.hcl:2,27-44", `listen "http" address: "tcp4://[::1]:80": ::1 is not an IPv4 address, as tcp4 requires`},
	{"listen tcp6 with IPv4", "command = [\"server\"]\nlisten \"http\" { address = \"tcp6://127.0.0.1:80\" }",
		"demo.hcl:2,27-48", `listen "http" address: "tcp6://127.0.0.1:80": 127.0.0.1 is not an IPv6 address, as tcp6 requires`},
	{"listen unix without path", "command = [\"server\"]\nlisten \"s\" { address = \"unix://\" }",
		"demo.hcl:2,24-33", `listen "s" address: "unix://" has no socket path, like "unix:///run/app.sock" or "unix://@app"`},
	{"listen unix abstract without name", "command = [\"server\"]\nlisten \"s\" { address = \"unix://@\" }",
		"demo.hcl:2,24-34", `listen "s" address: "unix://@" has no name for the abstract socket after "@"`},
	{"listen unix path too long", "command = [\"server\"]\nlisten \"s\" { address = \"unix:///" + strings.Repeat("x", 107) + "\" }",
		"demo.hcl:2,24-141", `listen "s" address: "/` + strings.Repeat("x", 107) + `" is 108 bytes long, more than a unix socket address can hold (107)`},
	{"listen address missing", "command = [\"server\"]\nlisten \"s\" {\n  backlog = 10\n}",
		"demo.hcl:2,1-11", `listen "s": needs an address, like address = "tcp://127.0.0.1:8080"`},
	{"listen address a number", "command = [\"server\"]\nlisten \"s\" { address = 80 }",
		"demo.hcl:2,24-26", `listen "s" address: "80" is not a listen URL`},
	{"listen address not a string", "command = [\"server\"]\nlisten \"s\" { address = [] }",
		"demo.hcl:2,24-26", `listen "s" address: must be a string`},
	{"listen backlog zero", "command = [\"server\"]\nlisten \"http\" {\n  address = \"tcp://:80\"\n  backlog = 0\n}",
		"demo.hcl:4,13-14", `listen "http" backlog: must be at least 1, not 0`},
	{"listen reuseport on unix", "command = [\"server\"]\nlisten \"s\" {\n  address   = \"unix:///run/s.sock\"\n  reuseport = true\n}",
		"demo.hcl:4,15-19", `listen "s" reuseport: applies only to tcp listeners`},
	{"listen mode on tcp", "command = [\"server\"]\nlisten \"http\" {\n  address = \"tcp://:80\"\n  mode    = \"0660\"\n}",
		"demo.hcl:4,13-19", `listen "http" mode: applies only to unix listeners`},
	{"listen mode on abstract", "command = [\"server\"]\nlisten \"s\" {\n  address = \"unix://@s\"\n  mode    = \"0660\"\n}",
		"demo.hcl:4,13-19", `listen "s" mode: does not apply to an abstract unix socket, which has no file`},
	{"listen mode not octal", "command = [\"server\"]\nlisten \"s\" {\n  address = \"unix:///run/s.sock\"\n  mode    = \"0690\"\n}",
		"demo.hcl:4,13-19", `listen "s" mode: "0690" is not an octal permission like "0660"`},
	{"listen mode too big", "command = [\"server\"]\nlisten \"s\" {\n  address = \"unix:///run/s.sock\"\n  mode    = \"4770\"\n}",
		"demo.hcl:4,13-19", `listen "s" mode: "4770" is more than 0777; setuid, setgid and sticky bits do not apply to sockets`},
	{"listen duplicate name", "command = [\"server\"]\nlisten \"http\" { address = \"tcp://:80\" }\nlisten \"http\" { address = \"tcp://:81\" }",
		"demo.hcl:3,8-14", `listen "http": name "http" is already used by another listener at demo.hcl:2,8-14`},
	{"listen duplicate address", "command = [\"server\"]\nlisten \"a\" { address = \"tcp://:80\" }\nlisten \"b\" { address = \"tcp://:80\" }",
		"demo.hcl:3,24-35", `listen "b" address: "tcp://:80" is already used by listener "a"`},
	{"listen name empty", "command = [\"server\"]\nlisten \"\" { address = \"tcp://:80\" }",
		"demo.hcl:2,8-10", `listen "": name "" must be 1 to 255 characters long, not 0`},
	{"listen name too long", "command = [\"server\"]\nlisten \"" + strings.Repeat("n", 256) + "\" { address = \"tcp://:80\" }",
		"demo.hcl:2,8-266", `must be 1 to 255 characters long, not 256`},
	{"listen name with colon", "command = [\"server\"]\nlisten \"a:b\" { address = \"tcp://:80\" }",
		"demo.hcl:2,8-13", `listen "a:b": name "a:b" must not contain ':', which separates names in LISTEN_FDNAMES`},
	{"listen name with tab", "command = [\"server\"]\nlisten \"a\\tb\" { address = \"tcp://:80\" }",
		"demo.hcl:2,8-14", `listen "a\tb": name "a\tb" may contain only printable ASCII characters`},
	{"listen name not ASCII", "command = [\"server\"]\nlisten \"café\" { address = \"tcp://:80\" }",
		"demo.hcl:2,8-14", `may contain only printable ASCII characters`},

	{"listen reuseport not a bool", "command = [\"server\"]\nlisten \"s\" {\n  address   = \"tcp://:80\"\n  reuseport = \"yes\"\n}",
		"demo.hcl:4,15-20", `listen "s" reuseport: must be true or false`},

	// timeouts
	{"boot zero", "command = [\"server\"]\ntimeouts {\n  boot = \"0s\"\n}",
		"demo.hcl:3,10-14", `timeouts.boot: must be greater than 0, not 0s`},
	{"boot not a duration", "command = [\"server\"]\ntimeouts {\n  boot = \"1 minute\"\n}",
		"demo.hcl:3,10-20", `timeouts.boot: "1 minute" is not a duration; write a number and a unit, like "30s", "2m" or "1m30s"`},
	{"boot without unit", "command = [\"server\"]\ntimeouts {\n  boot = 30\n}",
		"demo.hcl:3,10-12", `timeouts.boot: "30" is not a duration`},
	{"worker negative", "command = [\"server\"]\ntimeouts {\n  worker = \"-1s\"\n}",
		"demo.hcl:3,12-17", `timeouts.worker: must not be negative (0s turns heartbeats off), not -1s`},
	{"shutdown negative", "command = [\"server\"]\ntimeouts {\n  shutdown = \"-5s\"\n}",
		"demo.hcl:3,14-19", `timeouts.shutdown: must not be negative, not -5s`},

	// restart
	{"backoff_min zero", "command = [\"server\"]\nrestart {\n  backoff_min = \"0s\"\n}",
		"demo.hcl:3,17-21", `restart.backoff_min: must be greater than 0, not 0s`},
	{"backoff_max below backoff_min", "command = [\"server\"]\nrestart {\n  backoff_min = \"10s\"\n  backoff_max = \"5s\"\n}",
		"demo.hcl:4,17-21", `restart.backoff_max: 5s is less than restart.backoff_min (10s)`},
	{"backoff_min above default backoff_max", "command = [\"server\"]\nrestart {\n  backoff_min = \"1m\"\n}",
		"demo.hcl", `restart.backoff_max: 30s is less than restart.backoff_min (1m0s)`},
	{"reset_after zero", "command = [\"server\"]\nrestart {\n  reset_after = \"0s\"\n}",
		"demo.hcl:3,17-21", `restart.reset_after: must be greater than 0, not 0s`},

	// notify
	{"notify directory with abstract", "command = [\"server\"]\nnotify {\n  abstract  = true\n  directory = \"/run/x\"\n}",
		"demo.hcl:4,15-23", `notify.directory: does not apply with notify.abstract = true: abstract sockets have no file`},
	{"notify directory too long", "command = [\"server\"]\nnotify {\n  directory = \"/" + strings.Repeat("d", 81) + "\"\n}",
		"demo.hcl:3,15-99", `notify.directory: "/` + strings.Repeat("d", 81) + `" is 82 bytes long; the sockets forkd makes in it need it to be at most 81 (set a shorter notify.directory)`},
	{"notify abstract not a bool", "command = [\"server\"]\nnotify {\n  abstract = \"sure\"\n}",
		"demo.hcl:3,14-20", `notify.abstract: must be true or false`},

	// control
	{"control socket too long", "command = [\"server\"]\ncontrol {\n  socket = \"/" + strings.Repeat("s", 120) + "\"\n}",
		"demo.hcl:3,12-135", `control.socket: "/` + strings.Repeat("s", 120) + `" is 121 bytes long`},

	{"control socket empty", "command = [\"server\"]\ncontrol {\n  socket = \"\"\n}",
		"demo.hcl:3,12-14", `control.socket: must not be empty`},

	{"worker access unknown", "command = [\"server\"]\ncontrol {\n  worker_access = \"read-only\"\n}",
		"demo.hcl:3,19-30", `control.worker_access: "read-only" is not one of "none", "status", "full"`},

	// cgroups
	{"cgroups mode unknown", "command = [\"server\"]\ncgroups {\n  mode = \"yes\"\n}",
		"demo.hcl:3,10-15", `cgroups.mode: "yes" is not one of "auto", "on", "off"`},
	{"memory_max not a size", "command = [\"server\"]\ncgroups {\n  memory_max = \"512 megs\"\n}",
		"demo.hcl:3,16-26", `cgroups.memory_max: "512 megs" is not a size; write a whole number of bytes with a suffix K, M, G or T`},
	{"memory_max a fraction", "command = [\"server\"]\ncgroups {\n  memory_max = 1.5\n}",
		"demo.hcl:3,16-19", `cgroups.memory_max: must be a size in bytes, like "512M", "2G" or 536870912, not 1.5`},
	{"memory_max negative", "command = [\"server\"]\ncgroups {\n  memory_max = -1\n}",
		"demo.hcl:3,16-18", `cgroups.memory_max: must be a size in bytes`},
	{"memory_max too small", "command = [\"server\"]\ncgroups {\n  memory_max = \"64K\"\n}",
		"demo.hcl:3,16-21", `cgroups.memory_max: 65536 bytes is less than a worker can run in: give at least 1M`},
	{"memory_high not below memory_max", "command = [\"server\"]\ncgroups {\n  memory_max = \"1G\"\n  memory_high = \"2G\"\n}",
		"demo.hcl:4,17-21", `cgroups.memory_high: 2147483648 bytes is not below cgroups.memory_max (1073741824)`},
	{"limits with cgroups off", "command = [\"server\"]\ncgroups {\n  mode = \"off\"\n  memory_max = \"1G\"\n}",
		"demo.hcl:4,16-20", `cgroups.memory_max: does not apply with cgroups.mode = "off"`},
	// metrics, memory
	{"metrics listen not a URL", "command = [\"server\"]\nmetrics {\n  listen = \"9090\"\n}",
		"demo.hcl:3,12-18", `metrics.listen: "9090" is not a listen URL like "tcp://127.0.0.1:8080" or "unix:///run/app.sock"`},
	{"metrics listen port out of range", "command = [\"server\"]\nmetrics {\n  listen = \"tcp://127.0.0.1:99999\"\n}",
		"demo.hcl:3,12-35", `metrics.listen: "tcp://127.0.0.1:99999": port 99999 is out of range 0..65535`},
	{"metrics listen on a listener", "command = [\"server\"]\nlisten \"http\" {\n  address = \"tcp://127.0.0.1:8080\"\n}\nmetrics {\n  listen = \"tcp://127.0.0.1:8080\"\n}",
		"demo.hcl:6,12-34", `metrics.listen: is the address of listen "http", where the workers serve`},
	{"metrics listen on the control socket", "command = [\"server\"]\ncontrol {\n  socket = \"/run/x/control.sock\"\n}\nmetrics {\n  listen = \"unix:///run/x/control.sock\"\n}",
		"demo.hcl:6,12-40", `metrics.listen: is the control socket, which serves /metrics already`},
	{"memory sample interval too short", "command = [\"server\"]\nmemory {\n  sample_interval = \"100ms\"\n}",
		"demo.hcl:3,21-28", `memory.sample_interval: must be at least 1s (each sample reads every worker's page tables), not 100ms`},
	{"memory sample interval not a duration", "command = [\"server\"]\nmemory {\n  sample_interval = \"10\"\n}",
		"demo.hcl:3,21-25", `memory.sample_interval: "10" is not a duration`},
	{"memory ksm not a bool", "command = [\"server\"]\nmemory {\n  ksm = \"yes\"\n}",
		"demo.hcl:3,9-14", `memory.ksm: must be true or false`},

	// log
	{"log level unknown", "command = [\"server\"]\nlog {\n  level = \"verbose\"\n}",
		"demo.hcl:3,11-20", `log.level: "verbose" is not one of "debug", "info", "warn", "error"`},
	{"log format unknown", "command = [\"server\"]\nlog {\n  format = \"xml\"\n}",
		"demo.hcl:3,12-17", `log.format: "xml" is not one of "auto", "text", "json", "journal"`},

	// schema: gohcl's own diagnostics
	{"unknown attribute", "command = [\"server\"]\nworker = 4",
		"demo.hcl:2,1-7", `Unsupported argument`},
	{"fd_store", "command = [\"server\"]\nsystemd {\n  fd_store = \"maybe\"\n}",
		"demo.hcl:3,14-21", `systemd.fd_store: "maybe" is not one of "auto", "yes", "no"`},
	{"watchdog_min_ready", "command = [\"server\"]\nworkers = 2\nsystemd {\n  watchdog_min_ready = 3\n}",
		"demo.hcl:4,24-25", `systemd.watchdog_min_ready: 3 is out of range 0..workers (2)`},
	{"unknown block", "command = [\"server\"]\nplugins {}",
		"demo.hcl:2,1-8", `Unsupported block type`},
	{"hook not found", "command = [\"server\"]\nhooks {\n  before_reload = [\"no-such-hook\"]\n}",
		"demo.hcl:3,19-35", `hooks.before_reload: "no-such-hook" not found in PATH`},
	{"hook empty", "command = [\"server\"]\nhooks {\n  on_worker_crash = []\n}",
		"demo.hcl:3,21-23", `hooks.on_worker_crash: must not be empty`},
	{"hook timeout", "command = [\"server\"]\nhooks {\n  timeout = \"-1s\"\n}",
		"demo.hcl:3,13-18", `hooks.timeout: must be greater than 0, not -1s`},
	{"refork_nice past 19", "command = [\"server\"]\nfork_worker {\n  refork_nice = 20\n}",
		"demo.hcl:3,17-19", `fork_worker.refork_nice: must be in 0..19 (nice steps; 0 leaves the workers' priority alone), not 20`},
	{"refork_nice negative", "command = [\"server\"]\nfork_worker {\n  refork_nice = -1\n}",
		"demo.hcl:3,17-19", `fork_worker.refork_nice: must be in 0..19`},
	{"refork_from unknown", "command = [\"server\"]\nfork_worker {\n  refork_from = \"hottest\"\n}",
		"demo.hcl:3,17-26", `fork_worker.refork_from: "hottest" is not one of "warmest", "template"`},
	{"warm_up max_wait negative", "command = [\"server\"]\nfork_worker {\n  warm_up {\n    max_wait = \"-1s\"\n  }\n}",
		"demo.hcl:4,16-21", `fork_worker.warm_up.max_wait: must not be negative, not -1s ("0s" turns the warm-up off)`},
	{"max_requests negative", "command = [\"server\"]\nrecycle {\n  max_requests = -5\n}",
		"demo.hcl:3,18-20", `recycle.max_requests: must not be negative, not -5 (0 never recycles for requests)`},
	{"max_requests_jitter alone", "command = [\"server\"]\nrecycle {\n  max_requests_jitter = 50\n}",
		"demo.hcl:3,25-27", `recycle.max_requests_jitter: has no meaning without recycle.max_requests`},
	{"max_private too small", "command = [\"server\"]\nrecycle {\n  max_private = \"64K\"\n}",
		"demo.hcl:3,17-22", `recycle.max_private: 65536 bytes is less than a worker can run in: give at least 1M (0 never recycles for memory)`},
	{"min_lifetime negative", "command = [\"server\"]\nrecycle {\n  min_lifetime = \"-1s\"\n}",
		"demo.hcl:3,18-23", `recycle.min_lifetime: must not be negative, not -1s`},
	{"refork_on_decay ratio not above 1", "command = [\"server\"]\nfork_worker {\n  refork_on_decay {\n    ratio = 0.9\n  }\n}",
		"demo.hcl:4,13-16", `fork_worker.refork_on_decay.ratio: must be greater than 1, like 1.5 (the workers' private memory grown by half), not 0.9`},
	{"refork_on_decay ratio a string", "command = [\"server\"]\nfork_worker {\n  refork_on_decay {\n    ratio = \"half\"\n  }\n}",
		"demo.hcl:4,13-19", `fork_worker.refork_on_decay.ratio: must be a number`},
	{"refork_on_decay growth zero", "command = [\"server\"]\nfork_worker {\n  refork_on_decay {\n    private_growth = 0\n  }\n}",
		"demo.hcl:4,22-23", `fork_worker.refork_on_decay.private_growth: must be greater than 0, like "64M" (leave it out to use ratio alone)`},
	{"refork_on_decay min_interval zero", "command = [\"server\"]\nfork_worker {\n  refork_on_decay {\n    min_interval = \"0s\"\n  }\n}",
		"demo.hcl:4,20-24", `fork_worker.refork_on_decay.min_interval: must be greater than 0, not 0s`},
	{"refork_on_decay max_fruitless zero", "command = [\"server\"]\nfork_worker {\n  refork_on_decay {\n    max_fruitless = 0\n  }\n}",
		"demo.hcl:4,21-22", `fork_worker.refork_on_decay.max_fruitless: must be at least 1, not 0`},
	{"refork_after not a list", "command = [\"server\"]\nfork_worker {\n  refork_after = 1000\n}",
		"demo.hcl:3,18-22", `fork_worker.refork_after: must be a list of request counts, perhaps ending with false: [1000] refork after every 1000 requests, [1000, false] once, [] never`},
	{"refork_after zero", "command = [\"server\"]\nfork_worker {\n  refork_after = [100, 0]\n}",
		"demo.hcl:3,18-26", `fork_worker.refork_after: entries must be whole request counts greater than 0, not 0 ([] disables automatic reforks)`},
	{"refork_after false in the middle", "command = [\"server\"]\nfork_worker {\n  refork_after = [100, false, 200]\n}",
		"demo.hcl:3,18-35", `fork_worker.refork_after: must be a list of request counts, perhaps ending with false: [1000] refork after every 1000 requests, [1000, false] once, [] never: false may only end the list, and true has no meaning here`},
	{"refork_after a string", "command = [\"server\"]\nfork_worker {\n  refork_after = [\"100\"]\n}",
		"demo.hcl:3,18-25", `element 0 is not a number`},
	{"refork_after a fraction", "command = [\"server\"]\nfork_worker {\n  refork_after = [1.5]\n}",
		"demo.hcl:3,18-23", `entries must be whole request counts greater than 0, not 1.5`},
	{"fork timeout zero", "command = [\"server\"]\nfork_worker {\n  timeout = \"0s\"\n}",
		"demo.hcl:3,13-17", `fork_worker.timeout: must be greater than 0, not 0s`},
	{"max_surge negative", "command = [\"server\"]\nrollout {\n  max_surge = -1\n}",
		"demo.hcl:3,15-17", `rollout.max_surge: must not be negative, not -1`},
	{"surge and unavailable zero", "command = [\"server\"]\nrollout {\n  max_surge = 0\n}",
		"demo.hcl:3,15-16", `rollout.max_surge: rollout.max_surge and rollout.max_unavailable cannot both be 0`},
	{"unknown attribute in block", "command = [\"server\"]\ntimeouts {\n  boot_timeout = \"1s\"\n}",
		"demo.hcl:3,3-15", `Unsupported argument`},
	{"duplicate block", "command = [\"server\"]\nlog {}\nlog {}",
		"demo.hcl:3,1-4", `Duplicate log block`},
	{"syntax error", "command = [\"server\"\n",
		"demo.hcl:1,11-12", `Unterminated tuple constructor expression`},
	{"variables are not allowed", "command = [\"server\"]\nworkers = cpus",
		"demo.hcl:2,11-15", `Variables not allowed`},
}

// TestParseProblems checks that each problem is reported with the expected sentence at the expected
// place, followed by the source line it is about, and nothing else is reported.
func TestParseProblems(t *testing.T) {
	for _, tt := range parseProblemTests {
		t.Run(tt.name, func(t *testing.T) {
			sandbox(t)
			cfg, err := Parse([]byte(tt.src), "demo.hcl")
			require.Error(t, err, "config: %+v", cfg)
			out := diagnosticsText(t, err)

			assert.Equal(t, 1, strings.Count(out, "Error: "), "want exactly one problem, got:\n%s", out)
			assert.Contains(t, out, "Error: "+tt.at, "location")
			assert.Contains(t, out, tt.want, "message")
			if m := locationRE.FindStringSubmatch(tt.at); m != nil {
				line, _ := strconv.Atoi(m[1])
				srcLine := strings.Split(tt.src, "\n")[line-1]
				assert.Contains(t, out, fmt.Sprintf("%4d: %s\n", line, srcLine), "snippet")
			}
			assert.Contains(t, err.Error(), "config: "+tt.at, "Error() leads with the location")
		})
	}
}

// TestParseNameFromFileName: the default name comes from the file name, so a bad file name is
// reported with a hint that says where the name came from.
func TestParseNameFromFileName(t *testing.T) {
	sandbox(t)
	cfg, err := Parse([]byte(`command = ["server"]`), "/etc/forkd/my.app.hcl")
	require.NoError(t, err)
	assert.Equal(t, "my.app", cfg.Name)

	_, err = Parse([]byte(`command = ["server"]`), "/etc/forkd/my app.hcl")
	require.Error(t, err)
	out := diagnosticsText(t, err)
	assert.Contains(t, out, `Error: /etc/forkd/my app.hcl: name: "my app" may contain only letters, digits and "_.@-", not ' ' `+
		`(it comes from the file name; set name = "..." in the file)`)

	// Setting name in the file fixes it.
	_, err = Parse([]byte("name = \"myapp\"\ncommand = [\"server\"]"), "/etc/forkd/my app.hcl")
	assert.NoError(t, err)
}

// TestParseReportsEveryProblem: one run reports every problem, in file order, and a value that
// failed to decode is not reported again by validation.
func TestParseReportsEveryProblem(t *testing.T) {
	sandbox(t)
	_, err := Parse([]byte(`
command = "server"
workers = 0
restart {
  backoff_min = "soon"
  backoff_max = "1s"
}
listen "a" {
  address = "tcp://:80"
  mode    = "nope"
}
`), "demo.hcl")
	require.Error(t, err)
	out := diagnosticsText(t, err)
	summaries := regexp.MustCompile(`(?m)^Error: .*$`).FindAllString(out, -1)
	assert.Equal(t, []string{
		`Error: demo.hcl:2,11-19: command: must be a list of strings, like ["python3", "app.py"]: no shell splits it`,
		`Error: demo.hcl:3,11-12: workers: 0 is out of range 1..1024`,
		`Error: demo.hcl:5,17-23: restart.backoff_min: "soon" is not a duration; write a number and a unit, like "30s", "2m" or "1m30s"`,
		`Error: demo.hcl:10,13-19: listen "a" mode: "nope" is not an octal permission like "0660"`,
	}, summaries)
	assert.Equal(t, `config: demo.hcl:2,11-19: command: must be a list of strings, like ["python3", "app.py"]: no shell splits it (and 3 more errors)`, err.Error())
}
