package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary impersonates workers, and a master, as os/exec's tests do: TestMain runs the
// helper named in helperEnv instead of the tests, and exits with its status.
const helperEnv = "FORKD_TEST_HELPER"

// noPidfdEnv makes a helper's MasterGone take the getppid(2) fallback.
const noPidfdEnv = "FORKD_TEST_NO_PIDFD"

var helpers = map[string]func() int{
	"serve":  helperServe,
	"report": helperReport,
	"master": helperMaster,
	"orphan": helperOrphan,
}

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		helper, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
			os.Exit(2)
		}
		os.Unsetenv(helperEnv)
		os.Exit(helper())
	}
	os.Exit(m.Run())
}

// helperServe is a worker serving HTTP, as ExampleWorker does, on its one passed listener:
//
//	GET /      counts a request and answers "worker <index> generation <generation>"
//	GET /slow  sets STATUS=slow request in flight, waits for SIGTERM, then answers
func helperServe() int {
	w, err := New()
	if err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 3
	}
	ctx := w.Run(context.Background())
	listeners, err := w.Listeners()
	if err != nil || len(listeners) != 1 {
		fmt.Fprintf(os.Stderr, "serve: want one listener, got %d (%v)\n", len(listeners), err)
		return 3
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(rw http.ResponseWriter, r *http.Request) {
		w.AddRequests(1)
		fmt.Fprintf(rw, "worker %d generation %d", w.Index(), w.Generation())
	})
	mux.HandleFunc("GET /slow", func(rw http.ResponseWriter, r *http.Request) {
		w.Status("slow request in flight")
		<-ctx.Done()
		fmt.Fprint(rw, "slow request done")
	})
	server := &http.Server{Handler: mux}
	go server.Serve(listeners[0])
	if err := w.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 3
	}
	w.Status("serving")

	<-ctx.Done()
	w.Stopping()
	drainCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := server.Shutdown(drainCtx); err != nil {
		fmt.Fprintln(os.Stderr, "serve: drain:", err)
		return 4
	}
	return 0
}

// report is what helperReport prints on stdout, as JSON.
type report struct {
	Index      int
	Generation int
	// ListenEnv holds LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES as they are after New.
	ListenEnv map[string]string
	// CloseOnExec says, for each fd of LISTEN_FDS, whether it was close-on-exec after New.
	CloseOnExec  []bool
	Listeners    map[string][]string
	ListenersErr string
	ReadySent    bool
	ReadyErr     string
}

// helperReport calls New, Listeners and Notify(READY=1), and prints what it found.
func helperReport() int {
	passed, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	w, err := New()
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		return 3
	}
	r := report{Index: w.Index(), Generation: w.Generation(), ListenEnv: map[string]string{}}
	for _, name := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if value, ok := os.LookupEnv(name); ok {
			r.ListenEnv[name] = value
		}
	}
	for fd := listenFDsStart; fd < listenFDsStart+passed; fd++ {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		r.CloseOnExec = append(r.CloseOnExec, err == nil && flags&unix.FD_CLOEXEC != 0)
	}
	byName, err := w.ListenersByName()
	if err != nil {
		r.ListenersErr = err.Error()
	}
	if byName != nil {
		r.Listeners = map[string][]string{}
	}
	for name, listeners := range byName {
		for _, l := range listeners {
			r.Listeners[name] = append(r.Listeners[name], l.Addr().String())
		}
	}
	r.ReadySent, err = w.Notify(NotifyReady)
	if err != nil {
		r.ReadyErr = err.Error()
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		return 3
	}
	return 0
}

// helperMaster plays a forkd master that dies: it starts an orphan worker, sharing its stdout,
// and exits, without waiting for it, once its stdin is closed.
func helperMaster() int {
	orphan := exec.Command(os.Args[0])
	orphan.Env = append(os.Environ(), helperEnv+"=orphan")
	orphan.Stdout = os.Stdout
	orphan.Stderr = os.Stderr
	if err := orphan.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "master:", err)
		return 3
	}
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// helperOrphan is a worker that says READY=1 and, once its context ends, prints why and exits.
func helperOrphan() int {
	if os.Getenv(noPidfdEnv) != "" {
		pidfdOpen = func(int, int) (int, error) { return -1, unix.ENOSYS }
	}
	w, err := New()
	if err != nil {
		fmt.Fprintln(os.Stderr, "orphan:", err)
		return 3
	}
	ctx := w.Run(context.Background())
	// MasterGone is watching before READY=1, so the test can let the master go as soon as it sees it.
	gone := w.MasterGone()
	if err := w.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, "orphan:", err)
		return 3
	}
	<-ctx.Done()
	select {
	case <-gone:
	default:
		fmt.Fprintln(os.Stderr, "orphan: context ended but MasterGone is open")
		return 4
	}
	// The master's socket may be gone with it; that is not worth failing for.
	if err := w.Stopping(); err != nil && !errors.Is(err, unix.ECONNREFUSED) {
		fmt.Fprintln(os.Stderr, "orphan:", err)
	}
	fmt.Printf("orphan %d stopping: %v\n", os.Getpid(), context.Cause(ctx))
	return 0
}
