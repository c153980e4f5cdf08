package worker_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/forkd/forkd/sdk/go/worker"
)

// A worker's whole life, for an HTTP server: serve on every passed listener, say ready, drain on
// SIGTERM. The same program runs outside forkd, on its own listener.
func ExampleWorker() {
	w, err := worker.New()
	if err != nil {
		log.Fatal(err)
	}
	// ctx ends on SIGTERM, or when the master is gone.
	ctx := w.Run(context.Background())

	listeners, err := w.Listeners()
	if err != nil {
		log.Fatal(err)
	}
	if len(listeners) == 0 {
		// Not under forkd or socket activation.
		l, err := net.Listen("tcp", ":8080")
		if err != nil {
			log.Fatal(err)
		}
		listeners = append(listeners, l)
	}

	server := &http.Server{
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			w.AddRequests(1)
			fmt.Fprintf(rw, "hello from worker %d\n", w.Index())
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	drainer := worker.NewHTTPDrainer(server, listeners)
	serveErrors := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { serveErrors <- drainer.Serve(l) }()
	}
	// Every listener is served: connections queued in the kernel meanwhile are accepted now.
	if err := w.Ready(); err != nil {
		log.Printf("cannot tell the master we are ready: %v", err)
	}

	select {
	case <-ctx.Done():
		log.Printf("stopping: %v", context.Cause(ctx))
	case err := <-serveErrors:
		log.Printf("stopping: %v", err)
	}
	w.Stopping()
	// Stop accepting, answer every connection already accepted, wait for the requests in flight.
	// The master's shutdown timeout bounds it too, with SIGKILL.
	drainCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := drainer.Shutdown(drainCtx); err != nil {
		log.Printf("drain: %v", err)
	}
}
