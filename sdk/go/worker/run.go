package worker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// Why the context from Run ended, as context.Cause reports it.
var (
	// ErrStopSignal: the process received SIGTERM (forkd stopping or replacing the worker) or
	// SIGINT. The cause wraps it with the signal's name.
	ErrStopSignal = errors.New("worker: stop signal received")
	// ErrMasterGone: the forkd master exited, so nobody supervises this worker any more.
	ErrMasterGone = errors.New("worker: master is gone")
)

// masterPollInterval is how often the fallback without pidfds checks whether the master is gone.
const masterPollInterval = time.Second

// Run starts the worker's duties towards its supervisor and returns a context that ends when the
// worker should stop: on SIGTERM or SIGINT (cause ErrStopSignal), when the forkd master is gone
// (cause ErrMasterGone, see MasterGone), or when ctx ends (ctx's cause). Serve until it ends, call
// Stopping, then stop accepting and finish the requests in flight.
//
// Run catches SIGTERM and SIGINT until ctx ends. A second signal does not kill the worker while it
// drains: in a terminal, Ctrl-C reaches the master and the workers alike, and the master's own
// SIGTERM follows. The supervisor's shutdown timeout, then SIGKILL, bounds a drain that hangs.
//
// The first call also starts, for as long as ctx lasts,
//   - heartbeats (WATCHDOG=1) every half WATCHDOG_USEC, when the supervisor set WATCHDOG_USEC for
//     this process (WATCHDOG_PID is this process or unset, as sd_watchdog_enabled(3) reads it);
//     they go on while the worker drains, so a long drain is not taken for a hang;
//   - the request count of AddRequests (X_FORKD_REQUESTS), with the heartbeats or on its own at
//     most once a second.
//
// With nobody to notify, nothing is sent, and the context ends on a signal or with ctx.
func (w *Worker) Run(ctx context.Context) context.Context {
	w.reportOnce.Do(func() {
		if w.notifier.addr != nil {
			go w.report(ctx)
		}
	})

	runCtx, stop := context.WithCancelCause(ctx)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		select {
		case sig := <-signals:
			stop(fmt.Errorf("%w: %v", ErrStopSignal, sig))
		case <-w.MasterGone():
			stop(ErrMasterGone)
		case <-runCtx.Done():
		}
		// Later signals land in the full channel and are dropped, until ctx ends.
		<-ctx.Done()
		signal.Stop(signals)
	}()
	return runCtx
}

// MasterGone returns a channel that is closed when the forkd master, this worker's parent, has
// exited. A worker whose master is gone is unsupervised: it should finish what it is doing and
// exit, as the context from Run does for it.
//
// It watches the master with a pidfd (pidfd_open(2), Linux 5.3) that one goroutine waits on in
// poll(2), so the news arrives when the master exits, without polling. Where pidfds are not
// available, it checks getppid(2) once a second instead.
//
// Not under forkd (Index is -1), the channel is never closed: under systemd or a shell, the
// parent is not a master whose exit should end the process.
func (w *Worker) MasterGone() <-chan struct{} {
	w.masterOnce.Do(func() {
		if w.masterPID > 0 {
			go w.watchMaster()
		}
	})
	return w.masterGone
}

// watchMaster closes w.masterGone once the master has exited.
func (w *Worker) watchMaster() {
	defer close(w.masterGone)
	if os.Getppid() != w.masterPID {
		// Already re-parented: the master exited before we looked.
		return
	}
	if err := waitForParentExit(w.masterPID); err == nil {
		return
	}
	for os.Getppid() == w.masterPID {
		time.Sleep(masterPollInterval)
	}
}
