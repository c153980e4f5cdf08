package worker

import (
	"context"
	"errors"
	"net"
	"net/http"
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
// Make one with NewHTTPDrainer before serving: it wraps srv.Handler, srv.ConnState and
// srv.ConnContext.
type HTTPDrainer struct {
	srv       *http.Server
	listeners []net.Listener

	mu sync.Mutex
	// fresh holds the connections accepted whose first request has not reached the handler yet.
	fresh map[net.Conn]bool
	empty chan struct{} // closed when fresh empties, while Shutdown waits
}

type connKey struct{}

// NewHTTPDrainer prepares srv, which will serve listeners, for a drain without dropped requests.
func NewHTTPDrainer(srv *http.Server, listeners []net.Listener) *HTTPDrainer {
	d := &HTTPDrainer{srv: srv, listeners: listeners, fresh: map[net.Conn]bool{}}
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

// Shutdown drains the server: it closes the listeners (other workers accept from the shared
// sockets meanwhile), waits up to FirstRequestWait for the connections already accepted to bring
// their first request, then shuts srv down, which waits for requests in flight and closes idle
// keep-alive connections. ctx bounds the whole drain. It returns Shutdown's error, or ctx's.
func (d *HTTPDrainer) Shutdown(ctx context.Context) error {
	for _, l := range d.listeners {
		l.Close()
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
