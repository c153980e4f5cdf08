package worker

import (
	"context"
	"errors"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// FirstRequestWait bounds how long Shutdown waits for the connections accepted just before the
// drain to send their first request.
const FirstRequestWait = 2 * time.Second

// HTTPDrainer shuts an http.Server down without dropping requests. net/http's Server.Shutdown
// drops a request it reads after the shutdown began: a client whose new connection was accepted
// just before, and whose request arrives just after, sees the connection closed unanswered and
// cannot know whether to retry. In a preforking cluster, where workers drain on every rollout,
// that happens under load. HTTPDrainer instead stops accepting, waits until every connection
// accepted so far has had its first request reach the handler (or has closed), and only then calls
// Shutdown.
//
// Make one with NewHTTPDrainer before serving, which wraps srv.Handler, srv.ConnState and
// srv.ConnContext, and serve with its Serve method rather than srv.Serve.
type HTTPDrainer struct {
	srv *http.Server

	mu        sync.Mutex
	listeners []net.Listener
	draining  bool
	// fresh holds the connections accepted whose first request has not reached the handler yet.
	fresh map[net.Conn]bool
	empty chan struct{} // closed when fresh empties, while Shutdown waits
	// serving counts the Serve calls still running: a connection that accept has returned is only
	// in fresh once net/http has recorded it, which it does before it accepts again.
	serving sync.WaitGroup
}

type connKey struct{}

// NewHTTPDrainer prepares srv, which will serve listeners, for a drain without dropped requests.
func NewHTTPDrainer(srv *http.Server, listeners []net.Listener) *HTTPDrainer {
	d := &HTTPDrainer{srv: srv, listeners: slices.Clone(listeners), fresh: map[net.Conn]bool{}}
	prevState, prevContext, handler := srv.ConnState, srv.ConnContext, srv.Handler
	if handler == nil {
		handler = http.DefaultServeMux
	}
	srv.ConnState = func(c net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			d.mu.Lock()
			d.fresh[c] = true
			d.mu.Unlock()
		case http.StateClosed, http.StateHijacked:
			d.settled(c)
		}
		if prevState != nil {
			prevState(c, state)
		}
	}
	srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if prevContext != nil {
			ctx = prevContext(ctx, c)
		}
		return context.WithValue(ctx, connKey{}, c)
	}
	// A request in the handler is past net/http's shutdown check: Shutdown now waits for it.
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			d.settled(c)
		}
		handler.ServeHTTP(w, r)
	})
	return d
}

func (d *HTTPDrainer) settled(c net.Conn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.fresh[c] {
		return
	}
	delete(d.fresh, c)
	if len(d.fresh) == 0 && d.empty != nil {
		close(d.empty)
		d.empty = nil
	}
}

// Serve serves l with the server until the drain: srv.Serve(l), which it calls, except that
// Shutdown knows when it has stopped accepting. l joins the listeners Shutdown closes. Once the
// drain has begun, it returns http.ErrServerClosed, as srv.Serve does after Shutdown.
func (d *HTTPDrainer) Serve(l net.Listener) error {
	d.mu.Lock()
	if d.draining {
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
	d.mu.Lock()
	draining := d.draining
	d.mu.Unlock()
	if draining && errors.Is(err, net.ErrClosed) {
		return http.ErrServerClosed
	}
	return err
}

// Shutdown drains the server: it closes the listeners (other workers accept from the shared
// sockets meanwhile) and waits for Serve to stop accepting, waits up to FirstRequestWait for the
// connections already accepted to bring their first request, then shuts srv down, which waits for
// requests in flight and closes idle keep-alive connections. ctx bounds the whole drain. It returns
// Shutdown's error, or ctx's.
func (d *HTTPDrainer) Shutdown(ctx context.Context) error {
	d.mu.Lock()
	d.draining = true
	listeners := d.listeners
	d.mu.Unlock()
	for _, l := range listeners {
		l.Close()
	}
	// A connection accept returned just before the close is not in fresh yet; it is once the
	// accept loop that got it has ended.
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
	if len(d.fresh) > 0 {
		empty = make(chan struct{})
		d.empty = empty
	}
	d.mu.Unlock()
	if empty != nil {
		wait := time.NewTimer(FirstRequestWait)
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
