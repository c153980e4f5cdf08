package chaos

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// A runner is one kind of worker the suite supervises: an app on its ecosystem's own server,
// speaking forkd's protocol through its SDK. Each is one entry of runners, so that replacing a
// runner (forkd.wsgi by forkd.gunicorn, say) is a change of one entry.
type runner struct {
	name string
	// fork runs the cluster in fork-worker mode (a fork_worker block): worker 0 is the template.
	fork bool
	// abstract binds the workers' notify sockets at abstract addresses (notify.abstract), which
	// no file permission guards: a flood from another user reaches the master.
	abstract bool
	// command is the workers' argv; dir their working directory; env what forkd adds to their
	// environment. Paths are absolute: repo is the repository's root, bin the suite's binaries.
	command func(repo, bin string) []string
	dir     func(repo string) string
	env     func(repo string) map[string]string
	// path is what the load asks for: a request that takes a little while, so that some are in
	// flight whenever a fault strikes. Every runner's response body names the serving process
	// ("pid=123" or "(pid 123, ...)"), which attributes a failed request to its worker.
	path string
	// missing says why the runner cannot run on this machine, or "" if it can.
	missing func() string
}

var runners = []*runner{
	{
		// The Go SDK's demo, in exec mode (Go cannot fork a running runtime).
		name:     "go-hello",
		abstract: true,
		command:  func(_, bin string) []string { return []string{filepath.Join(bin, "hello")} },
		dir:      func(repo string) string { return repo },
		env:      func(string) map[string]string { return nil },
		path:     "/slow?ms=20",
		missing:  func() string { return "" },
	},
	{
		// The Python SDK's runner, forkd.gunicorn on gunicorn's threaded worker, on the WSGI test
		// app, in fork-worker mode (gunicorn is installed for Debian's /usr/bin/python3, not for
		// the python3 first on PATH).
		name: "python",
		fork: true,
		command: func(string, string) []string {
			return []string{"/usr/bin/python3", "-m", "forkd.gunicorn", "-k", "gthread", "--threads", "4", "app:app"}
		},
		dir: func(repo string) string { return filepath.Join(repo, "test", "testapp") },
		env: func(repo string) map[string]string {
			return map[string]string{"PYTHONPATH": filepath.Join(repo, "sdk", "python")}
		},
		path: "/slow?ms=20",
		missing: func() string {
			if err := exec.Command("/usr/bin/python3", "-c", "import gunicorn").Run(); err != nil {
				return "/usr/bin/python3 cannot import gunicorn (apt-get install python3-gunicorn)"
			}
			return ""
		},
	},
	{
		// forkd-rack (Puma::Server) on the Rack example app, in fork-worker mode.
		name: "ruby-rack",
		fork: true,
		command: func(repo, _ string) []string {
			sdk := filepath.Join(repo, "sdk", "ruby")
			return []string{"ruby", "-I", filepath.Join(sdk, "lib"), filepath.Join(sdk, "bin", "forkd-rack"), "--threads", "4", "config.ru"}
		},
		dir:     func(repo string) string { return filepath.Join(repo, "examples", "rack") },
		env:     func(string) map[string]string { return map[string]string{"RACK_ENV": "production"} },
		path:    "/slow?ms=20",
		missing: rubyMissing,
	},
}

func lookPath(program string) string {
	if _, err := exec.LookPath(program); err != nil {
		return program + " is not installed"
	}
	return ""
}

func rubyMissing() string {
	if why := lookPath("ruby"); why != "" {
		return why + ": apt-get install -y ruby puma ruby-rack"
	}
	out, err := exec.Command("ruby", "-e", `require "puma"; require "rack"`).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("ruby cannot load puma and rack (%v: %s): apt-get install -y puma ruby-rack", err, strings.TrimSpace(string(out)))
	}
	return ""
}

func runnerNamed(name string) *runner {
	for _, r := range runners {
		if r.name == name {
			return r
		}
	}
	return nil
}
