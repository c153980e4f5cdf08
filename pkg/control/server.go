package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// Backend is the cluster as the control API sees it; the master's driver implements it. The
// server calls it from one goroutine per request, so calls may overlap.
//
// Every method honours ctx: it is cancelled when the client goes away or the server is shut down.
// Cancellation withdraws the caller's interest in the reply, not the action (see the package doc).
// A failure meant for the client is a *Error (ErrStopping, ErrBusy, ErrUnavailable, or one with
// its own message); any other error is reported as 500.
type Backend interface {
	// Status reports the master and every worker slot.
	Status(ctx context.Context) (Status, error)
	// Stop begins a graceful stop (an immediate one with req.Immediate). It returns once the stop
	// has begun or, with req.Wait, when the workers are drained, just before forkd exits.
	Stop(ctx context.Context, req StopRequest) error
	// Scale changes the desired number of workers. The server has checked that exactly one of
	// req.Workers and req.Delta is set, and that Workers is positive; the Backend checks the
	// result against its limits.
	Scale(ctx context.Context, req ScaleRequest) (ScaleResponse, error)

	// Refork, Reload and Restart begin a rollout: a refork (fork-worker mode only), a phased
	// restart, a hot restart. Each returns the generation the rollout creates: without req.Wait
	// once the rollout has begun, with req.Wait once it is done.
	//
	// A rollout that cannot begin fails at once with a 409 *Error: ErrStopping, ErrBusy while
	// another rollout runs, or one with a precise message of its own ("refork needs fork-worker
	// mode"). A rollout that began and failed (with Wait: its new workers did not become ready,
	// the new master image did not start) is a 500 *Error whose Message is the reason, for
	// instance "worker 2 did not become ready within 1m0s; the old workers keep serving".
	Refork(ctx context.Context, req ReforkRequest) (ReforkResponse, error)
	Reload(ctx context.Context, req ReloadRequest) (ReloadResponse, error)
	// Restart re-execs the master in place. The exec closes every control connection, the
	// request's own included, so the reply may never get out: Client.Restart then waits for the
	// new image by polling Status, and needs two things of the Backend. The master keeps its
	// PID (Status.MasterPID), and Status.LastRollout reports each restart once it has ended (kind
	// RolloutRestart, a Seq higher than any before it, Error set if its phased restart failed).
	Restart(ctx context.Context, req RestartRequest) (RestartResponse, error)

	// Events streams what happens in the cluster for GET /v1/events: the events from now on,
	// after the remembered ones req asks to replay. The channel ends the stream when it is
	// closed, which must happen when ctx ends, and it must never make the master wait for a
	// client: a client that falls behind is dropped with an EventLagged as its last event.
	// EventHub.Subscribe does all of that.
	Events(ctx context.Context, req EventsRequest) (<-chan Event, error)
}

// Every phase of a request is bounded, so that a client that connects and stalls cannot hold a
// connection (a descriptor, a goroutine, buffers) for long; MaxConnections bounds how many it can
// hold at once.
const (
	// maxHeaderBytes and maxBodyBytes bound a request's header and body; every request the API
	// knows fits in a few hundred bytes.
	maxHeaderBytes = 8 << 10
	maxBodyBytes   = 64 << 10
	// readTimeout bounds reading a whole request, header and body, from its first byte.
	readTimeout = 10 * time.Second
	// Once a request is read, the wait for its answer is not bounded (a stop or a rollout with
	// Wait takes as long as it takes; the client's hang-up ends it), but writing the answer is.
	writeTimeout = 10 * time.Second
	// idleTimeout closes a connection that sends no new request.
	idleTimeout = 30 * time.Second
)

// Server answers the control API on a listener, calling into a Backend. Serve and Shutdown may be
// called from different goroutines.
type Server struct {
	backend Backend
	logger  *slog.Logger
	// euid is forkd's effective uid, which may use the API besides root.
	euid int
	// routes maps a path to its endpoint for each method it accepts.
	routes map[string]map[string]endpoint
	http   *http.Server
	// workers, when set, tells which peers are forkd's workers, whom workerAccess limits.
	workers      Workers
	workerAccess WorkerAccess
	limits       limits
	// closing is closed when Shutdown begins, which ends the event streams.
	closing chan struct{}
	// handlers are the paths served by a handler of their own (WithHandler), not as JSON.
	handlers map[string]http.Handler
}

// limits are the bounds on connections and requests; tests shorten them.
type limits struct {
	readTimeout, writeTimeout, idleTimeout time.Duration
	maxConnections, fdReserve              int
}

// endpoint handles one route, given the request's query and whole body: it returns the reply to
// encode (or an eventStream to stream), or an error to report.
type endpoint func(ctx context.Context, query url.Values, body []byte) (any, error)

// NewServer returns a Server that answers with b, configured by opts. A nil logger discards the
// log.
func NewServer(b Backend, logger *slog.Logger, opts ...Option) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		backend: b,
		logger:  logger,
		euid:    os.Geteuid(),
		routes:  make(map[string]map[string]endpoint),
		limits: limits{readTimeout: readTimeout, writeTimeout: writeTimeout, idleTimeout: idleTimeout,
			maxConnections: MaxConnections, fdReserve: FDReserve},
	}
	for _, opt := range opts {
		opt(s)
	}
	s.route(http.MethodGet, "/v1/status", query(s.status))
	s.route(http.MethodPost, "/v1/stop", command(func(ctx context.Context, req StopRequest) (struct{}, error) {
		return struct{}{}, b.Stop(ctx, req)
	}))
	s.route(http.MethodPost, "/v1/scale", command(b.Scale))
	s.route(http.MethodPost, "/v1/refork", command(b.Refork))
	s.route(http.MethodPost, "/v1/reload", command(b.Reload))
	s.route(http.MethodPost, "/v1/restart", command(b.Restart))
	s.route(http.MethodGet, "/v1/events", s.events)

	s.http = &http.Server{
		Handler: http.HandlerFunc(s.serveHTTP),
		// ReadTimeout bounds the header and the body; net/http lifts it once the body has been
		// read to its end, so it does not cut the wait for an answer.
		ReadHeaderTimeout: s.limits.readTimeout,
		ReadTimeout:       s.limits.readTimeout,
		IdleTimeout:       s.limits.idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnContext:       withConn,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	// Shutdown waits for every request to be answered, and a stream never is: ending the streams
	// is how it begins.
	s.closing = make(chan struct{})
	s.http.RegisterOnShutdown(func() { close(s.closing) })
	return s
}

// Serve answers requests on l until Shutdown, after which it returns nil. l is normally the
// listener Listen returned; the peer check needs a unix socket. At most MaxConnections
// connections are open at once, and none takes one of the last FDReserve descriptors.
func (s *Server) Serve(l net.Listener) error {
	err := s.http.Serve(&limitListener{Listener: l, logger: s.logger, max: s.limits.maxConnections, reserve: s.limits.fdReserve})
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("control: %w", err)
}

// Shutdown closes the listener (removing a socket file made by Listen) and waits for the requests
// in flight to be answered. If ctx ends first, it closes every connection, which cancels the
// contexts of the requests still waiting, and returns ctx's error.
//
// A request with Wait is answered only when its Backend call returns, so the master answers a
// StopRequest with Wait before (or while) it calls Shutdown, not after.
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.http.Shutdown(ctx); err != nil {
		s.http.Close()
		return fmt.Errorf("control: shutdown: %w", err)
	}
	return nil
}

func (s *Server) route(method, path string, e endpoint) {
	if s.routes[path] == nil {
		s.routes[path] = make(map[string]endpoint)
	}
	s.routes[path][method] = e
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	c := connFromContext(r.Context())
	if h, ok := s.handlers[r.URL.Path]; ok {
		s.serveHandler(w, r, c, h)
		return
	}
	reply, err := s.dispatch(w, r, c)
	if stream, ok := reply.(eventStream); ok && err == nil {
		s.logRequest(r, c.cred, http.StatusOK, s.stream(w, r, stream))
		return
	}
	code := http.StatusOK
	if err != nil {
		code = statusCode(err)
		reply = errorBody{Error: err.Error()}
	}
	if code == http.StatusForbidden {
		// The peer may not use the API: no reason to keep its connection.
		w.Header().Set("Connection", "close")
	}
	// An error here means there is no connection to set a deadline on; the write fails too.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.limits.writeTimeout))
	writeJSON(w, code, reply)
	s.logRequest(r, c.cred, code, err)
}

// dispatch checks the peer, finds the route, reads the body and runs the route.
func (s *Server) dispatch(w http.ResponseWriter, r *http.Request, c *conn) (any, error) {
	if err := s.authorize(c.cred); err != nil {
		return nil, err
	}
	methods, ok := s.routes[r.URL.Path]
	if !ok {
		return nil, &Error{Code: http.StatusNotFound, Message: fmt.Sprintf("no such route: %s %s", r.Method, r.URL.Path)}
	}
	e, ok := methods[r.Method]
	if !ok {
		allowed := slices.Sorted(maps.Keys(methods))
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		return nil, &Error{Code: http.StatusMethodNotAllowed,
			Message: fmt.Sprintf("%s does not accept %s (use %s)", r.URL.Path, r.Method, strings.Join(allowed, " or "))}
	}
	// Checked before the body is read: a worker's request is refused unread.
	if err := s.authorizeWorker(r.Context(), c, r.Method == http.MethodGet); err != nil {
		return nil, err
	}
	body, err := readBody(w, r)
	if err != nil {
		return nil, err
	}
	// The request is in: from here only the client's hang-up ends the wait for its answer (net/http,
	// which watches for it once the body is consumed, lifts the read deadline as it does).
	if lc, ok := c.Conn.(*limitedConn); ok {
		lc.setAnswering(true)
		defer lc.setAnswering(false)
	}
	return e(r.Context(), r.URL.Query(), body)
}

// authorize lets root and forkd's own user in. The socket's mode already keeps others out, but a
// mode is easy to widen by accident (a chmod in a deploy script, a bind mount); the peer's uid
// cannot be.
func (s *Server) authorize(peer peerCred) error {
	if peer.err != nil {
		return &Error{Code: http.StatusForbidden, Message: fmt.Sprintf("cannot tell who is connecting: %v", peer.err)}
	}
	if peer.uid == 0 || peer.uid == s.euid {
		return nil
	}
	allowed := "root"
	if s.euid != 0 {
		allowed = fmt.Sprintf("root and uid %d", s.euid)
	}
	return &Error{Code: http.StatusForbidden,
		Message: fmt.Sprintf("uid %d may not use forkd's control API (allowed: %s)", peer.uid, allowed)}
}

func (s *Server) status(ctx context.Context) (Status, error) {
	st, err := s.backend.Status(ctx)
	// Lists are [] rather than null on the wire, so scripts can iterate without a check.
	if st.Listeners == nil {
		st.Listeners = []Listener{}
	}
	if st.WorkerList == nil {
		st.WorkerList = []Worker{}
	}
	return st, err
}

func (s *Server) logRequest(r *http.Request, peer peerCred, code int, err error) {
	level := slog.LevelDebug
	switch {
	case code >= 500:
		level = slog.LevelWarn
	case r.Method != http.MethodGet:
		// Commands change forkd, so they are worth a line in the journal: who asked for what.
		level = slog.LevelInfo
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", code),
		slog.Int("peer_uid", peer.uid),
		slog.Int("peer_pid", peer.pid),
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	s.logger.LogAttrs(r.Context(), level, "control request", attrs...)
}

// query makes an endpoint of a Backend method that takes no request body (any body is ignored).
func query[Resp any](fn func(context.Context) (Resp, error)) endpoint {
	return func(ctx context.Context, _ url.Values, _ []byte) (any, error) {
		return fn(ctx)
	}
}

// command makes an endpoint of a Backend method that takes a Req as its JSON body. If Req has a
// validate method, a request it rejects is a 400 and never reaches fn.
func command[Req, Resp any](fn func(context.Context, Req) (Resp, error)) endpoint {
	return func(ctx context.Context, _ url.Values, body []byte) (any, error) {
		var req Req
		if err := decodeBody(body, &req); err != nil {
			return nil, err
		}
		if v, ok := any(req).(interface{ validate() error }); ok {
			if err := v.validate(); err != nil {
				return nil, &Error{Code: http.StatusBadRequest, Message: err.Error()}
			}
		}
		return fn(ctx, req)
	}
}

// readBody reads the whole body, at most maxBodyBytes, within the read deadline. Reading to the end
// also matters because net/http starts watching for the client hanging up (and so cancels
// r.Context()) only once the body has been consumed.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return nil, &Error{Code: http.StatusRequestEntityTooLarge,
			Message: fmt.Sprintf("request body is larger than %d bytes", tooLarge.Limit)}
	}
	if err != nil {
		return nil, &Error{Code: http.StatusBadRequest, Message: fmt.Sprintf("cannot read request body: %v", err)}
	}
	return body, nil
}

// decodeBody decodes body into v: one JSON object with no unknown fields, or nothing at all for the
// zero request.
func decodeBody(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &Error{Code: http.StatusBadRequest, Message: fmt.Sprintf("invalid request body: %v", err)}
	}
	if err := dec.Decode(new(json.RawMessage)); !errors.Is(err, io.EOF) {
		return &Error{Code: http.StatusBadRequest, Message: "invalid request body: more than one JSON value"}
	}
	return nil
}

// errorBody is the JSON of every error reply.
type errorBody struct {
	Error string `json:"error"`
}

// statusCode is the HTTP status for err: the Code of the *Error in its chain, else 500.
func statusCode(err error) int {
	var e *Error
	if errors.As(err, &e) && e.Code >= 400 && e.Code <= 599 {
		return e.Code
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	// An error here means the client went away; there is no one left to tell.
	_ = json.NewEncoder(w).Encode(v)
}
