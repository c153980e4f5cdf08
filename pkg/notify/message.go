// Package notify implements the receiving end of the sd_notify protocol for forkd's master: each
// worker gets NOTIFY_SOCKET pointing at the master's own datagram socket (never at systemd's), so
// an app that already calls sd_notify(3) reports readiness, status and watchdog heartbeats to
// forkd unmodified.
//
// https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html
//
// A datagram is newline-separated KEY=VALUE assignments. The keys systemd defines mean here what
// they mean to systemd; forkd's own extensions start with ForkdPrefix ("X_FORKD_"), where systemd
// ignores them. Parse turns a datagram into a Message; a Socket receives datagrams together with
// the sender's credentials (SCM_CREDENTIALS), which the master uses to tell which worker sent one.
//
// The master's receive loop (error handling elided):
//
//	sock, err := notify.Listen(notify.NewAbstractAddr())
//	// start workers with NOTIFY_SOCKET=sock.Addr()
//	for {
//		d, err := sock.Receive()
//		if errors.Is(err, net.ErrClosed) {
//			return
//		}
//		if d.Truncated {
//			continue // too large to be a notification: drop and count it
//		}
//		msg, err := notify.Parse(d.Data)
//		// look d.PID up among the workers and their descendants, then act on msg
//	}
package notify

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// The complete assignments a worker sends for each state change.
const (
	// Ready tells the master that the worker finished starting up (or reloading) and serves.
	Ready = "READY=1"

	// Reloading tells the master that the worker is reloading its configuration; it sends Ready
	// when done.
	Reloading = "RELOADING=1"

	// Stopping tells the master that the worker is shutting down.
	Stopping = "STOPPING=1"

	// Watchdog is the worker's heartbeat: it resets the worker timeout.
	Watchdog = "WATCHDOG=1"

	// WatchdogTrigger asks the master to act as if the worker timeout expired now.
	WatchdogTrigger = "WATCHDOG=trigger"
)

// The keys of the assignments Parse interprets. Any other key is kept in Message.Fields.
const (
	KeyReady     = "READY"     // "1"
	KeyReloading = "RELOADING" // "1"
	KeyStopping  = "STOPPING"  // "1"
	KeyWatchdog  = "WATCHDOG"  // "1" or "trigger"

	// KeyStatus is a free-form, single-line, UTF-8 status text for humans; an empty value clears it.
	KeyStatus = "STATUS"

	// KeyWatchdogUSec changes the worker's watchdog timeout, in microseconds.
	KeyWatchdogUSec = "WATCHDOG_USEC"

	// KeyExtendTimeoutUSec asks for that many more microseconds to finish starting up, reloading or
	// stopping.
	KeyExtendTimeoutUSec = "EXTEND_TIMEOUT_USEC"

	// KeyMonotonicUSec is CLOCK_MONOTONIC in microseconds when the worker sent RELOADING=1.
	KeyMonotonicUSec = "MONOTONIC_USEC"

	// KeyErrno is an errno-style error number describing the worker's failure.
	KeyErrno = "ERRNO"

	// ForkdPrefix starts every forkd extension key. systemd ignores keys it does not know, so an
	// app can send these to systemd and forkd alike.
	ForkdPrefix = "X_FORKD_"

	// KeyRequests is the cumulative number of requests the worker has served since it started
	// (a forkd extension, for refork after N requests), at most MaxRequests.
	KeyRequests = ForkdPrefix + "REQUESTS"

	// KeyBusy is how many of the worker's threads (or tasks) serve a request now (a forkd
	// extension, for the status and forkd_worker_busy_threads), at most MaxBusy.
	KeyBusy = ForkdPrefix + "BUSY"

	// KeyHeapSize is the heap size a template reports once its app has loaded, as the variable
	// that would pre-size the next template's heap: RUBY_GC_HEAP_INIT_SLOTS=1300000 (a forkd
	// extension, docs/fork-safety.md "Ruby's heap pages"). Parse keeps it as sent: the master
	// checks it (cluster.ParseHeapSize) and ignores a bad one, with the rest of the datagram
	// applied.
	KeyHeapSize = ForkdPrefix + "HEAP_SIZE"
)

// MaxBusy is the largest X_FORKD_BUSY= Parse accepts. A worker serves that many requests at once
// only as an event loop does, and no runner spawns a million threads: a larger value is a bug.
const MaxBusy = 1_000_000

// MaxRequests is the largest X_FORKD_REQUESTS= Parse accepts: 2^53-1, the largest count a JSON
// reader that uses doubles (JavaScript, jq) still shows exactly. A worker serving a million
// requests a second reaches it after 285 years, so a larger value is a bug or a lie, and showing
// it as is would only mislead (forkctl status, refork_after).
const MaxRequests = 1<<53 - 1

// MaxMessageSize is the largest datagram Parse accepts, in bytes. systemd itself takes no more
// than 4096 (NOTIFY_BUFFER_MAX is PIPE_BUF), so whatever works under systemd works under forkd;
// the margin is for a long STATUS= text, and the bound for the master's memory.
const MaxMessageSize = 64 << 10

// Message is one parsed sd_notify datagram. The zero value is a message with no assignments.
type Message struct {
	// Ready, Reloading and Stopping are READY=1, RELOADING=1 and STOPPING=1.
	Ready, Reloading, Stopping bool

	// Watchdog is WATCHDOG=1, a heartbeat.
	Watchdog bool

	// WatchdogTrigger is WATCHDOG=trigger, a request to fail the worker as if its watchdog expired.
	WatchdogTrigger bool

	// Status is the value of STATUS=, when HasStatus is set. An empty Status with HasStatus set
	// clears the status.
	Status    string
	HasStatus bool

	// WatchdogTimeout is WATCHDOG_USEC=, the new worker timeout the worker asks for, or 0 when
	// absent.
	WatchdogTimeout time.Duration

	// ExtendTimeout is EXTEND_TIMEOUT_USEC=, the extension the worker asks for, or 0 when absent.
	ExtendTimeout time.Duration

	// MonotonicUSec is MONOTONIC_USEC=, or 0 when absent.
	MonotonicUSec uint64

	// Errno is ERRNO=, when HasErrno is set.
	Errno    int
	HasErrno bool

	// Requests is X_FORKD_REQUESTS=, when HasRequests is set.
	Requests    uint64
	HasRequests bool

	// Busy is X_FORKD_BUSY=, when HasBusy is set.
	Busy    int
	HasBusy bool

	// HeapSize is X_FORKD_HEAP_SIZE=, as sent, when HasHeapSize is set.
	HeapSize    string
	HasHeapSize bool

	// Fields are all the assignments in the order sent, the interpreted ones included, so that
	// unknown keys (MAINPID=, FDSTORE=, BUSERROR=, other X_FORKD_ keys ...) reach the caller too.
	// nil when the message has none.
	Fields []Field
}

// Field is one KEY=VALUE assignment.
type Field struct {
	Key, Value string
}

// Parse parses a datagram: newline-separated KEY=VALUE assignments, where empty lines (a trailing
// newline, say) are skipped, a key is one or more of [A-Z0-9_], and the value is the rest of the
// line. The values of the keys above are checked: READY, RELOADING and STOPPING must be "1";
// WATCHDOG "1" or "trigger"; STATUS valid UTF-8; WATCHDOG_USEC and EXTEND_TIMEOUT_USEC positive
// decimal microseconds that fit a uint64 (values beyond time.Duration's range, such as systemd's
// infinity 18446744073709551615, become the longest Duration); MONOTONIC_USEC a decimal uint64;
// X_FORKD_REQUESTS a decimal integer up to MaxRequests; X_FORKD_BUSY one up to MaxBusy; ERRNO a
// non-negative decimal int. When a valued key repeats, the first assignment wins, as in systemd;
// every one must be valid.
//
// It returns one of the following:
//   - (msg, nil): every line is a valid assignment. A datagram with no assignments (empty, or
//     only newlines) gives the zero Message.
//   - (Message{}, err): the datagram is larger than MaxMessageSize, contains a NUL byte, has a
//     line that is not KEY=VALUE with a valid key, or an invalid value for one of the keys above;
//     the error names the line and the key. A sender that gets one thing wrong gets nothing
//     applied, so a half-understood message never changes a worker's state.
func Parse(b []byte) (Message, error) {
	if len(b) > MaxMessageSize {
		return Message{}, fmt.Errorf("notify: message of %d bytes exceeds the limit of %d", len(b), MaxMessageSize)
	}
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return Message{}, fmt.Errorf("notify: NUL byte at offset %d", i)
	}

	var msg Message
	var seen seenKeys
	text := string(b)
	for lineNo := 1; text != ""; lineNo++ {
		var line string
		line, text, _ = strings.Cut(text, "\n")
		if line == "" {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return Message{}, fmt.Errorf("notify: line %d: %s is not a KEY=VALUE assignment", lineNo, quote(line))
		}
		if !validKey(key) {
			return Message{}, fmt.Errorf("notify: line %d: invalid key %s (keys are made of A-Z, 0-9 and _)", lineNo, quote(key))
		}
		if err := msg.apply(key, value, &seen); err != nil {
			return Message{}, fmt.Errorf("notify: line %d: %s: %w", lineNo, key, err)
		}
		msg.Fields = append(msg.Fields, Field{Key: key, Value: value})
	}
	return msg, nil
}

// seenKeys records which valued keys were assigned, so that the first assignment wins.
type seenKeys struct {
	watchdogUSec, extendTimeout, monotonic bool
}

var (
	errNotOne          = errors.New("the only valid value is 1")
	errNotPositive     = errors.New("must be a positive number of microseconds (0 is not a timeout)")
	errNotUint         = errors.New("must be a non-negative decimal integer")
	errNotUTF8         = errors.New("not valid UTF-8")
	errWatchdogValue   = errors.New(`the valid values are "1" and "trigger"`)
	errTooManyRequests = fmt.Errorf("more requests than a worker can have served (at most %d)", MaxRequests)
	errTooBusy         = fmt.Errorf("more requests at once than a worker can serve (at most %d)", MaxBusy)
)

// apply interprets one assignment of a known key and checks its value; other keys pass.
func (m *Message) apply(key, value string, seen *seenKeys) error {
	switch key {
	case KeyReady, KeyReloading, KeyStopping:
		if value != "1" {
			return fmt.Errorf("%s: %w", quote(value), errNotOne)
		}
		switch key {
		case KeyReady:
			m.Ready = true
		case KeyReloading:
			m.Reloading = true
		case KeyStopping:
			m.Stopping = true
		}
	case KeyWatchdog:
		switch value {
		case "1":
			m.Watchdog = true
		case "trigger":
			m.WatchdogTrigger = true
		default:
			return fmt.Errorf("%s: %w", quote(value), errWatchdogValue)
		}
	case KeyStatus:
		if !utf8.ValidString(value) {
			return errNotUTF8
		}
		if !m.HasStatus {
			m.Status, m.HasStatus = value, true
		}
	case KeyWatchdogUSec, KeyExtendTimeoutUSec:
		d, err := parseUSec(value)
		if err != nil {
			return err
		}
		if key == KeyWatchdogUSec && !seen.watchdogUSec {
			m.WatchdogTimeout, seen.watchdogUSec = d, true
		}
		if key == KeyExtendTimeoutUSec && !seen.extendTimeout {
			m.ExtendTimeout, seen.extendTimeout = d, true
		}
	case KeyMonotonicUSec:
		n, err := parseUint(value)
		if err != nil {
			return err
		}
		if !seen.monotonic {
			m.MonotonicUSec, seen.monotonic = n, true
		}
	case KeyErrno:
		n, err := parseUint(value)
		if err != nil || n > math.MaxInt32 {
			return fmt.Errorf("%s: not an errno", quote(value))
		}
		if !m.HasErrno {
			m.Errno, m.HasErrno = int(n), true
		}
	case KeyRequests:
		n, err := parseUint(value)
		if err != nil {
			return err
		}
		if n > MaxRequests {
			return fmt.Errorf("%s: %w", quote(value), errTooManyRequests)
		}
		if !m.HasRequests {
			m.Requests, m.HasRequests = n, true
		}
	case KeyBusy:
		n, err := parseUint(value)
		if err != nil {
			return err
		}
		if n > MaxBusy {
			return fmt.Errorf("%s: %w", quote(value), errTooBusy)
		}
		if !m.HasBusy {
			m.Busy, m.HasBusy = int(n), true
		}
	case KeyHeapSize:
		if !m.HasHeapSize {
			m.HeapSize, m.HasHeapSize = value, true
		}
	}
	return nil
}

// parseUint accepts decimal digits only: no sign, no spaces, no 0x.
func parseUint(value string) (uint64, error) {
	n, err := strconv.ParseUint(value, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", quote(value), errNotUint)
	}
	return n, nil
}

// parseUSec parses positive microseconds. Zero is refused because Message uses 0 for "absent".
func parseUSec(value string) (time.Duration, error) {
	usec, err := parseUint(value)
	if err != nil {
		return 0, err
	}
	if usec == 0 {
		return 0, fmt.Errorf("%s: %w", quote(value), errNotPositive)
	}
	if usec > math.MaxInt64/uint64(time.Microsecond) {
		return math.MaxInt64, nil
	}
	return time.Duration(usec) * time.Microsecond, nil
}

// validKey reports whether key is one or more of [A-Z0-9_].
func validKey(key string) bool {
	if key == "" {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

// quote quotes s for an error message, shortened: a value may be up to 64 KiB long.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
