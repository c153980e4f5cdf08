// Package cluster is the worker cluster's logic: a deterministic state machine (Machine) that
// decides what happens to every worker. It imports only the standard library; the driver that
// carries its decisions out against real processes is internal/supervisor.
//
// The machine does no I/O and reads no clock. Events go in with the time they happen at; actions
// come out, in the order the caller must carry them out:
//
//	m, _ := cluster.NewMachine(cfg)
//	m.Step(time.Now(), cluster.Start{})
//	for {
//		for _, a := range m.Ready() {
//			// SpawnWorker: start a process, then Step(Spawned{...}) or Step(SpawnFailed{...}).
//			// SignalWorker, NotifySystemd, Reply, Log: carry out. Exit: the master exits.
//		}
//		deadline, ok := m.NextDeadline() // arm one timer; Step(Tick{}) when it fires
//		ev := <-events                   // a reaped child, a datagram, a command, a tick
//		m.Step(time.Now(), ev)
//	}
//
// supervisor.Driver is that loop for real: it owns the pidfds, the signals, the notify socket and the timer,
// and one goroutine owns the machine. Because the machine is pure, tests drive it with a simulated
// clock and random event orders (see sim_test.go) and check its invariants after every step
// (docs/architecture.md lists them): every live worker process is known and every known one is
// alive; a slot holds its current process and, during a rollout, its replacement, never more (those
// on their way out aside); no slot is stuck without a process or a respawn time; a crashing slot
// backs off; no deadline is left in the past after a Tick; a stop exits only once every process,
// strays included, is gone, and every command is answered; a rollout stays within max_surge and
// max_unavailable; the template is a ready worker 0 that can fork; Restore(Export()) changes
// nothing the status shows.
package cluster
