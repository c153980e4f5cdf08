package chaos

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"sync"
	"time"
)

// An event is one record of forkd's JSON log (log { format = "json" }): what the master did and
// when, by its own account. The suite injects faults at chosen events (the second worker the
// reload spawns, the exec of a hot restart) and reads from them how each worker ended.
type event struct {
	Time       time.Time `json:"time"`
	Level      string    `json:"level"`
	Msg        string    `json:"msg"`
	Event      string    `json:"event"`
	PID        int       `json:"pid"`
	Worker     *int      `json:"worker"`
	Generation int       `json:"generation"`
	Status     string    `json:"status"`
}

// Events of forkd's log the suite relies on (pkg/cluster's machine and driver emit them).
const (
	evWorkerSpawned    = "worker-spawned"
	evWorkerReady      = "worker-ready"
	evWorkerExited     = "worker-exited"
	evHeartbeatTimeout = "heartbeat-timeout"
	evBootTimeout      = "boot-timeout"
	evRestartStart     = "restart-start" // twice: checking the binary (no generation), then the rollout
	evRestartExec      = "restart-exec"
	evRestartAdopted   = "restart-adopted"
	evMasterStarting   = "master-starting"
)

// eventLog follows the output every master of one cluster writes (forkd's log and its workers'
// output, on one pipe), keeps the records, and runs triggers as records arrive.
type eventLog struct {
	mu       sync.Mutex
	events   []event
	triggers []*trigger
	done     chan struct{}
}

// A trigger runs its action once, on the first event its match accepts. The action runs on the
// goroutine reading the log, at once, so that a fault lands as close to its event as it can; it
// must be quick (a signal, not a wait).
type trigger struct {
	match  func(event) bool
	action func(event)
	fired  chan struct{}
	ev     event
}

// follow reads r line by line until it ends, copying everything to out (the cluster's log file).
func (l *eventLog) follow(r io.Reader, out *os.File) {
	defer close(l.done)
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			out.Write(line)
			l.record(line)
		}
		if err != nil {
			return
		}
	}
}

func (l *eventLog) record(line []byte) {
	var ev event
	if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &ev) != nil || ev.Msg == "" {
		// A worker's own output, not a record of forkd's.
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, ev)
	kept := l.triggers[:0]
	for _, t := range l.triggers {
		if t.match(ev) {
			t.ev = ev
			t.action(ev)
			close(t.fired)
			continue
		}
		kept = append(kept, t)
	}
	l.triggers = kept
}

// on registers a trigger; cancel withdraws it if it has not fired.
func (l *eventLog) on(match func(event) bool, action func(event)) (t *trigger, cancel func()) {
	t = &trigger{match: match, action: action, fired: make(chan struct{})}
	l.mu.Lock()
	l.triggers = append(l.triggers, t)
	l.mu.Unlock()
	return t, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for i, u := range l.triggers {
			if u == t {
				l.triggers = append(l.triggers[:i], l.triggers[i+1:]...)
				return
			}
		}
	}
}

// hasFired reports whether t has fired.
func (t *trigger) hasFired() bool {
	select {
	case <-t.fired:
		return true
	default:
		return false
	}
}

// mark is a position in the log, for since.
func (l *eventLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

// since returns the events recorded after mark.
func (l *eventLog) since(mark int) []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]event(nil), l.events[mark:]...)
}
