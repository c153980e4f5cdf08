package chaos

// knownFailing lists the faults that break an invariant on main today, each with the item of
// the issue whose fix it waits for. The short version (in make test) does not inject them, and
// says so; make chaos injects them all the same and reports, for each entry, whether it still
// fails: an entry whose fault passes there is fixed, and comes off this list.
var knownFailing = []knownFailure{
	{fault: "refork-kill-template", runner: "python", waitsFor: forkedAsTemplateDied},
}

// Causes shared by several entries. Each names the seed and the selection that showed it
// (replay: go test -count=1 -v -run '^TestChaos$' ./test/chaos -args -chaos.full ...); the
// timing around a fault varies, so a replay shows it often, not always.
const (
	// Seen once with -chaos.seed=4242 -chaos.rounds=3 -chaos.faults=refork-kill-template,reload-kill-new,
	// python round 4 (SIGKILL worker 0 at spawn#1 of a refork), not in a replay:
	//   03:42:00.725 worker spawned (forked) ... "worker":2,"pid":12232,"generation":3
	//   03:42:00.727 worker exited: killed by SIGKILL ... "worker":0 (the template)
	//   03:42:10.729 worker did not exit within 10s of SIGTERM ... "pid":12232
	//   03:42:10.735 worker exited: killed by SIGKILL (rollout stopped, then shutdown timeout)
	// pid 12232 never said READY=1, yet accepted a connection it never answered (the request
	// failed when forkd killed it: invariant requests).
	forkedAsTemplateDied = "not filed yet, sdk/python: a worker forked as its template was SIGKILLed hung (never " +
		"ready, a connection accepted and not answered, SIGTERM ignored until the shutdown timeout). Invariant requests; " +
		"seed 4242, same selection, python round 4"
)

type knownFailure struct {
	fault  string
	runner string // "" for every runner
	// waitsFor names the issue item (issues show N) and what goes wrong until it is fixed.
	waitsFor string
}

// knownFailingFor returns the entry for fault on runner, or nil.
func knownFailingFor(fault, runner string) *knownFailure {
	for i, k := range knownFailing {
		if k.fault == fault && (k.runner == "" || k.runner == runner) {
			return &knownFailing[i]
		}
	}
	return nil
}
