package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/forkd/forkd/pkg/control"
	"github.com/spf13/cobra"
)

// socketEnv names the control socket when --socket is not given.
const socketEnv = "FORKD_SOCKET"

// defaultTimeout bounds a command that does not wait for an action to finish.
const defaultTimeout = 30 * time.Second

// cli holds forkctl's global flags and where it prints.
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string

	socketFlag string
	configFlag string
	nameFlag   string
	timeout    time.Duration
	// timeoutSet records an explicit --timeout, which also bounds commands that --wait.
	timeoutSet bool

	// socket is the control socket once a command has resolved it, so that a "not running"
	// error can say where the path came from.
	socket *socketChoice
}

// socketChoice is a control socket path and how forkctl came to it.
type socketChoice struct {
	path string
	// hint tells the operator, when nothing answers at path, why forkctl looked there.
	hint string
}

func (c *cli) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "forkctl",
		Short: "Control a running forkd",
		Long: `forkctl talks to a running forkd over its control socket.

The socket is, in order: --socket, $FORKD_SOCKET, the control socket of --config FILE, the
default socket of the instance named --name NAME (forkd --name NAME, or forkd@NAME under
systemd), or the default socket of the instance named "forkd".`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			c.timeoutSet = cmd.Flags().Changed("timeout")
			if c.timeout < 0 {
				return c.exitErrorFor(usagef("--timeout %s is negative: give how long to wait, like 30s or 2m, or 0 for no limit", c.timeout))
			}
			return nil
		},
	}
	flags := root.PersistentFlags()
	flags.StringVarP(&c.socketFlag, "socket", "s", "", "path of forkd's control socket")
	flags.StringVarP(&c.configFlag, "config", "c", "", "take the control socket from this forkd config file")
	flags.StringVar(&c.nameFlag, "name", "", "the default control socket of the forkd instance `NAME` (forkd --name NAME, forkd@NAME)")
	root.MarkFlagsMutuallyExclusive("socket", "config", "name")
	flags.DurationVar(&c.timeout, "timeout", defaultTimeout,
		"give up after this long; 0 waits without limit; with --wait, the default is to wait without limit")
	_ = root.MarkPersistentFlagFilename("config", "hcl")

	root.AddCommand(
		c.statusCommand(),
		c.stopCommand(),
		c.scaleCommand(),
		c.reforkCommand(),
		c.reloadCommand(),
		c.restartCommand(),
		c.eventsCommand(),
		c.topCommand(),
		c.checkCommand(),
		c.versionCommand(),
	)
	return root
}

// action wraps a command's work so that every error it returns carries its exit code. run tells
// such errors from cobra's own command-line errors by that.
func (c *cli) action(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := fn(cmd, args); err != nil {
			return c.exitErrorFor(err)
		}
		return nil
	}
}

func (c *cli) exitErrorFor(err error) *exitError {
	var exit *exitError
	var usage *usageError
	switch {
	case errors.As(err, &exit):
		return exit
	case errors.As(err, &usage):
		return &exitError{code: exitUsage, err: err}
	case errors.Is(err, control.ErrNotRunning):
		hint := ""
		if c.socket != nil {
			hint = c.socket.hint
		}
		return &exitError{code: exitNotRunning, err: err, hint: hint}
	case errors.Is(err, context.DeadlineExceeded):
		return &exitError{code: exitFailure,
			err: fmt.Errorf("no answer from forkd within %s (see --timeout): %w", c.timeout, err)}
	case errors.Is(err, context.Canceled):
		return &exitError{code: exitFailure, err: errors.New("interrupted")}
	}
	return &exitError{code: exitFailure, err: err}
}

// resolveSocket picks the control socket: --socket, $FORKD_SOCKET, --config, or the default.
func (c *cli) resolveSocket() (socketChoice, error) {
	var choice socketChoice
	switch {
	case c.socketFlag != "":
		choice = socketChoice{path: c.socketFlag, hint: "the socket path came from --socket"}
	case c.getenv(socketEnv) != "":
		choice = socketChoice{path: c.getenv(socketEnv), hint: "the socket path came from $" + socketEnv}
	case c.configFlag != "":
		path, err := socketFromConfigFile(c.configFlag)
		if err != nil {
			return socketChoice{}, &exitError{code: exitConfig, err: err,
				hint: "forkctl check " + c.configFlag + " lists every problem"}
		}
		choice = socketChoice{path: path, hint: "the socket path is the control socket of " + c.configFlag + " (--config)"}
	case c.nameFlag != "":
		if err := checkInstanceName(c.nameFlag); err != nil {
			return socketChoice{}, usagef("--name: %v", err)
		}
		choice = socketChoice{path: defaultSocket(c.nameFlag),
			hint: fmt.Sprintf("the socket path is the default one of instance %q (--name); a forkd with a config file that sets control.socket is reached with --config FILE", c.nameFlag)}
	default:
		choice = socketChoice{path: defaultSocket("forkd"),
			hint: "the socket path is the default one; name another forkd with --name NAME, --config FILE or --socket PATH"}
	}
	c.socket = &choice
	return choice, nil
}

func (c *cli) client() (*control.Client, error) {
	choice, err := c.resolveSocket()
	if err != nil {
		return nil, err
	}
	return control.NewClient(choice.path), nil
}

// context bounds one command: by --timeout, except that a command that waits for an action to
// finish waits as long as it takes unless --timeout was given explicitly. --timeout 0 means no
// limit, as a zero does for kubectl's --request-timeout and timeout(1); a negative one is refused
// before any command runs.
func (c *cli) context(parent context.Context, waits bool) (context.Context, context.CancelFunc) {
	if (waits && !c.timeoutSet) || c.timeout == 0 {
		return context.WithCancel(parent)
	}
	return context.WithTimeout(parent, c.timeout)
}

// noArgs rejects arguments to a command that takes none, naming them (cobra.NoArgs would call the
// first one an unknown command).
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s takes no arguments, got %q", cmd.Name(), strings.Join(args, " "))
	}
	return nil
}

// oneArg accepts exactly one argument, described by what in the error.
func oneArg(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("%s takes one argument, %s; got %d", cmd.Name(), what, len(args))
		}
		return nil
	}
}

var negativeNumber = regexp.MustCompile(`^-[0-9]+$`)

// numberFlags are the flags that take a number, whose value stays where it is even when it is
// negative (so that top's -n -1 is refused by top, saying why).
var numberFlags = []string{"-n", "--iterations"}

// negativeNumbersAsArgs moves arguments such as "-2" behind a "--", so that `forkctl scale -2`
// reaches scale as an argument: cobra would otherwise read it as the shorthand flag -2. No forkctl
// flag is a digit, and the value of a flag that takes a number stays, so nothing is lost.
func negativeNumbersAsArgs(args []string) []string {
	var head, numbers, tail []string
	for i, arg := range args {
		if arg == "--" {
			tail = args[i+1:]
			break
		}
		if negativeNumber.MatchString(arg) && (i == 0 || !slices.Contains(numberFlags, args[i-1])) {
			numbers = append(numbers, arg)
		} else {
			head = append(head, arg)
		}
	}
	if len(numbers) == 0 {
		return args
	}
	out := append(head, "--")
	out = append(out, numbers...)
	return append(out, tail...)
}
