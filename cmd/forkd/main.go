// Command forkd is the master of a preforking cluster: it takes the listen sockets from systemd
// (or binds them), runs the application's workers on them, and supervises them. See forkd(8) and
// docs/architecture.md.
//
//	forkd --config /etc/forkd/app.hcl
//	forkd --workers 4 --listen tcp://127.0.0.1:8080 -- python3 app.py
//	forkd check /etc/forkd/app.hcl
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/spf13/cobra"

	"github.com/forkd/forkd/internal/supervisor"
	"github.com/forkd/forkd/internal/version"
	"github.com/forkd/forkd/pkg/config"
	"github.com/forkd/forkd/pkg/restart"
	"github.com/forkd/forkd/pkg/shim"
)

// The main goroutine keeps the main thread: the master's spawner runs on it (see main).
func init() { runtime.LockOSThread() }

func main() {
	// A worker's first moments: the master spawned this binary as the shim that sets LISTEN_PID
	// and execs the app in place. Nothing else may run first.
	if len(os.Args) > 1 && os.Args[1] == shim.Arg {
		shim.Run(os.Args[2:])
	}
	// The master about to hot-restart into this binary asks which handover it reads.
	if len(os.Args) > 1 && os.Args[1] == restart.HandoverVersionArg {
		fmt.Println(restart.Version)
		os.Exit(0)
	}
	// The master (not a subcommand such as check) checks RLIMIT_NPROC before its runtime needs
	// another thread, which it could not survive (limits.go). After a hot restart the workers run
	// and count against the limit: the check would only stop them all.
	master := len(os.Args) == 1 || strings.HasPrefix(os.Args[1], "-")
	if master {
		tuneGC()
	}
	if master && os.Getenv(restart.EnvHandoverFD) == "" {
		if err := checkProcessLimit(); err != nil {
			fmt.Fprintln(os.Stderr, "forkd:", err)
			os.Exit(1)
		}
	}
	go func() { os.Exit(execute(os.Args[1:])) }()
	// Every child of the master is forked, and a hot restart execs, from the main thread: the one
	// thread whose children keep their parent through any number of hot restarts, so that their
	// Pdeathsig fires only when the master dies.
	supervisor.ServeSpawns()
}

// exitError carries an exit code out of a command; err, when set, is printed as "forkd: err".
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func execute(args []string) int {
	var flags config.Flags
	root := &cobra.Command{
		Use:   "forkd [flags] [-- command [args...]]",
		Short: "forkd runs and supervises a preforking cluster of application workers",
		Long: `forkd runs N workers of an application on shared listen sockets, taken from systemd
(LISTEN_FDS) or bound from the config, and supervises them: readiness and heartbeats over
sd_notify, crash respawn with backoff, graceful drain, control through forkctl.`,
		Example: `  forkd --config /etc/forkd/app.hcl
  forkd --workers 4 --listen tcp://127.0.0.1:8080 -- python3 app.py`,
		Args:          cobra.ArbitraryArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dash := cmd.ArgsLenAtDash(); dash >= 0 {
				if dash > 0 {
					return &exitError{2, fmt.Errorf("unexpected argument %q before --; the app's command goes after --", args[0])}
				}
				flags.Command = args
			} else if len(args) > 0 {
				return &exitError{2, fmt.Errorf("unknown command %q; the app's command goes after --", args[0])}
			}
			if flags.Config == "" && len(flags.Command) == 0 {
				return &exitError{2, errors.New("nothing to run: give --config FILE, or the app's command after --")}
			}
			return run(flags)
		},
	}
	flags.Register(root.Flags())

	root.AddCommand(&cobra.Command{
		Use:   "check CONFIG",
		Short: "Validate a config file and exit 0, or print its errors and exit 78",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return &exitError{2, fmt.Errorf("check takes one argument, the config file, like forkd check /etc/forkd/app.hcl; got %d", len(args))}
			}
			return nil
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := config.Check(args[0], os.Stdout); code != 0 {
				return &exitError{code: code}
			}
			return nil
		},
	})
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print forkd's version",
		Args:  cobra.NoArgs,
		Run:   func(cmd *cobra.Command, args []string) { fmt.Println(version.String()) },
	})
	root.SetArgs(args)
	err := root.Execute()
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(os.Stderr, "forkd:", ee.err)
		}
		return ee.code
	}
	// Cobra's own errors: an unknown flag, a bad flag value.
	fmt.Fprintln(os.Stderr, "forkd:", err)
	return 2
}
