package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Phases of the master, in Status.Phase.
const (
	PhaseStarting = "starting"
	PhaseRunning  = "running"
	PhaseRolling  = "rolling"
	PhaseStopping = "stopping"
)

// Worker modes, in Status.Mode.
const (
	ModeExec = "exec"
	ModeFork = "fork"
)

// States of a worker slot, in Worker.State. A Backend may report others; clients show them as they
// are.
const (
	WorkerSpawning = "spawning"
	WorkerBooting  = "booting"
	WorkerReady    = "ready"
	WorkerStopping = "stopping"
	// WorkerBackoff is a slot whose worker keeps crashing: it waits until Worker.NextRestart.
	WorkerBackoff = "backoff"
)

// Status is the answer to GET /v1/status: the master and every worker slot.
type Status struct {
	Name      string    `json:"name"`
	Version   string    `json:"version"`
	MasterPID int       `json:"master_pid"`
	StartedAt time.Time `json:"started_at"`
	Uptime    Duration  `json:"uptime"`
	// Phase is one of PhaseStarting, PhaseRunning, PhaseRolling, PhaseStopping.
	Phase      string `json:"phase"`
	Generation int    `json:"generation"`
	// Workers is the desired number of workers; Ready how many of them are ready now.
	Workers int `json:"workers"`
	Ready   int `json:"ready"`
	// Mode is ModeExec or ModeFork.
	Mode string `json:"mode"`
	// SocketActivated is true when the listeners came from systemd (LISTEN_FDS) rather than being
	// bound by forkd.
	SocketActivated bool       `json:"socket_activated"`
	Listeners       []Listener `json:"listeners"`
	// DroppedNotifications counts sd_notify datagrams from processes that are not workers.
	DroppedNotifications uint64 `json:"dropped_notifications"`
	// StatusLine is what forkd last sent systemd as STATUS=.
	StatusLine string   `json:"status_line"`
	WorkerList []Worker `json:"worker_list"`
}

// Listener is one socket the workers accept on.
type Listener struct {
	// Name is the socket's name in LISTEN_FDNAMES.
	Name string `json:"name"`
	// Address is where it listens, e.g. "tcp://0.0.0.0:8080" or "unix:///run/app.sock".
	Address string `json:"address"`
}

// Worker is one worker slot.
type Worker struct {
	Index int `json:"index"`
	// PID is 0 while no process runs in the slot.
	PID        int `json:"pid"`
	Generation int `json:"generation"`
	// State is one of the Worker* constants.
	State string `json:"state"`
	// StartedAt is zero (and omitted) while no process runs in the slot.
	StartedAt time.Time `json:"started_at,omitzero"`
	Uptime    Duration  `json:"uptime"`
	// Restarts counts the slot's respawns after a crash.
	Restarts int `json:"restarts"`
	// StatusLine is the worker's last STATUS=.
	StatusLine string `json:"status_line"`
	// Requests is the worker's cumulative request count, as it reports it (X_FORKD_REQUESTS=).
	Requests uint64 `json:"requests"`
	// LastExit says how the slot's previous process ended, e.g. "exit status 1" or
	// "killed by SIGKILL (heartbeat timeout)"; empty if none has.
	LastExit string `json:"last_exit,omitempty"`
	// NextRestart is when a slot in WorkerBackoff spawns again; zero (and omitted) otherwise.
	NextRestart time.Time `json:"next_restart,omitzero"`
}

// StopRequest is the body of POST /v1/stop.
type StopRequest struct {
	// Immediate skips the drain: workers get SIGKILL instead of SIGTERM and a grace period.
	Immediate bool `json:"immediate"`
	// Wait holds the reply until the workers are gone, just before forkd exits.
	Wait bool `json:"wait"`
}

// ScaleRequest is the body of POST /v1/scale. Exactly one field is set: Workers asks for an
// absolute number, Delta for a change relative to the current one.
type ScaleRequest struct {
	Workers int `json:"workers,omitempty"`
	Delta   int `json:"delta,omitempty"`
}

func (r ScaleRequest) validate() error {
	switch {
	case r.Workers != 0 && r.Delta != 0:
		return errors.New("scale: set either workers or delta, not both")
	case r.Workers == 0 && r.Delta == 0:
		return errors.New("scale: set workers (a positive count) or delta (a non-zero change)")
	case r.Workers < 0:
		return fmt.Errorf("scale: workers must be positive, got %d", r.Workers)
	}
	return nil
}

// ScaleResponse is the reply to POST /v1/scale.
type ScaleResponse struct {
	// Workers is the desired number of workers now; Previous what it was before.
	Workers  int `json:"workers"`
	Previous int `json:"previous"`
}

// Duration is a time.Duration that JSON encodes as a Go duration string ("1m30s"), so the API
// reads well in `forkctl status -o json | jq` and scripts can still parse it (time.ParseDuration,
// or systemd.time(7), which accepts the same units). Convert with time.Duration(d).
type Duration time.Duration

// String formats d as time.Duration does.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON encodes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON decodes a duration string such as "1m30s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("control: a duration must be a string such as \"1m30s\": %w", err)
	}
	parsed, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	*d = Duration(parsed)
	return nil
}
