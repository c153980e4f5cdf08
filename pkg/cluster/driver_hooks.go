package cluster

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// This file runs the master's hooks (config.Hooks): commands at moments of the cluster's life.

// maxCrashHooks bounds the on_worker_crash hooks running at once: a crash loop of many workers
// must not turn into a fork bomb of hooks.
const maxCrashHooks = 4

// defaultHookTimeout bounds a hook when the config gives no timeout.
const defaultHookTimeout = 30 * time.Second

// ErrHookFailed: a before_ hook failed, so what it guards did not happen.
var ErrHookFailed = fmt.Errorf("cluster: hook failed")

// runHook runs a hook with forkd's environment plus FORKD_HOOK, FORKD_NAME and vars, and calls done
// (if not nil) with nil when it exited 0, or the reason it failed.
func (d *Driver) runHook(name string, argv []string, vars map[string]string, done func(error)) {
	env := inheritedEnv(os.Environ())
	env = append(env, "FORKD_HOOK="+name, "FORKD_NAME="+d.cfg.Name)
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	d.log.Info(fmt.Sprintf("running the %s hook", name), "event", "hook-start", "hook", name)
	timeout := d.hooks.Timeout
	if timeout <= 0 {
		timeout = defaultHookTimeout
	}
	err := d.runHelper("the "+name+" hook", argv, env, timeout, func(st ExitStatus, out string) {
		out = strings.TrimSpace(out)
		if !st.Success() {
			err := fmt.Errorf("%w: %s: %s", ErrHookFailed, name, st)
			if out != "" {
				err = fmt.Errorf("%w: %s", err, out)
			}
			d.log.Warn(err.Error(), "event", "hook-failed", "hook", name)
			if done != nil {
				done(err)
			}
			return
		}
		d.log.Info(fmt.Sprintf("the %s hook succeeded", name), "event", "hook-done", "hook", name, "output", out)
		if done != nil {
			done(nil)
		}
	})
	if err != nil && done != nil {
		done(fmt.Errorf("%w: %s: %v", ErrHookFailed, name, err))
	}
}

func (d *Driver) workerCrashed(a WorkerCrashed) {
	if len(d.hooks.OnWorkerCrash) == 0 {
		return
	}
	if d.crashHooks >= maxCrashHooks {
		d.log.Warn(fmt.Sprintf("on_worker_crash hook skipped for worker %d: %d already running", a.Slot, d.crashHooks),
			"event", "hook-skipped", "worker", a.Slot)
		return
	}
	d.crashHooks++
	d.runHook("on_worker_crash", d.hooks.OnWorkerCrash, map[string]string{
		"FORKD_WORKER":     strconv.Itoa(a.Slot),
		"FORKD_PID":        strconv.Itoa(a.PID),
		"FORKD_GENERATION": strconv.Itoa(a.Generation),
		"FORKD_EXIT":       a.Status,
	}, func(error) { d.crashHooks-- })
}

// rolloutEnded runs after_reload when a phased restart has ended.
func (d *Driver) rolloutEnded(a RolloutEnded) {
	if a.Kind != kindReload || len(d.hooks.AfterReload) == 0 {
		return
	}
	result, reason := "ok", ""
	if a.Err != nil {
		result, reason = "failed", a.Err.Error()
	}
	d.runHook("after_reload", d.hooks.AfterReload, map[string]string{
		"FORKD_GENERATION": strconv.Itoa(a.Generation),
		"FORKD_RESULT":     result,
		"FORKD_ERROR":      reason,
	}, nil)
}
