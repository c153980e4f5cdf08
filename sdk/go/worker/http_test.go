package worker

import (
	"bufio"
	"context"
	"net"
	"net/http"
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
	go srv.Serve(l)

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
