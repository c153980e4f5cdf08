// Command forkctl controls a running forkd through its control socket (package control): it shows
// the workers, stops and scales the cluster, rolls out new workers (refork, reload) and a new
// master (restart), checks config files, and reports versions.
//
// Exit codes: 0 success, 1 failure, 2 bad command line, 3 forkd is not running, 78 (EX_CONFIG)
// invalid config.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes. exitConfig (78) lives in config.go, beside the rest of forkctl's use of pkg/config.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	// exitNotRunning lets scripts tell "forkd is down" from "forkd refused": `forkctl status`
	// exits 3 as `systemctl status` does for an inactive unit.
	exitNotRunning = 3
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}

// run runs forkctl with args (without the program name) and returns its exit code. Everything it
// prints goes to stdout and stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &cli{stdout: stdout, stderr: stderr, getenv: getenv}
	root := c.rootCommand()
	root.SetArgs(negativeNumbersAsArgs(args))
	root.SetOut(stdout)
	root.SetErr(stderr)

	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var exit *exitError
	if !errors.As(err, &exit) {
		// Only a command's RunE returns an *exitError; anything else is cobra rejecting the
		// command line before any command ran.
		fmt.Fprintf(stderr, "forkctl: %v\nRun '%s --help' for usage.\n", err, cmd.CommandPath())
		return exitUsage
	}
	if exit.err != nil {
		fmt.Fprintf(stderr, "forkctl: %v\n", exit.err)
	}
	if exit.code == exitUsage {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	if exit.hint != "" {
		fmt.Fprintf(stderr, "forkctl: hint: %s\n", exit.hint)
	}
	return exit.code
}

// exitError ends forkctl with code, printing err (unless nil) and hint (unless empty).
type exitError struct {
	code int
	err  error
	hint string
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// usageError is a command line that names a command but gives it arguments it cannot use.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}
