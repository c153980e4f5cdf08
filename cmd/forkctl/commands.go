package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"

	"github.com/forkd/forkd/internal/version"
	"github.com/forkd/forkd/pkg/control"
	"github.com/spf13/cobra"
)

func (c *cli) stopCommand() *cobra.Command {
	var req control.StopRequest
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop forkd and its workers",
		Long: `Stop forkd: the workers get SIGTERM and time to finish their requests, then forkd exits.

--immediate kills the workers with SIGKILL instead. --wait returns only when the workers are gone.
Under systemd, use systemctl stop instead, so that systemd knows the stop was meant.`,
		Args: noArgs,
		RunE: c.action(func(cmd *cobra.Command, _ []string) error {
			client, err := c.client()
			if err != nil {
				return err
			}
			ctx, cancel := c.context(cmd.Context(), req.Wait)
			defer cancel()
			err = client.Stop(ctx, req)
			if err != nil && req.Wait && connectionLost(err) {
				// forkd exits right after its workers are drained, and its reply can lose the race
				// with its exit. If nothing answers any more, the stop is done.
				if _, statusErr := client.Status(ctx); errors.Is(statusErr, control.ErrNotRunning) || connectionLost(statusErr) {
					err = nil
				}
			}
			if err != nil {
				return err
			}
			if req.Wait {
				fmt.Fprintln(c.stdout, "forkd stopped")
			} else {
				fmt.Fprintln(c.stdout, "forkd is stopping")
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&req.Immediate, "immediate", false, "kill the workers at once instead of draining them")
	cmd.Flags().BoolVar(&req.Wait, "wait", false, "return when the workers are gone, not when the stop has begun")
	return cmd
}

// connectionLost reports whether err means the connection broke off before the reply.
func connectionLost(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (c *cli) scaleCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "scale N | +N | -N",
		Short:   "Change the number of workers",
		Long:    `Change the number of workers: to N, or by +N or -N relative to the current number.`,
		Example: "  forkctl scale 8\n  forkctl scale +2\n  forkctl scale -1",
		Args:    oneArg("N, +N or -N"),
		RunE: c.action(func(cmd *cobra.Command, args []string) error {
			req, err := parseScale(args[0])
			if err != nil {
				return err
			}
			client, err := c.client()
			if err != nil {
				return err
			}
			ctx, cancel := c.context(cmd.Context(), false)
			defer cancel()
			resp, err := client.Scale(ctx, req)
			if err != nil {
				return err
			}
			if resp.Workers == resp.Previous {
				fmt.Fprintf(c.stdout, "already at %d workers\n", resp.Workers)
			} else {
				fmt.Fprintf(c.stdout, "scaled from %d to %d workers\n", resp.Previous, resp.Workers)
			}
			return nil
		}),
	}
}

// parseScale reads scale's argument: "N" is an absolute count, "+N" and "-N" a change.
func parseScale(arg string) (control.ScaleRequest, error) {
	n, err := strconv.Atoi(arg)
	if err != nil {
		return control.ScaleRequest{}, usagef("invalid worker count %q: want N, +N or -N", arg)
	}
	if strings.HasPrefix(arg, "+") || strings.HasPrefix(arg, "-") {
		if n == 0 {
			return control.ScaleRequest{}, usagef("a change of %s workers changes nothing", arg)
		}
		return control.ScaleRequest{Delta: n}, nil
	}
	if n < 1 {
		return control.ScaleRequest{}, usagef("cannot scale to %d workers: the least is 1 (to stop them all, use forkctl stop)", n)
	}
	return control.ScaleRequest{Workers: n}, nil
}

func (c *cli) checkCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "check CONFIG",
		Short: "Check a forkd config file",
		Long: `Check a forkd config file without starting anything: print "ok", or each problem with its
file:line:col. Exits 0 when the file is valid and 78 (EX_CONFIG) when it is not.`,
		Args: oneArg("the config file"),
		ValidArgsFunction: func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
			return []string{"hcl"}, cobra.ShellCompDirectiveFilterFileExt
		},
		RunE: c.action(func(_ *cobra.Command, args []string) error {
			var out bytes.Buffer
			code := checkConfigFile(args[0], &out)
			// The verdict goes to stdout when the file is fine, to stderr with the diagnostics when
			// it is not, so `forkctl check f >/dev/null` still shows what is wrong.
			if code == exitOK {
				_, err := out.WriteTo(c.stdout)
				return err
			}
			out.WriteTo(c.stderr)
			return &exitError{code: code}
		}),
	}
}

func (c *cli) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print forkctl's version, and the running forkd's",
		Long: `Print forkctl's version ("client:") and the version of the forkd that answers on the control
socket ("server:"), with its PID and socket, or why none answers. A forkd that is not running is an
answer, not a failure: forkctl exits 0.`,
		Args: noArgs,
		RunE: c.action(func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(c.stdout, "client: %s\n", version.Of("forkctl"))
			client, err := c.client()
			if err != nil {
				return err
			}
			ctx, cancel := c.context(cmd.Context(), false)
			defer cancel()
			st, err := client.Status(ctx)
			if errors.Is(err, control.ErrNotRunning) {
				fmt.Fprintf(c.stdout, "server: %s\n", strings.TrimPrefix(err.Error(), "forkd is "))
				return nil
			}
			if err != nil {
				return fmt.Errorf("cannot ask forkd for its version: %w", err)
			}
			fmt.Fprintf(c.stdout, "server: %s, pid %d, at %s\n", printable(st.Version), st.MasterPID, c.socket.path)
			return nil
		}),
	}
}
