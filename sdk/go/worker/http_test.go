package worker

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestHTTPDrainerAnswersConnectionsAcceptedBeforeTheDrain: a client connects, the drain begins,
// and only then does its request arrive. net/http's Shutdown alone closes such a connection
// unanswered; the drainer answers it.
func TestHTTPDrainerAnswersConnectionsAcceptedBeforeTheDrain(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok"))
	})}
	d := NewHTTPDrainer(srv, []net.Listener{l})
	accepted := make(chan struct{})
	hook := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		hook(c, s)
		if s == http.StateNew {
			close(accepted)
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
	// Let the drain start before the request is sent.
	time.Sleep(50 * time.Millisecond)
	if _, err := conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("the request sent during the drain got no answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %s", resp.Status)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
}

// heldAcceptListener holds each connection it has accepted until release is closed, as a
// descheduled goroutine would between accept and net/http's bookkeeping of the connection.
type heldAcceptListener struct {
	net.Listener
	accepted chan struct{} // closed once a connection is held
	release  chan struct{}
	once     sync.Once
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

// TestHTTPDrainerAnswersAConnectionStillInAccept: the drain begins while a connection accept has
// returned has not reached net/http yet; its request, sent before, is answered all the same.
// (Without waiting for Serve to stop accepting, the drainer saw no fresh connection, net/http's
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
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(l.release) }) }
	// The held connection goes on once net/http's Shutdown has begun (where the race was lost),
	// or after a while if the drainer waits for the accept loop instead, as it should.
	srv.RegisterOnShutdown(release)
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
	time.AfterFunc(200*time.Millisecond, release)

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
