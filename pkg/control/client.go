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

// call sends req (if not nil) as the JSON body and decodes a successful reply into reply (if not
// nil).
func (c *Client) call(ctx context.Context, method, path string, req, reply any) error {
	var body io.Reader
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return fmt.Errorf("control: %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	// The host is a placeholder: the transport always dials the socket.
	httpReq, err := http.NewRequestWithContext(ctx, method, "http://forkd"+path, body)
	if err != nil {
		return fmt.Errorf("control: %s %s: %w", method, path, err)
	}
	if req != nil {
		httpReq.Header.Set("Content-Type", "application/json")
	}

	resp, err := c.http.Do(httpReq)
	if err != nil {
		return c.transportError(method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReplyBytes))
	if err != nil {
		return c.transportError(method, path, err)
	}

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var eb errorBody
		if json.Unmarshal(data, &eb) != nil || eb.Error == "" {
			// Not our server's error format; say what came back rather than guess.
			return &Error{Code: resp.StatusCode, Message: fmt.Sprintf("unexpected reply from %s: %s", c.socket, resp.Status)}
		}
		return &Error{Code: resp.StatusCode, Message: eb.Error}
	}
	if reply == nil {
		return nil
	}
	if err := json.Unmarshal(data, reply); err != nil {
		return fmt.Errorf("control: %s %s: decoding reply: %w", method, path, err)
	}
	return nil
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
