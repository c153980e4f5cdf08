package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"
)

// Client calls the control API of the forkd listening on a socket. It is safe for concurrent use.
//
// A Client sets no timeout of its own, since a request with Wait may take as long as the action;
// bound each call with its ctx. Every method returns one of:
//
//   - nil, with the reply;
//   - a *Error: the server's JSON error, with its status Code and Message;
//   - an error matching ErrNotRunning: nothing answers on the socket;
//   - another error: the socket could not be reached or the exchange broke off ("control: ...").
type Client struct {
	socket string
	http   *http.Client
}

// maxReplyBytes bounds a reply the client reads. A status with 1024 workers, each with a long
// status line, stays far below it.
const maxReplyBytes = 16 << 20

// NewClient returns a Client for the control socket at socketPath. It does not connect until the
// first call.
func NewClient(socketPath string) *Client {
	var dialer net.Dialer
	transport := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", socketPath)
		},
		// forkctl makes one request and exits; a long-lived caller keeps at most one spare.
		MaxIdleConns: 1,
	}
	return &Client{socket: socketPath, http: &http.Client{Transport: transport}}
}

// Status returns the status of forkd and its workers.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.call(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Stop asks forkd to stop. With req.Wait it returns when the workers are drained.
func (c *Client) Stop(ctx context.Context, req StopRequest) error {
	return c.call(ctx, http.MethodPost, "/v1/stop", req, nil)
}

// Scale changes the desired number of workers.
func (c *Client) Scale(ctx context.Context, req ScaleRequest) (ScaleResponse, error) {
	var resp ScaleResponse
	err := c.call(ctx, http.MethodPost, "/v1/scale", req, &resp)
	return resp, err
}

// Refork re-forks workers 1..n-1 from the template. Without req.Wait it returns once the refork
// has begun; with req.Wait once it is done, or with the reason it failed (a *Error with Code 500).
// A refork that cannot begin (another rollout runs, the cluster is not in fork-worker mode) is a
// *Error with Code 409.
func (c *Client) Refork(ctx context.Context, req ReforkRequest) (ReforkResponse, error) {
	var resp ReforkResponse
	err := c.call(ctx, http.MethodPost, "/v1/refork", req, &resp)
	return resp, err
}

// Reload replaces every worker with a newly exec'd one (a phased restart). It answers as Refork
// does.
func (c *Client) Reload(ctx context.Context, req ReloadRequest) (ReloadResponse, error) {
	var resp ReloadResponse
	err := c.call(ctx, http.MethodPost, "/v1/reload", req, &resp)
	return resp, err
}

// restartGoneLimit bounds how long Restart, waiting for the new master image, accepts that nothing
// at all answers on the socket (FollowEvents too). A master that re-execs keeps its control socket, or binds it again
// early in its start, so a socket that stays dead this long means forkd did not survive the
// restart; without the limit, a caller without a deadline would wait forever.
var restartGoneLimit = time.Minute

// Intervals between the status polls of Restart (and FollowEvents' attempts to reconnect),
// doubling from the first to the last.
const (
	restartPollFirst = 20 * time.Millisecond
	restartPollMax   = 500 * time.Millisecond
)

// Restart asks the master to re-exec itself in place (a hot restart): the new image replaces the
// workers by a phased restart, or with req.KeepWorkers keeps them. It answers as Refork does,
// except that the exec closes the connection, which the reply may not have left by then:
//
//   - Without req.Wait, a connection closed before the reply means the restart has begun; Restart
//     returns a zero RestartResponse and no error.
//   - With req.Wait, Restart first asks for the status, to learn the master's PID and the last
//     operation that ended (last_rollout). When the connection closes before the reply, it
//     reconnects, polling the socket, until a status from that same master_pid shows a restart
//     that ended since (last_rollout of kind "restart", with a higher seq): the new image runs,
//     and, unless KeepWorkers, every worker has been replaced and the old ones are gone. It then
//     returns the generation. A restart that ended with an error (the new release's workers did
//     not become ready: the old workers serve on, with the new master) is a *Error with Code 500
//     and the reason. A different master_pid is a failure ("forkd restarted as a new process":
//     the master died and something started forkd afresh), as is the phase "stopping". A socket
//     on which nothing at all answers for a minute fails with an error matching ErrNotRunning;
//     anything else is bounded only by ctx.
//
// A reply that does arrive is the answer: a success, or a *Error (409: the restart cannot begin;
// 500 or 422: it failed, the old image still running).
func (c *Client) Restart(ctx context.Context, req RestartRequest) (RestartResponse, error) {
	var before Status
	if req.Wait {
		var err error
		if before, err = c.Status(ctx); err != nil {
			return RestartResponse{}, err
		}
	}
	// Send the restart on a connection of its own, not one left idle by an earlier call, so that
	// the cut reads as the end of this exchange (net/http reports a pooled connection that the
	// server closed in other words).
	c.http.CloseIdleConnections()
	var resp RestartResponse
	err := c.call(ctx, http.MethodPost, "/v1/restart", req, &resp)
	switch {
	case err == nil:
		return resp, nil
	case !connectionLost(err):
		return RestartResponse{}, err
	case !req.Wait:
		return RestartResponse{}, nil
	}
	seq := 0
	if before.LastRollout != nil {
		seq = before.LastRollout.Seq
	}
	return c.awaitRestart(ctx, before.MasterPID, seq)
}

// awaitRestart polls the status until the master with PID pid has ended a hot restart, one whose
// last_rollout seq is above seq.
func (c *Client) awaitRestart(ctx context.Context, pid, seq int) (RestartResponse, error) {
	var back comeback
	last := "no answer yet"
	for {
		st, err := c.Status(ctx)
		switch {
		case ctx.Err() != nil:
			return RestartResponse{}, fmt.Errorf("waiting for forkd to come back from the restart (last: %s): %w", last, ctx.Err())
		case err == nil && st.MasterPID != pid:
			return RestartResponse{}, fmt.Errorf("forkd restarted as a new process (pid %d, was %d): the hot restart failed and forkd was started afresh",
				st.MasterPID, pid)
		case err == nil && st.LastRollout != nil && st.LastRollout.Kind == RolloutRestart && st.LastRollout.Seq > seq:
			if st.LastRollout.Error != "" {
				return RestartResponse{}, &Error{Code: http.StatusInternalServerError,
					Message: "the new master runs, but the restart failed: " + st.LastRollout.Error}
			}
			return RestartResponse{Generation: st.LastRollout.Generation}, nil
		case err == nil && st.Phase == PhaseStopping:
			return RestartResponse{}, errors.New("forkd is stopping: the restart did not complete")
		case err == nil:
			last = "phase " + st.Phase
			back.answered()
		default:
			if err := back.failed(err, "the restart"); err != nil {
				return RestartResponse{}, err
			}
			last = err.Error()
		}
		back.wait(ctx)
	}
}

// comeback paces the attempts to reach a master that does not answer for the moment, because it
// re-execs itself in a hot restart: the delay between two attempts doubles from restartPollFirst
// to restartPollMax, and a socket on which nothing at all answers for restartGoneLimit is given
// up.
type comeback struct {
	delay     time.Duration
	goneSince time.Time
}

// failed takes an attempt that failed with err: it returns nil to try again (a socket nobody
// answers on yet, the old image on its way out, the new one not quite up), or the error to give
// up with; what names what the master is to come back from.
func (b *comeback) failed(err error, what string) error {
	switch {
	case errors.Is(err, ErrNotRunning):
		if b.goneSince.IsZero() {
			b.goneSince = time.Now()
		} else if time.Since(b.goneSince) >= restartGoneLimit {
			return fmt.Errorf("forkd did not come back from %s: %w", what, err)
		}
		return nil
	case connectionLost(err) || hasCode(err, http.StatusServiceUnavailable):
		b.answered()
		return nil
	}
	return err
}

// answered takes an attempt that reached a master.
func (b *comeback) answered() { b.goneSince = time.Time{} }

// wait waits until the next attempt is due, or ctx ends.
func (b *comeback) wait(ctx context.Context) {
	if b.delay == 0 {
		b.delay = restartPollFirst
	}
	timer := time.NewTimer(b.delay)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
	}
	b.delay = min(2*b.delay, restartPollMax)
}

// hasCode reports whether err is a *Error with the status code code.
func hasCode(err error, code int) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// connectionLost reports whether err means the connection broke off before the reply.
func connectionLost(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// call sends req (if not nil) as the JSON body and decodes a successful reply into reply (if not
// nil).
func (c *Client) call(ctx context.Context, method, path string, req, reply any) error {
	resp, err := c.send(ctx, method, path, req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return c.transportError(method, path, err)
	}
	if reply == nil {
		return nil
	}
	if err := json.Unmarshal(data, reply); err != nil {
		return fmt.Errorf("control: %s %s: decoding reply: %w", method, path, err)
	}
	return nil
}

// send sends req (if not nil) as the JSON body and returns a successful reply, whose body the
// caller reads and closes, or the error the server replied with.
func (c *Client) send(ctx context.Context, method, path string, req any) (*http.Response, error) {
	var body io.Reader
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return nil, fmt.Errorf("control: %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	// The host is a placeholder: the transport always dials the socket.
	httpReq, err := http.NewRequestWithContext(ctx, method, "http://forkd"+path, body)
	if err != nil {
		return nil, fmt.Errorf("control: %s %s: %w", method, path, err)
	}
	if req != nil {
		httpReq.Header.Set("Content-Type", "application/json")
	}

	resp, err := c.http.Do(httpReq)
	if err != nil {
		return nil, c.transportError(method, path, err)
	}
	if resp.StatusCode >= 200 && resp.StatusCode <= 299 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return nil, c.transportError(method, path, err)
	}
	var eb errorBody
	if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
		// Not our server's error format; say what came back rather than guess.
		return nil, &Error{Code: resp.StatusCode, Message: fmt.Sprintf("unexpected reply from %s: %s", c.socket, resp.Status)}
	}
	return nil, &Error{Code: resp.StatusCode, Message: eb.Error}
}

// transportError turns a failed exchange into the error a caller can act on: ErrNotRunning when
// nothing answers on the socket, else the cause without net/http's URL, which names a made-up
// host.
func (c *Client) transportError(method, path string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w (no control socket at %s)", ErrNotRunning, c.socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w (nothing listening on %s)", ErrNotRunning, c.socket)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("control: permission denied on %s (the control API is for root and forkd's own user): %w", c.socket, err)
	}
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err
	}
	return fmt.Errorf("control: %s %s: %w", method, path, err)
}
