// Package memsample reads the memory of the master's workers on a schedule of its own, so that
// whatever reports it (the control API's status, the Prometheus metrics, a memory policy) serves
// the last sample instead of reading /proc on each request.
//
// A read of /proc/PID/smaps_rollup walks the process's page tables: its cost grows with the
// process's resident memory, about 1.5 ms of CPU per 250 MB worker on this project's test
// machine, so 64 such workers cost some 100 ms per sample. Once per DefaultInterval (10 s) that is
// about 1 % of one core for 16 GB of workers, and nothing measurable for the small ones; a status
// request or a scrape, which used to read every worker each time, now reads none.
//
//	s := &memsample.Sampler{Interval: 10 * time.Second, PIDs: workerPIDs}
//	go s.Run(ctx)
//	...
//	if m, ok := s.Last().Of(pid); ok { ... }
//
// Deliver, when set, hands each sample on as it is taken, from the sampler's goroutine: the way
// for the master's loop to take samples as events (a refork policy that watches sharing decay).
package memsample
