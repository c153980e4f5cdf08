package cluster_test

import (
	"fmt"
	"time"

	"github.com/forkd/forkd/pkg/cluster"
)

// The machine in the manner of etcd-io/raft: an event goes in with its time, a batch of actions
// comes out, to be carried out in order before Advance; what carrying them out teaches (a spawned
// worker's PID) is the next event. docs/architecture.md shows this loop; internal/supervisor's
// Executor is it for real.
func ExampleMachine() {
	m, err := cluster.NewMachine(cluster.Config{Workers: 1, MaxWorkers: 1, ReadyOnStart: true,
		BootTimeout: time.Second, BackoffMin: time.Second, BackoffMax: time.Second, ResetAfter: time.Minute,
		MaxSurge: 1, Spec: 1})
	if err != nil {
		panic(err)
	}
	now := time.Now()
	var learned []cluster.Event
	for ev := cluster.Event(cluster.Start{}); ev != nil; {
		if err := m.Step(now, ev); err != nil {
			panic(err)
		}
		for _, a := range m.Ready() {
			switch a := a.(type) {
			case cluster.SpawnWorker:
				fmt.Println("spawn worker", a.Slot)
				learned = append(learned, cluster.Spawned{Worker: a.Worker, PID: 4242})
			case cluster.NotifySystemd:
				fmt.Printf("systemd: %q\n", a.State)
			}
		}
		m.Advance()
		ev = nil
		if len(learned) > 0 {
			ev, learned = learned[0], learned[1:]
		}
	}
	// Output:
	// spawn worker 0
	// systemd: "STATUS=starting: 0/1 workers ready, generation 1"
	// systemd: "READY=1\nSTATUS=1/1 workers ready, generation 1"
}
