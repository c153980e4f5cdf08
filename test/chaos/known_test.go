package chaos

// knownFailing lists the faults that break an invariant on main today, each with the item of
// the issue whose fix it waits for. The short version (in make test) does not inject them, and
// says so; make chaos injects them all the same and reports, for each entry, whether it still
// fails: an entry whose fault passes there is fixed, and comes off this list.
var knownFailing = []knownFailure{
	{fault: "refork-kill-template", waitsFor: rollbackLeftovers},
	{fault: "reload-kill-new", waitsFor: rollbackLeftovers},
	// A fault that makes workers drain (a rollout replaces them, or their master dies) loses a
	// request now and then where the runner's drain has not been fixed (dfaa093 fixed forkd-rack's),
	// and may count an old worker's last datagram as dropped.
	{fault: "restart-stall-master", runner: "go-hello", waitsFor: drainRace + " (sdk/go's HTTPDrainer); and " + lateDatagrams},
	{fault: "restart-stall-master", runner: "python", waitsFor: drainRace + " (forkd.wsgi); and " + lateDatagrams},
	{fault: "restart-kill-master", runner: "go-hello", waitsFor: drainRace + " (sdk/go's HTTPDrainer: the killed master's workers drain on SIGTERM)"},
	{fault: "restart-kill-master", runner: "python", waitsFor: drainRace + " (forkd.wsgi: the killed master's workers drain on SIGTERM)"},
	{fault: "restart-long-stall-master", waitsFor: "a fix not filed yet (since 12.2 landed, no worker is killed): " + kinshipTimeout +
		"; and, on go-hello and python, " + drainRace + "; and " + lateDatagrams},
	{fault: "restart-broken-release", waitsFor: "11.3: forkctl restart --wait exits 0 when the new image's phased restart " +
		"fails (broken release: generation unchanged, forkctl says \"restart done\"); and, on go-hello and python, " + drainRace},
	{fault: "flood-notify", waitsFor: "12.5: the master spends 45-100% of a CPU walking /proc for each datagram of a flood from another uid"},
}

// Causes shared by several entries.
const (
	kinshipTimeout = "when the master was stopped during a hot restart, a control request waits on the " +
		"worker check of 12.3 (control.worker_access), which times out, and the request is refused with 403 " +
		"\"cannot tell whether pid N is one of forkd's workers\": forkctl restart --wait exits 1 though the restart " +
		"completes"
	lateDatagrams = "12.6: a datagram an old worker sent just before it exited is read after forkd reaped " +
		"it, and counted as dropped (not from a worker)"
	drainRace = "10.6: a draining worker closes an idle keep-alive connection just as the client's next request " +
		"arrives, and that request fails"
	rollbackLeftovers = "a fix not filed yet: a rollout that fails part-way leaves the workers it had replaced " +
		"on the new generation while the cluster goes back to the old one; the next rollout to that generation " +
		"never ends in fork-worker mode (phase rolling for ever), and a hot restart fails at once with the stale reason " +
		"in exec mode while forkctl says \"restart done\""
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
