package main

import (
	"context"
	"fmt"

	"github.com/forkd/forkd/pkg/control"
	"github.com/spf13/cobra"
)

// The rollout commands: refork, reload (phased restart) and restart (hot restart). Each returns
// once the rollout has begun, or with --wait once it has ended, and exits 0 only if it succeeded:
// systemd runs `forkctl reload --wait` as ExecReload=, and `systemctl reload` fails with it.

const waitHelp = `forkd runs one of refork, reload and restart at a time: a %[1]s asked for while another runs
waits for it (one asked for during an automatic refork cuts that refork short), and joins a %[1]s
that waits already. Without --wait, forkctl returns once the %[1]s has begun or is queued, or
exits 1 at once if it cannot (forkd is stopping, the mode does not allow it). With --wait, it
returns when the %[1]s has ended, and exits 1 with the reason if it failed. %[2]s
--wait waits as long as that takes unless --timeout is given; a forkctl that gives up or is
interrupted leaves the %[1]s going on in forkd.`

// What --wait waits for: a reload's old workers run the old code, so it waits for their exit; a
// refork's run the same code, forked from an older heap, and drain on their own.
const (
	replacedGone = `It has ended
once every old worker it replaced has exited.`
	reforkEnd = `It has ended
once every new worker serves (and worker 0 again, in template mode): the old ones are told to
stop and drain on their own (they run the same code), so a slow request in one of them delays
nothing.`
)

func (c *cli) reforkCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "refork",
		Short: "Re-fork the workers from the template (fork-worker mode)",
		Long: `Re-fork workers 1..n-1 from the template, worker 0, as a new generation: the new workers start
from the template's memory as it is now, warmed up. It is a rolling update (the config's rollout
block): old workers stop as their replacements become ready, and a replacement that fails stops
the refork with the old workers serving on. The template itself is not replaced; to replace
every worker, use forkctl reload. Needs fork-worker mode (a fork_worker block in the config, and
an app whose SDK can fork).

` + fmt.Sprintf(waitHelp, "refork", reforkEnd),
	}
	return c.rolloutCommand(cmd, "refork", func(ctx context.Context, client *control.Client, wait bool) (string, error) {
		resp, err := client.Refork(ctx, control.ReforkRequest{Wait: wait})
		if err != nil {
			return "", err
		}
		if wait {
			return fmt.Sprintf("refork done: generation %d", resp.Generation), nil
		}
		if resp.Queued != "" {
			return fmt.Sprintf("refork queued: it begins when the %s in progress has ended", printable(resp.Queued)), nil
		}
		return fmt.Sprintf("refork started (generation %d)", resp.Generation), nil
	})
}

func (c *cli) reloadCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "reload",
		Aliases: []string{"phased-restart"},
		Short:   "Replace every worker with a new one, slot by slot (phased restart)",
		Long: `Replace every worker with a newly started one, as a new generation (a phased restart), so that
the workers run the app as it is on disk now. It is a rolling update (the config's rollout
block): old workers stop as their replacements become ready, so the service keeps serving
throughout, and a replacement that fails stops the reload with the old workers serving on.

` + fmt.Sprintf(waitHelp, "reload", replacedGone) + `

Under systemd, ExecReload=forkctl reload --wait makes systemctl reload wait for the reload and
fail when it fails.`,
	}
	return c.rolloutCommand(cmd, "reload", func(ctx context.Context, client *control.Client, wait bool) (string, error) {
		resp, err := client.Reload(ctx, control.ReloadRequest{Wait: wait})
		if err != nil {
			return "", err
		}
		if wait {
			return fmt.Sprintf("reload done: generation %d", resp.Generation), nil
		}
		if resp.Queued != "" {
			return fmt.Sprintf("reload queued: it begins when the %s in progress has ended", printable(resp.Queued)), nil
		}
		return fmt.Sprintf("reload started (generation %d)", resp.Generation), nil
	})
}

func (c *cli) restartCommand() *cobra.Command {
	var keepWorkers bool
	cmd := &cobra.Command{
		Use:   "restart",
		Short: "Hot-restart forkd: the master re-execs itself, then replaces the workers (SIGUSR2)",
		Long: `Hot-restart forkd: the master re-execs its binary in place, keeping its PID and its listening
sockets, then replaces every worker by a phased restart, as Puma's hot restart replaces the app:
after a package upgrade, both the new forkd and the new release of the app run, with no pause in
service (the old workers serve until their replacements are ready). SIGUSR2 does the same.

With --keep-workers, only the master is upgraded: the new image adopts the running workers and
keeps them as they are (for a new forkd binary without a new release of the app).

` + fmt.Sprintf(waitHelp, "restart", replacedGone) + `

The exec closes forkctl's connection; with --wait, forkctl reconnects and returns once the new
master has ended the restart (its phased restart done, unless --keep-workers), printing its
version, or exits 1 if the new release's workers did not become ready (the old workers serve on,
under the new master). If forkd comes back as a new process instead (it died and was started
afresh), the restart failed.`,
	}
	cmd = c.rolloutCommand(cmd, "restart", func(ctx context.Context, client *control.Client, wait bool) (string, error) {
		resp, err := client.Restart(ctx, control.RestartRequest{Wait: wait, KeepWorkers: keepWorkers})
		if err != nil {
			return "", err
		}
		if !wait {
			return "restart started", nil
		}
		what := "workers replaced"
		if keepWorkers {
			what = "workers kept"
		}
		st, err := client.Status(ctx)
		if err != nil {
			// The restart is done all the same; only the version is missing.
			return fmt.Sprintf("restart done: generation %d, %s", resp.Generation, what), nil
		}
		return fmt.Sprintf("restart done: %s (pid %d), generation %d, %s", printable(st.Version), st.MasterPID, resp.Generation, what), nil
	})
	cmd.Flags().BoolVar(&keepWorkers, "keep-workers", false,
		"upgrade the master only: the new image keeps the running workers instead of replacing them")
	return cmd
}

// rolloutCommand completes cmd as a rollout command named name: no arguments, a --wait flag, and
// a RunE that calls run and prints the line it returns.
func (c *cli) rolloutCommand(cmd *cobra.Command, name string,
	run func(ctx context.Context, client *control.Client, wait bool) (string, error)) *cobra.Command {
	var wait bool
	cmd.Args = noArgs
	cmd.ValidArgsFunction = cobra.NoFileCompletions
	cmd.RunE = c.action(func(cmd *cobra.Command, _ []string) error {
		client, err := c.client()
		if err != nil {
			return err
		}
		ctx, cancel := c.context(cmd.Context(), wait)
		defer cancel()
		line, err := run(ctx, client, wait)
		if err != nil {
			if connectionLost(err) {
				// forkd stopped or died while the request was in flight.
				return fmt.Errorf("forkd closed the connection before answering the %s: %w", name, err)
			}
			return err
		}
		fmt.Fprintln(c.stdout, line)
		return nil
	})
	cmd.Flags().BoolVar(&wait, "wait", false,
		"return when the "+name+" is done (exit 1 if it failed), not when it has begun")
	return cmd
}
