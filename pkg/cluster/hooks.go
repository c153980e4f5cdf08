package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// This file holds the master's hooks: commands the operator configured for moments of the
// cluster's life (Config.Hooks). The machine decides when one runs, and what a before_ hook's
// failure vetoes; the driver runs it as a helper process and answers HookFinished.

// Hook names a hook, as the config file does.
type Hook string

const (
	// HookBeforeReload runs before a phased restart begins; its failure fails the reload, and
	// the config it came with does not apply.
	HookBeforeReload Hook = "before_reload"
	// HookAfterReload runs when a phased restart has ended, well or not.
	HookAfterReload Hook = "after_reload"
	// HookBeforeRestart runs before a hot restart execs; its failure refuses the restart.
	HookBeforeRestart Hook = "before_restart"
	// HookOnWorkerCrash runs when a worker exits without forkd asking.
	HookOnWorkerCrash Hook = "on_worker_crash"
)

// HookID names one run of a hook, from its RunHook to its HookFinished.
type HookID uint64

// RunHook asks the driver to run a hook: Argv, with forkd's environment plus FORKD_HOOK (the
// hook's name), FORKD_NAME and Vars ("KEY=value"), killed after Timeout. HookFinished answers.
type RunHook struct {
	ID      HookID
	Hook    Hook
	Argv    []string
	Vars    []string
	Timeout time.Duration
}

// HookFinished is the driver's answer to RunHook: the hook's exit Status and its Output (stdout
// and stderr, bounded), or Err when it could not start at all.
type HookFinished struct {
	ID     HookID
	Status ExitStatus
	Output string
	Err    error
}

func (RunHook) isAction()     {}
func (HookFinished) isEvent() {}

// ErrHookFailed: a before_ hook failed, so what it guards did not happen.
var ErrHookFailed = errors.New("cluster: hook failed")

// maxCrashHooks bounds the on_worker_crash hooks running at once: a crash loop of many workers
// must not turn into a fork bomb of hooks.
const maxCrashHooks = 4

// defaultHookTimeout bounds a hook when the config gives no timeout.
const defaultHookTimeout = 30 * time.Second

// runHook runs hook (argv, from a config whose hooks' timeout is timeout) and returns its ID.
func (m *Machine) runHook(hook Hook, argv []string, timeout time.Duration, vars ...string) HookID {
	if timeout <= 0 {
		timeout = defaultHookTimeout
	}
	m.lastHook++
	id := m.lastHook
	m.hooks[id] = hook
	m.log(slog.LevelInfo, fmt.Sprintf("running the %s hook", hook), slog.String("event", "hook-start"),
		slog.String("hook", string(hook)))
	m.emit(RunHook{ID: id, Hook: hook, Argv: argv, Vars: vars, Timeout: timeout})
	return id
}

// hookFinished logs how a hook ended and hands its outcome to what waits for it.
func (m *Machine) hookFinished(e HookFinished) {
	hook, ok := m.hooks[e.ID]
	if !ok {
		return
	}
	delete(m.hooks, e.ID)
	out := strings.TrimSpace(e.Output)
	var err error
	switch {
	case e.Err != nil:
		err = fmt.Errorf("%w: %s: %v", ErrHookFailed, hook, e.Err)
	case !e.Status.Success():
		err = fmt.Errorf("%w: %s: %s", ErrHookFailed, hook, e.Status)
		if out != "" {
			err = fmt.Errorf("%w: %s", err, out)
		}
	}
	if err != nil {
		m.log(slog.LevelWarn, err.Error(), slog.String("event", "hook-failed"), slog.String("hook", string(hook)))
	} else {
		m.log(slog.LevelInfo, fmt.Sprintf("the %s hook succeeded", hook), slog.String("event", "hook-done"),
			slog.String("hook", string(hook)), slog.String("output", out))
	}
	switch hook {
	case HookOnWorkerCrash:
		m.crashHooks--
	case HookBeforeReload:
		m.beforeReloadDone(e.ID, err)
	case HookBeforeRestart:
		m.beforeRestartDone(e.ID, err)
	}
}

// crashHook runs on_worker_crash for a worker of slot that exited (how) without forkd asking.
func (m *Machine) crashHook(slot, pid, generation int, how string) {
	h := m.cfg.Hooks
	if len(h.OnWorkerCrash) == 0 {
		return
	}
	if m.crashHooks >= maxCrashHooks {
		m.log(slog.LevelWarn, fmt.Sprintf("on_worker_crash hook skipped for worker %d: %d already running", slot, m.crashHooks),
			slog.String("event", "hook-skipped"), slog.Int("worker", slot))
		return
	}
	m.crashHooks++
	m.runHook(HookOnWorkerCrash, h.OnWorkerCrash, h.Timeout, "FORKD_WORKER="+strconv.Itoa(slot),
		"FORKD_PID="+strconv.Itoa(pid), "FORKD_GENERATION="+strconv.Itoa(generation), "FORKD_EXIT="+how)
}

// afterReloadHook runs after_reload (of hooks, the config the reload brought) when a reload to
// generation has ended, with failure nil when it succeeded.
func (m *Machine) afterReloadHook(hooks Hooks, generation int, failure error) {
	if len(hooks.AfterReload) == 0 {
		return
	}
	result, reason := "ok", ""
	if failure != nil {
		result, reason = "failed", failure.Error()
	}
	m.runHook(HookAfterReload, hooks.AfterReload, hooks.Timeout, "FORKD_GENERATION="+strconv.Itoa(generation),
		"FORKD_RESULT="+result, "FORKD_ERROR="+reason)
}
