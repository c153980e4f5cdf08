package worker

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"
)

// okServer is a server that answers "ok", with its drainer on a new loopback listener.
func okServer(t *testing.T) (*HTTPDrainer, net.Listener) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	})}
	return NewHTTPDrainer(srv, []net.Listener{l}), l
}

// waitDrainBegun waits until the drain has closed the listener at addr: a new connection is
// refused.
func waitDrainBegun(t *testing.T, addr string) {
	t.Helper()
	end := time.Now().Add(time.Minute)
	for {
		c, err := net.Dial("tcp", addr)
		if errors.Is(err, syscall.ECONNREFUSED) {
			return
		}
		if err == nil {
			c.Close()
		}
		if time.Now().After(end) {
			t.Fatal("the drain did not close the listener")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// request sends a GET on conn and reads the response.
func request(t *testing.T, conn net.Conn, r *bufio.Reader) (*http.Response, error) {
	t.Helper()
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		return nil, err
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp, nil
}

// TestHTTPDrainerAnswersConnectionsAcceptedBeforeTheDrain: a client connects, the drain begins,
// and only then does its request arrive. net/http's Shutdown alone closes such a connection
// unanswered; the drainer answers it, and closes it after.
func TestHTTPDrainerAnswersConnectionsAcceptedBeforeTheDrain(t *testing.T) {
	d, l := okServer(t)
	accepted := make(chan struct{})
	var once sync.Once
	hook := d.srv.ConnState
	d.srv.ConnState = func(c net.Conn, s http.ConnState) {
		hook(c, s)
		if s == http.StateNew {
			once.Do(func() { close(accepted) })
		}
	}
	go d.Serve(l)

	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	<-accepted
	drained := make(chan error, 1)
	go func() { drained <- d.Shutdown(context.Background()) }()
	waitDrainBegun(t, l.Addr().String())

	resp, err := request(t, conn, bufio.NewReader(conn))
	if err != nil {
		t.Fatalf("the request sent during the drain got no answer: %v", err)
	}
	if resp.StatusCode != 200 || !resp.Close {
		t.Fatalf("status %s, close %v; want 200 and Connection: close", resp.Status, resp.Close)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
}

// TestHTTPDrainerAnswersTheNextRequestOnIdleConnections: a keep-alive client sends its next request
// on its idle connection after the drain has begun. net/http's Shutdown closes idle connections at
// once, and a client that does not retry got EOF; the drainer answers with Connection: close, and
// the client reconnects elsewhere.
func TestHTTPDrainerAnswersTheNextRequestOnIdleConnections(t *testing.T) {
	d, l := okServer(t)
	go d.Serve(l)
	var conns []net.Conn
	var readers []*bufio.Reader
	for range 4 {
		conn, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		resp, err := request(t, conn, r)
		if err != nil || resp.Close {
			t.Fatalf("first request: %v, close %v", err, resp != nil && resp.Close)
		}
		conns, readers = append(conns, conn), append(readers, r)
	}

	drained := make(chan error, 1)
	go func() { drained <- d.Shutdown(context.Background()) }()
	waitDrainBegun(t, l.Addr().String())
	for i, conn := range conns {
		resp, err := request(t, conn, readers[i])
		if err != nil {
			t.Fatalf("connection %d: the next request on an idle keep-alive connection failed: %v", i, err)
		}
		if resp.StatusCode != 200 || !resp.Close {
			t.Fatalf("connection %d: status %s, close %v; want 200 and Connection: close", i, resp.Status, resp.Close)
		}
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := readers[i].ReadByte(); err != io.EOF {
			t.Fatalf("connection %d: after Connection: close, read %v, want EOF", i, err)
		}
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
}

// TestHTTPDrainerBoundsTheWait: a connection that brings no request is closed after the drain
// wait, and Shutdown returns.
func TestHTTPDrainerBoundsTheWait(t *testing.T) {
	d, l := okServer(t)
	d.drainWait = 100 * time.Millisecond
	go d.Serve(l)
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	if _, err := request(t, conn, r); err != nil {
		t.Fatal(err)
	}
	if err := d.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := r.ReadByte(); err == nil {
		t.Fatal("the idle connection is still open after Shutdown")
	}
}

// heldAcceptListener holds each connection it has accepted until the listener is closed, as a
// descheduled goroutine would between accept and net/http's bookkeeping of the connection.
type heldAcceptListener struct {
	net.Listener
	accepted chan struct{} // closed once a connection is held
	release  chan struct{} // closed by Close
	once     sync.Once
	closing  sync.Once
}

func (l *heldAcceptListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.once.Do(func() { close(l.accepted) })
	<-l.release
	return c, nil
}

func (l *heldAcceptListener) Close() error {
	err := l.Listener.Close()
	l.closing.Do(func() { close(l.release) })
	return err
}

// TestHTTPDrainerAnswersAConnectionStillInAccept: the drain begins while a connection accept has
// returned has not reached net/http yet; its request, sent before, is answered all the same.
// (Without waiting for Serve to stop accepting, the drainer saw no open connection, net/http's
// Shutdown began, and then read the request and closed the connection unanswered.)
func TestHTTPDrainerAnswersAConnectionStillInAccept(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &heldAcceptListener{Listener: inner, accepted: make(chan struct{}), release: make(chan struct{})}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	})}
	d := NewHTTPDrainer(srv, []net.Listener{l})
	served := make(chan error, 1)
	go func() { served <- d.Serve(l) }()

	conn, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	<-l.accepted
	drained := make(chan error, 1)
	go func() { drained <- d.Shutdown(context.Background()) }()

	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the request of a connection accepted just before the drain got no answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %s", resp.Status)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != http.ErrServerClosed {
		t.Fatalf("Serve returned %v, want http.ErrServerClosed", err)
	}
}
