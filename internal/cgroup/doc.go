// Package cgroup gives each forkd worker a cgroup v2 of its own, inside the subtree forkd was
// delegated: under systemd, the cgroup of a unit with Delegate=yes; in a container, a writable
// cgroup2 mount in a cgroup namespace of its own. A worker's cgroup knows its whole process tree
// (a helper that called setsid included), its exact memory (memory.current, memory.stat), the
// kernel's OOM kills (memory.events), and can be killed whole (cgroup.kill) and limited
// (memory.max, memory.high, pids.max).
//
// The rules followed are the kernel's (Documentation/admin-guide/cgroup-v2.rst) and systemd's
// (https://systemd.io/CGROUP_DELEGATION): forkd manages only the subtree below the cgroup it was
// started in, never the root cgroup of the host, and never the attributes of the delegated
// cgroup itself, only its cgroup.subtree_control and its children. Because of the "no internal
// processes" rule (a cgroup that hands controllers to its children holds no process of its own),
// the master moves itself into a leaf first. Below forkd's own cgroup R:
//
//	R/                 cgroup.subtree_control: +memory +pids, where R offers them
//	R/master/          the forkd master, moved here by Open
//	R/worker-0-1/      one per worker process: slot 0, spawn 1
//	R/worker-1-2/      slot 1, spawn 2 (an id unique among the master's spawns, so that a
//	                   slot's old and new worker can both run during a rollout)
//	R/.control/        systemd's, when the unit has ExecReload= and the like
//
// The life of a worker's cgroup:
//
//	w, err := tree.NewWorker(slot, id, limits)    // mkdir, limits written
//	w.SetSysProcAttr(attr)                        // exec'd workers: born in it (CLONE_INTO_CGROUP)
//	w.Place(pid)                                  // forked workers: moved when they say hello
//	m, err := w.Memory()                          // memory.current and memory.stat, for a sample
//	w.Kill()                                      // the whole tree, at once (cgroup.kill)
//	ev, _ := w.Events()                           // after the worker's exit: was it an OOM kill?
//	w.Remove()                                    // once every process in it has exited
//
// When forkd may not create cgroups, Open says why with an *Unavailable error, whose message is
// what a status shows ("cgroups off: <reason>"); forkd then runs as it does without cgroups.
package cgroup
