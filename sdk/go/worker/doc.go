// Package worker is forkd's SDK for Go applications: it owns a worker's side of the contract
// between a forkd master and the processes it runs, which is systemd's contract for a service.
//
// Go cannot fork a running program, so Go apps run under forkd in exec mode: the master starts
// every worker with exec and hands it
//
//   - its listening sockets, as systemd does (sd_listen_fds(3)): file descriptors 3, 4, ... with
//     LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID set to the worker's own PID;
//   - NOTIFY_SOCKET, the master's own datagram socket, for READY=1, STATUS=, WATCHDOG=1 and
//     STOPPING=1 (sd_notify(3)) and forkd's X_FORKD_ extensions. The master tells workers apart by
//     the sender's SCM_CREDENTIALS, so a message needs no MAINPID=;
//   - WATCHDOG_USEC (and WATCHDOG_PID) when a worker timeout is configured: a ready worker that
//     sends no WATCHDOG=1 for that long is killed and replaced;
//   - FORKD_WORKER, its index (slot) 0..n-1, and FORKD_GENERATION, the code generation it runs.
//
// It stops a worker with SIGTERM, which means: stop accepting, finish the requests in flight, exit.
//
// A worker's life with this package:
//
//	w, err := worker.New()              // read the environment, once
//	ctx := w.Run(context.Background())  // heartbeats; ctx ends on SIGTERM or when the master is gone
//	listeners, err := w.Listeners()
//	// serve on every listener ...
//	w.Ready()
//	<-ctx.Done()
//	w.Stopping()
//	// stop accepting, finish in-flight requests, return from main.
//
// ExampleWorker shows the whole loop for net/http. HTTPDrainer drains an http.Server on SIGTERM
// without failing a request, even for clients that do not retry: it answers the next request on
// every keep-alive connection with "Connection: close" rather than closing idle connections under
// the client's feet.
//
// Nothing here requires forkd. Under plain systemd socket activation the listeners and
// notifications go to systemd, and with no activation at all there are no listeners, Index is -1
// and every notification is a no-op: not running under forkd or systemd is an answer, not an
// error, so the same binary also runs from a shell.
package worker
