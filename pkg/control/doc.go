// Package control owns forkd's control API: the wire types, the HTTP+JSON server the master runs on
// its control socket, the client forkctl uses, and the socket itself (Listen).
//
// # The socket
//
// The API is plain HTTP/1.1 on a unix stream socket whose file has mode 0600. Listen binds it,
// chmods it, and only then listens, so there is no moment in which it accepts connections with a
// wider mode. On top of the file mode, the server reads each connection's SO_PEERCRED and answers
// only root and forkd's own effective uid; anyone else gets 403. The socket is not meant to be
// exposed further (no TLS, no authentication beyond the peer's uid).
//
// forkd's workers run as forkd's uid, so the uid check lets the application's own code in. With
// WithWorkers, the server asks, once per connection and before it reads a body, whether the peer
// (the PID of SO_PEERCRED, pinned with SO_PEERPIDFD where the kernel has it) is a worker or
// descends from one, and lets it do only what its WorkerAccess allows: by default nothing (403,
// naming control.worker_access), with WorkerAccessStatus only the reads, GET /v1/status and GET
// /v1/events. A refused connection is closed after the reply.
//
// # Limits
//
// A client that connects and stalls holds at most one connection for a bounded time:
//
//   - the header must arrive within 10 s of the request's first byte, and the body (at most 64
//     KiB) within the same 10 s; a header is at most 8 KiB;
//   - writing the reply may take 10 s; the wait for it is not bounded (a request with Wait takes
//     as long as its action), but ends when the client hangs up;
//   - a connection that sends no new request for 30 s is closed.
//
// At most MaxConnections (64) are open at once. At the limit, a new connection takes the place of
// the oldest one that is not being answered (still sending its request, idle, or following the
// event stream), so stalled clients cannot lock the operator out; if every one is being answered,
// the new one is closed.
// And a connection that would take one of the last FDReserve (64) descriptors below the
// master's RLIMIT_NOFILE is closed at once, so that stalled clients can never take what a
// worker's respawn needs. (Go raises the master's soft RLIMIT_NOFILE to its hard limit at start,
// and gives the workers the original soft limit back.) Connections closed for these limits are
// logged, at most once a minute.
//
// # Routes
//
//	GET  /v1/status   -> Status
//	POST /v1/stop     StopRequest    -> {}
//	POST /v1/scale    ScaleRequest   -> ScaleResponse
//	POST /v1/refork   ReforkRequest  -> ReforkResponse    re-fork workers 1..n-1 from the template
//	POST /v1/reload   ReloadRequest  -> ReloadResponse    phased restart: exec every worker anew
//	POST /v1/restart  RestartRequest -> RestartResponse   hot restart: the master re-execs itself
//	GET  /v1/events[?since=SEQ]      -> a stream of Event  what happens, as it happens (see Events)
//
// Bodies are JSON with snake_case names. A request body is at most 64 KiB, must be a single JSON
// object, and may not carry unknown fields (a typo in an operator's script is an error, not a
// silently ignored option); an empty body means the zero request. Every error is
// {"error": "message"} with a status code that says what kind of error it is:
//
//	400  the body is not valid JSON or the request is invalid
//	403  the peer's uid may not use the API, or the peer is one of forkd's workers (WithWorkers)
//	404  no such route
//	405  wrong method for the route (the Allow header names the right one)
//	409  the action cannot begin now: it conflicts with what forkd is doing (ErrStopping, ErrBusy
//	     for a scale while a rollout runs) or the cluster is not ready for it ("refork needs
//	     fork-worker mode"); nothing was changed
//	413  the body is larger than 64 KiB
//	500  the backend failed, or an action began and failed: the message is the reason
//	503  the backend is gone (ErrUnavailable)
//
// # Backend
//
// The server does no cluster work itself: it decodes and validates a request, calls the matching
// method of a Backend (implemented by the master's driver), and encodes the answer. A Backend
// reports a failure with a *Error, whose Code becomes the status code; any other error becomes 500
// with its message.
//
// A request may wait for a long time (StopRequest.Wait holds the reply until the workers are
// drained, ReloadRequest.Wait until every worker has been replaced). Nothing bounds that wait (see
// Limits), and the request's context is cancelled when the client goes away, so a Backend selects
// on ctx.Done() while it waits. Cancellation withdraws only the wait, never the action: a stop or
// a rollout that was accepted goes on without anyone listening.
//
// # Rollouts
//
// Refork, reload and restart are rollouts: they replace the workers (or the master) with a new
// generation. forkd runs one at a time; one asked for while another runs is queued behind it (and
// joins one of its kind that waits already), so it is not refused for arriving at the wrong
// moment. Meanwhile the status has the phase "rolling", names the rollout in progress, lists what
// waits (queued), and says how the last one ended (last_rollout). Without Wait, the reply comes
// once the rollout has begun or is queued, or at once with a 409 if it cannot (forkd is stopping,
// "refork needs fork-worker mode"). With Wait, it comes when the rollout has ended, every old
// worker it replaced gone, or with a 500 (422 for a config that does not load) whose message is
// why it failed.
//
// A restart is special: the master re-execs itself, which closes every connection to the control
// socket, the restart request's own included, and the reply may lose that race. Client.Restart
// therefore takes a connection closed before the reply as the restart under way, and, with Wait,
// polls the status until the same master PID reports the restart ended in last_rollout (see its
// doc for the details and what it needs from the Backend). RestartRequest.KeepWorkers asks the
// new image to keep the workers as they are rather than replace them by a phased restart.
//
// # Events
//
// GET /v1/events streams what happens in the cluster as it happens: one JSON object per line
// (Content-Type application/x-ndjson), one Event each, flushed as they come. Every event has
// seq (numbered from 1, in order, across hot restarts), time (RFC 3339), type, message (the
// sentence forkd logged, when the event comes from its log), and the fields of its type; a field that does not apply, or whose value
// is zero, is absent. The types and their fields:
//
//	worker-spawned    worker, path
//	worker-ready      worker, path, boot_seconds
//	worker-exited     worker, reason, status
//	spawn-failed      worker (no pid), error
//	crash-loop        worker, crashes, delay_seconds
//	rollout-queued    kind
//	rollout-started   kind, generation (absent for a hot restart before its exec)
//	rollout-ended     kind, generation, result, duration_seconds, error
//	master-restart    stage (exec, adopted), pid
//	scale             workers, previous
//	notify-dropped    pid, reason, dropped
//	cluster-ready     workers, generation
//	cluster-stopping  immediate
//	cluster-stopped
//	lagged            (the last record of a client that fell behind)
//
// where worker is {"index": N, "pid": N, "generation": N}; path is fork or exec; reason (of
// worker-exited) is one of stopped, stopped_itself, crash, boot_timeout, heartbeat_timeout,
// shutdown_timeout, watchdog; kind is refork, reload or restart (a refork is a rollout of kind
// refork, so rollout-started and rollout-ended report reforks, automatic ones included); result
// is succeeded, failed or aborted (forkd began to stop while it ran or waited its turn). Clients show a type or a reason they do
// not know as it is: new ones may come.
//
// Without a query, the stream has what happens from now on. With since=SEQ, it begins with the
// events the master still remembers (the last EventHistory) whose seq is above SEQ, so that a
// client that reconnects misses nothing the master still has; since=0 replays them all. A jump
// in seq says that events were missed.
//
// The stream never makes the master wait: the server holds at most EventBuffer events for a
// client (a longer replay, up to EventHistory, fits whole), and one that falls further behind gets
// a last record of type lagged, and the stream ends. The stream is not bounded in time, but is otherwise held to the limits of every request:
// the header within 10 s, each write out within 10 s (a client that stops reading is cut), and
// the connection may be taken by a new one at the connection limit. The stream ends when the
// client hangs up, when forkd stops (after its last events), and when the master execs itself in
// a hot restart; a client that follows reconnects with since= the last seq it saw
// (Client.FollowEvents does). The Backend provides the events (Backend.Events), and EventHub does
// the fan-out and the bounds.
//
// # Adding an action
//
// Every action that changes forkd is a POST to /v1/<action> with a <Action>Request body and a
// <Action>Response reply, and is one small addition in four places: the two wire types (types.go),
// one Backend method, one line in NewServer, and one Client method. For example, the phased
// restart:
//
//	type ReloadRequest struct{ Wait bool `json:"wait"` }
//	type ReloadResponse struct{ Generation int `json:"generation"` }
//	Reload(ctx context.Context, req ReloadRequest) (ReloadResponse, error)      // Backend
//	s.route(http.MethodPost, "/v1/reload", command(b.Reload))                  // NewServer
//	func (c *Client) Reload(ctx context.Context, req ReloadRequest) (ReloadResponse, error) {
//		var resp ReloadResponse
//		return resp, c.call(ctx, http.MethodPost, "/v1/reload", req, &resp)
//	}
//
// With Wait, the reply comes when the action has finished, however long that takes; if it failed,
// the Backend returns a *Error whose Message is the reason ("worker 0 did not become ready within
// 1m0s; the old workers keep serving"), so `forkctl reload --wait` and with it `systemctl reload`
// fail and print it. A request type that needs checking beyond JSON decoding gets a validate()
// error method, which the server calls before the Backend sees the request (see ScaleRequest).
package control
