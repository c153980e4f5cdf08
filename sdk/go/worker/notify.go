package worker

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Notification states (sd_notify(3)). A message is one or more of them, one per line, sent as one
// datagram. forkd's master reads them as systemd does; its own extensions start with X_FORKD_.
const (
	// NotifyReady says the worker has finished starting and serves its listeners. Under forkd a
	// rollout waits for it before stopping the worker this one replaces.
	NotifyReady = "READY=1"
	// NotifyStopping says the worker has begun shutting down.
	NotifyStopping = "STOPPING=1"
	// NotifyWatchdog is the heartbeat: the worker is alive. Run sends it.
	NotifyWatchdog = "WATCHDOG=1"
	// NotifyStatusPrefix starts a free-form, one-line status, shown by forkctl status (and, under
	// plain systemd, by systemctl status).
	NotifyStatusPrefix = "STATUS="
	// NotifyRequestsPrefix starts forkd's request count: the decimal total of requests the worker
	// has served since it started, as given to AddRequests. The master uses it for
	// "refork after N requests"; systemd ignores it.
	NotifyRequestsPrefix = "X_FORKD_REQUESTS="
)

// requestsReportInterval bounds how often a request count is sent on its own, when no heartbeat
// carries it.
const requestsReportInterval = time.Second

// notifier sends sd_notify(3) datagrams to one address, taken from NOTIFY_SOCKET at New.
type notifier struct {
	// addr is where datagrams go, or nil when NOTIFY_SOCKET was unset.
	addr *net.UnixAddr
	// err, when set, is why NOTIFY_SOCKET cannot be used; every send returns it.
	err error
}

func newNotifier(socket string) notifier {
	switch {
	case socket == "":
		return notifier{}
	case strings.HasPrefix(socket, "/"), strings.HasPrefix(socket, "@"):
		// Go's net package maps a leading '@' to the abstract namespace's leading NUL.
		return notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}}
	default:
		return notifier{err: fmt.Errorf("worker: NOTIFY_SOCKET=%q is neither an absolute path nor an @abstract name", socket)}
	}
}

// send delivers state as one datagram. Dialing for each message, as sd_notify does, keeps no
// descriptor open between messages and follows the master's socket across its hot restarts.
func (n notifier) send(state string) (bool, error) {
	if n.err != nil {
		return false, n.err
	}
	if n.addr == nil {
		return false, nil
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return false, fmt.Errorf("worker: notify: %w", err)
	}
	defer conn.Close()
	// The kernel attaches this process's credentials for a receiver that set SO_PASSCRED, which is
	// how the master knows which worker is talking.
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("worker: notify: %w", err)
	}
	return true, nil
}

// Notify sends state, one or more "VARIABLE=value" lines, to the supervisor as one datagram. It is
// the general form of Ready, Status and Stopping, for states this package has no method for.
//
// Outcomes, as sd_notify(3) and go-systemd's SdNotify:
//   - (false, nil): there is nobody to notify (NOTIFY_SOCKET is unset); not under forkd or a
//     Type=notify systemd service.
//   - (false, err): the notification could not be sent: NOTIFY_SOCKET is malformed, or the socket
//     is gone (the master exited).
//   - (true, nil): the notification was sent.
func (w *Worker) Notify(state string) (bool, error) {
	return w.notifier.send(state)
}

// Ready tells the supervisor the worker serves its listeners (READY=1). Call it once, after every
// listener is being served: under forkd, a rollout stops the worker this one replaces only then.
// It returns nil, having sent nothing, when there is nobody to notify, and an error when the
// notification could not be sent (see Notify).
func (w *Worker) Ready() error {
	_, err := w.Notify(NotifyReady)
	return err
}

// Status sets the worker's one-line status (STATUS=), formatted as fmt.Sprintf does; newlines
// become spaces, since each line of a notification is a separate state. Outcomes as Ready.
func (w *Worker) Status(format string, args ...any) error {
	status := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	_, err := w.Notify(NotifyStatusPrefix + status)
	return err
}

// Stopping tells the supervisor the worker has begun shutting down (STOPPING=1). Call it when the
// context from Run ends, before draining. Outcomes as Ready.
func (w *Worker) Stopping() error {
	_, err := w.Notify(NotifyStopping)
	return err
}

// AddRequests adds n to the count of requests this worker has served. The total is reported to
// the master as X_FORKD_REQUESTS with the next heartbeat, or at most once a second when there are
// no heartbeats, once Run has started; forkd uses it to refork after a number of requests. It costs
// one atomic add, so call it for every request.
func (w *Worker) AddRequests(n uint64) {
	w.requests.Add(n)
}

// Requests returns the total given to AddRequests so far.
func (w *Worker) Requests() uint64 {
	return w.requests.Load()
}

// report sends heartbeats every half WATCHDOG_USEC, as sd_watchdog_enabled(3) advises, and the
// request count whenever it changed: with the heartbeat, or on its own at most every
// requestsReportInterval when heartbeats are off or further apart. It returns when ctx ends.
//
// Send errors are dropped: the master judges a worker by the heartbeats that arrive, and a master
// that is gone is MasterGone's business.
func (w *Worker) report(ctx context.Context) {
	var heartbeats, countReports <-chan time.Time
	if w.watchdog > 0 {
		ticker := time.NewTicker(w.watchdog / 2)
		defer ticker.Stop()
		heartbeats = ticker.C
	}
	if w.watchdog == 0 || w.watchdog/2 > requestsReportInterval {
		ticker := time.NewTicker(requestsReportInterval)
		defer ticker.Stop()
		countReports = ticker.C
	}
	var reported uint64
	// send sends state, with the request count appended when it changed since the last report
	// that got through.
	send := func(state string) {
		total := w.requests.Load()
		if total != reported {
			if state != "" {
				state += "\n"
			}
			state += NotifyRequestsPrefix + strconv.FormatUint(total, 10)
		}
		if state == "" {
			return
		}
		if sent, _ := w.Notify(state); sent {
			reported = total
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-heartbeats:
			send(NotifyWatchdog)
		case <-countReports:
			send("")
		}
	}
}
