// Command hello is the demo app `make run` serves under forkd: a small HTTP server on the Go
// worker SDK (sdk/go/worker), run in exec mode, one process per worker.
//
// It serves on every listener forkd passes it:
//
//	GET /           "hello from worker <index> (pid <pid>, generation <generation>)"
//	GET /slow?ms=N  answers after N milliseconds (at most 60000), to watch a graceful drain
//	GET /healthz    "ok"
//
// It says READY=1 once it serves, reports its request count to forkd, keeps a STATUS= line
// ("serving, N requests") at most a second old, and on SIGTERM stops accepting and finishes the
// requests in flight, for at most 30 seconds. It logs one line to stderr when it starts and one
// when it stops.
//
// Outside forkd (go run ./examples/hello) it binds HELLO_ADDR itself, ":8080" by default.
//
// Environment, for demos:
//
//	HELLO_BOOT_DELAY  a duration ("3s") to wait before serving and saying READY=1, to watch forkd
//	                  wait for readiness during a rollout
//	HELLO_ADDR        the address to bind when forkd passed no listener (default ":8080")
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/forkd/forkd/sdk/go/worker"
)

const (
	// maxSlow bounds /slow, so a typo cannot hold a worker for hours.
	maxSlow = 60 * time.Second
	// drainTimeout bounds the graceful stop. forkd's own shutdown timeout (timeouts.shutdown)
	// ends with SIGKILL; this ends earlier on its own, with a log line saying so.
	drainTimeout = 30 * time.Second
	// statusInterval is how often the STATUS= line is refreshed, when the count changed.
	statusInterval = time.Second
)

func main() {
	os.Exit(run())
}

func run() int {
	w, err := worker.New()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hello:", err)
		return 1
	}
	prefix := "hello: "
	if w.Index() >= 0 {
		prefix = fmt.Sprintf("hello worker %d: ", w.Index())
	}
	// No timestamps: under forkd and systemd, stderr goes to the journal, which has its own.
	logger := log.New(os.Stderr, prefix, 0)

	bootDelay, err := durationFromEnv("HELLO_BOOT_DELAY")
	if err != nil {
		logger.Print(err)
		return 2
	}

	ctx := w.Run(context.Background())

	listeners, err := w.Listeners()
	if err != nil {
		logger.Print(err)
		return 1
	}
	if len(listeners) == 0 {
		addr := os.Getenv("HELLO_ADDR")
		if addr == "" {
			addr = ":8080"
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			logger.Print(err)
			return 1
		}
		listeners = append(listeners, l)
	}

	// Connections that arrive meanwhile wait in the listen queue; under forkd, the other workers
	// take them.
	select {
	case <-time.After(bootDelay):
	case <-ctx.Done():
		logger.Printf("stopped before serving: %v", context.Cause(ctx))
		return 0
	}

	server := &http.Server{
		Handler:           countRequests(w, newMux(w)),
		ReadHeaderTimeout: 10 * time.Second,
	}
	drainer := worker.NewHTTPDrainer(server, listeners)
	serveErrors := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { serveErrors <- drainer.Serve(l) }()
	}
	if err := w.Ready(); err != nil {
		logger.Printf("cannot say READY=1: %v", err)
	}
	go reportStatus(ctx, w)
	logger.Printf("serving on %s (pid %d, generation %d)", addresses(listeners), os.Getpid(), w.Generation())

	var why error
	listenerFailed := false
	select {
	case <-ctx.Done():
		why = context.Cause(ctx)
	case why = <-serveErrors:
		listenerFailed = true
	}
	w.Stopping()
	drainCtx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if err := drainer.Shutdown(drainCtx); err != nil {
		server.Close()
		logger.Printf("stopped (%v), %d requests served; drain cut short: %v", why, w.Requests(), err)
		return 1
	}
	logger.Printf("stopped (%v), %d requests served", why, w.Requests())
	if listenerFailed {
		return 1
	}
	return 0
}

// newMux routes hello's three endpoints.
func newMux(w *worker.Worker) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "hello from worker %d (pid %d, generation %d)\n", w.Index(), os.Getpid(), w.Generation())
	})
	mux.HandleFunc("GET /slow", func(rw http.ResponseWriter, r *http.Request) {
		ms, err := strconv.Atoi(r.URL.Query().Get("ms"))
		if err != nil || ms < 0 {
			http.Error(rw, "ms must be a number of milliseconds, like /slow?ms=5000", http.StatusBadRequest)
			return
		}
		delay := min(time.Duration(ms)*time.Millisecond, maxSlow)
		// A drain waits for this timer: only the client going away cuts it short.
		timer := time.NewTimer(delay)
		defer timer.Stop()
		select {
		case <-timer.C:
		case <-r.Context().Done():
			return
		}
		fmt.Fprintf(rw, "slept %d ms in worker %d (pid %d, generation %d)\n",
			delay.Milliseconds(), w.Index(), os.Getpid(), w.Generation())
	})
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(rw, "ok")
	})
	return mux
}

// countRequests counts every request, for X_FORKD_REQUESTS and the status line.
func countRequests(w *worker.Worker, next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.AddRequests(1)
		next.ServeHTTP(rw, r)
	})
}

// reportStatus keeps STATUS= current, at most once per statusInterval and only when the count
// changed, rather than on every request: a status is a datagram to the master.
func reportStatus(ctx context.Context, w *worker.Worker) {
	reported := w.Requests()
	w.Status("serving, %d requests", reported)
	ticker := time.NewTicker(statusInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if total := w.Requests(); total != reported {
				reported = total
				w.Status("serving, %d requests", total)
			}
		}
	}
}

// durationFromEnv parses the duration in the environment variable name; unset means 0.
func durationFromEnv(name string) (time.Duration, error) {
	text := os.Getenv(name)
	if text == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(text)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s=%q: want a duration like 3s or 500ms", name, text)
	}
	return d, nil
}

// addresses lists the listeners' addresses for the start line.
func addresses(listeners []net.Listener) string {
	addrs := make([]string, len(listeners))
	for i, l := range listeners {
		addrs[i] = l.Addr().String()
	}
	return strings.Join(addrs, ", ")
}
