package supervisor

import (
	"os"

	"github.com/forkd/forkd/pkg/cluster"
)

// This file runs the master's hooks, as the machine asks (RunHook): the machine decides when one
// runs and what its outcome means; the driver only runs it.

// runHook runs a hook with forkd's environment plus FORKD_HOOK, FORKD_NAME and the action's
// variables, and steps HookFinished once it has exited.
func (d *Driver) runHook(a cluster.RunHook) {
	env := inheritedEnv(os.Environ())
	env = append(env, "FORKD_HOOK="+string(a.Hook), "FORKD_NAME="+d.cfg.Name)
	env = append(env, a.Vars...)
	err := d.runHelper("the "+string(a.Hook)+" hook", a.Argv, env, a.Timeout, func(st cluster.ExitStatus, out string) {
		d.learn(cluster.HookFinished{ID: a.ID, Status: st, Output: out})
	})
	if err != nil {
		d.learn(cluster.HookFinished{ID: a.ID, Err: err})
	}
}
