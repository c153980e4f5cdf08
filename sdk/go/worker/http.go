package worker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// DrainWait bounds how long Shutdown waits, once it has stopped accepting, for each connection
// still open to bring its next request, which is answered with "Connection: close". A connection
// whose client sends nothing for that long is closed unanswered, as an idle keep-alive connection
// may be at any time.
const DrainWait = 2 * time.Second

// HTTPDrainer shuts an http.Server down without failing a request. net/http's Server.Shutdown
// closes idle keep-alive connections at once, and drops a request it reads after it began: a
// client that sends its next request on an idle connection just as the server closes it, or whose
// new connection was accepted just before and whose request arrives just after, sees the
// connection closed unanswered and cannot know whether to retry. In a preforking cluster, where
// workers drain on every rollout, that happens under load to every client that does not retry
// (wrk, Node's http agent, most non-Go clients).
//
// HTTPDrainer instead stops accepting (other workers accept from the shared sockets meanwhile) and
// answers the next request on every open connection with "Connection: close", then closes it, so
// that the client reconnects to another worker; connections that bring no request within DrainWait
// are closed then. Only after that does it call Shutdown, which waits for requests still in
// flight.
//
// Make one with NewHTTPDrainer before serving, which wraps srv.Handler and srv.ConnState, and
// serve with its Serve method rather than srv.Serve. It drains HTTP/1.x
// connections; srv must not have keep-alives disabled for its clients to benefit.
type HTTPDrainer struct {
	srv *http.Server
	// draining is set once Shutdown has begun: every response from then on closes its connection.
	draining atomic.Bool
	// drainWait is DrainWait, unless a test shortens it.
	drainWait time.Duration

	mu        sync.Mutex
	listeners []net.Listener
	// open holds the connections accepted and not yet closed.
	open  map[net.Conn]bool
	empty chan struct{} // closed when open empties, while Shutdown waits
	// serving counts the Serve calls still running: a connection that accept has returned is only
	// in open once net/http has recorded it, which it does before it accepts again.
	serving sync.WaitGroup
}

// NewHTTPDrainer prepares srv, which will serve listeners, for a drain without failed requests.
func NewHTTPDrainer(srv *http.Server, listeners []net.Listener) *HTTPDrainer {
	d := &HTTPDrainer{srv: srv, listeners: slices.Clone(listeners), open: map[net.Conn]bool{}, drainWait: DrainWait}
	prevState, handler := srv.ConnState, srv.Handler
	if handler == nil {
		handler = http.DefaultServeMux
	}
	srv.ConnState = func(c net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			d.mu.Lock()
			d.open[c] = true
			d.mu.Unlock()
		case http.StateClosed, http.StateHijacked:
			d.closed(c)
		}
		if prevState != nil {
			prevState(c, state)
		}
	}
	// A request in the handler is past net/http's shutdown check: Shutdown waits for it. Once the
	// drain has begun, its response is the connection's last.
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d.draining.Load() {
			w.Header().Set("Connection", "close")
		}
		handler.ServeHTTP(w, r)
	})
	return d
}

func (d *HTTPDrainer) closed(c net.Conn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.open[c] {
		return
	}
	delete(d.open, c)
	if len(d.open) == 0 && d.empty != nil {
		close(d.empty)
		d.empty = nil
	}
}

// Serve serves l with the server until the drain: srv.Serve(l), which it calls, except that
// Shutdown knows when it has stopped accepting. l joins the listeners Shutdown closes. Once the
// drain has begun, it returns http.ErrServerClosed, as srv.Serve does after Shutdown.
func (d *HTTPDrainer) Serve(l net.Listener) error {
	d.mu.Lock()
	if d.draining.Load() {
		d.mu.Unlock()
		return http.ErrServerClosed
	}
	if !slices.Contains(d.listeners, l) {
		d.listeners = append(d.listeners, l)
	}
	d.serving.Add(1)
	d.mu.Unlock()
	defer d.serving.Done()
	err := d.srv.Serve(l)
	if d.draining.Load() && errors.Is(err, net.ErrClosed) {
		return http.ErrServerClosed
	}
	return err
}

// Shutdown drains the server: it closes the listeners and waits for Serve to stop accepting, then
// answers the next request of every open connection with "Connection: close" and waits, up to
// DrainWait, for the connections to close; last it shuts srv down, which closes the connections
// left idle and waits for the requests in flight. ctx bounds the whole drain. It returns
// Shutdown's error, or ctx's.
func (d *HTTPDrainer) Shutdown(ctx context.Context) error {
	d.mu.Lock()
	d.draining.Store(true)
	listeners := d.listeners
	d.mu.Unlock()
	for _, l := range listeners {
		l.Close()
	}
	// A connection accept returned just before the close is not in open yet; it is once the accept
	// loop that got it has ended.
	accepting := make(chan struct{})
	go func() {
		d.serving.Wait()
		close(accepting)
	}()
	select {
	case <-accepting:
	case <-ctx.Done():
		return ctx.Err()
	}
	d.mu.Lock()
	var empty chan struct{}
	if len(d.open) > 0 {
		empty = make(chan struct{})
		d.empty = empty
	}
	d.mu.Unlock()
	if empty != nil {
		wait := time.NewTimer(d.drainWait)
		defer wait.Stop()
		select {
		case <-empty:
		case <-wait.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	err := d.srv.Shutdown(ctx)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
