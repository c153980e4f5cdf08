// Package protocol owns the wire format of forkd's worker control channel, version 1: the JSON
// messages a master and its workers exchange over a SOCK_SEQPACKET socketpair in fork-worker mode,
// and the channel itself (Conn), which carries one message per packet and, with a spawn request,
// the new worker's channel as SCM_RIGHTS. docs/protocol.md is the specification; this package and
// the SDKs implement it.
//
// Outcomes of decoding are plain: a Message, or an error saying what is wrong with the packet. A
// peer's bad message never closes the channel; the caller answers it with an Error message when it
// had a Seq, and ignores it otherwise.
package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Version is the protocol version this package speaks, announced in FORKD_PROTOCOL and in every
// message's "v".
const Version = 1

// MaxMessageSize bounds one packet: a message is a few hundred bytes, anything near this is wrong.
const MaxMessageSize = 64 << 10

// Environment variables of the protocol, besides sd_listen_fds(3)'s and sd_notify(3)'s.
const (
	EnvProtocol   = "FORKD_PROTOCOL"
	EnvWorker     = "FORKD_WORKER"
	EnvGeneration = "FORKD_GENERATION"
	EnvControlFD  = "FORKD_CONTROL_FD"
)

// IsWorkerVar says whether forkd sets (or withholds) the environment variable key for each worker
// itself: sd_listen_fds(3)'s, sd_notify(3)'s and the protocol's own (every FORKD_ name), and those
// systemd sets for forkd that do not describe a worker (JOURNAL_STREAM, FDSTORE). Neither forkd's
// environment nor its config passes them through.
func IsWorkerVar(key string) bool {
	switch key {
	case "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
		"FDSTORE":
		return true
	}
	return strings.HasPrefix(key, "FORKD_")
}

// Ops, the "op" of a message.
const (
	OpHello       = "hello"        // worker → master: first message; PID, Fork, SDK
	OpWelcome     = "welcome"      // master → worker: accepted; Worker, Generation
	OpRefuse      = "refuse"       // master → worker: refused; Error. The master closes the channel.
	OpSpawn       = "spawn"        // master → template: fork worker Worker of Generation; one fd
	OpSpawned     = "spawned"      // template → master: PID of the new worker
	OpSpawnFailed = "spawn_failed" // template → master: Error
	OpPause       = "pause"        // master → template: stop serving until resume
	OpPaused      = "paused"       // template → master: quiescent
	OpResume      = "resume"       // master → template
	OpResumed     = "resumed"      // template → master
	OpError       = "error"        // either way: the request with Seq was not understood
	OpStdio       = "stdio"        // master → forked worker: one fd, its own stdout and stderr; JournalStream
	// Molds (refork_from = "warmest"): a serving worker forks a new template at once, without
	// quiescing; the mold says hello on the channel that travels with the request, with Mold set.
	OpMold       = "mold"        // master → serving worker: fork a mold of Generation; NotifySocket; one fd
	OpMolded     = "molded"      // serving worker → master: PID of the mold
	OpMoldFailed = "mold_failed" // serving worker → master: Error
)

// Message is one control-channel message. Which fields mean something depends on Op (see the Op
// constants and docs/protocol.md); the others are zero and left out of the encoding.
type Message struct {
	V          int    `json:"v"`
	Op         string `json:"op"`
	Seq        uint64 `json:"seq,omitempty"`
	PID        int    `json:"pid,omitempty"`
	Fork       bool   `json:"fork,omitempty"`
	SDK        string `json:"sdk,omitempty"`
	Worker     int    `json:"worker,omitempty"`
	Generation int    `json:"generation,omitempty"`
	Error      string `json:"error,omitempty"`
	// JournalStream, with OpStdio, is the new stdout's "DEV:INO" for JOURNAL_STREAM when it is a
	// journal stream.
	JournalStream string `json:"journal_stream,omitempty"`
	// Mold, in a hello, says the sender is a mold: forked by a serving worker to be the template.
	Mold bool `json:"mold,omitempty"`
	// NotifySocket, with OpMold, is the mold's own NOTIFY_SOCKET; empty: keep the inherited one.
	NotifySocket string `json:"notify_socket,omitempty"`
	// Serve, in a welcome, is false for a template that must not serve (worker 0 and molds with
	// refork_from = "warmest"); nil (left out): serve, as every worker did before molds.
	Serve *bool `json:"serve,omitempty"`
	// ReportHeap, in a welcome to an exec'd worker 0, asks it to report its heap's size once the
	// app has loaded (X_FORKD_HEAP_SIZE on its notify socket), for the next template forkd execs.
	ReportHeap bool `json:"report_heap,omitempty"`
}

// Errors of Decode, matched with errors.Is.
var (
	ErrMalformed = errors.New("protocol: malformed message")
	// ErrVersion: the message is well-formed but of another protocol version. Decode still returns
	// the message, so the caller can answer with a refusal naming both versions.
	ErrVersion = errors.New("protocol: unsupported version")
)

// requests are the ops that must carry a Seq, so their reply can name them.
var requests = map[string]bool{OpSpawn: true, OpPause: true, OpResume: true, OpMold: true}

// replies are the ops that answer a request and so carry its Seq.
var replies = map[string]bool{OpSpawned: true, OpSpawnFailed: true, OpPaused: true, OpResumed: true, OpError: true,
	OpMolded: true, OpMoldFailed: true}

// Decode parses one packet. It returns:
//   - (msg, nil): a well-formed version-1 message with a known op and the fields that op needs;
//   - (msg, err matching ErrVersion): a message of another version, with V and Op as sent;
//   - (msg, err matching ErrMalformed): anything else, with as much of msg as could be read (its
//     Seq, so that an Error reply can name the request).
func Decode(packet []byte) (Message, error) {
	var m Message
	if len(packet) > MaxMessageSize {
		return m, fmt.Errorf("%w: %d bytes, the limit is %d", ErrMalformed, len(packet), MaxMessageSize)
	}
	if !utf8.Valid(packet) {
		return m, fmt.Errorf("%w: not UTF-8", ErrMalformed)
	}
	if err := json.Unmarshal(packet, &m); err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if m.V == 0 || m.Op == "" {
		return m, fmt.Errorf(`%w: "v" and "op" are required`, ErrMalformed)
	}
	if m.V != Version {
		return m, fmt.Errorf("%w: the peer speaks protocol %d, this side %d", ErrVersion, m.V, Version)
	}
	if err := m.validate(); err != nil {
		return m, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return m, nil
}

func (m Message) validate() error {
	switch {
	case m.Op == OpHello && m.PID <= 0:
		return errors.New(`hello needs "pid"`)
	case m.Op == OpSpawn && m.Generation <= 0:
		return errors.New(`spawn needs "worker" and "generation"`)
	case m.Op == OpMold && m.Generation <= 0:
		return errors.New(`mold needs "generation"`)
	case (m.Op == OpSpawned || m.Op == OpMolded) && m.PID <= 0:
		return fmt.Errorf(`%s needs "pid"`, m.Op)
	case (m.Op == OpSpawnFailed || m.Op == OpMoldFailed || m.Op == OpRefuse) && m.Error == "":
		return fmt.Errorf(`%s needs "error"`, m.Op)
	case (requests[m.Op] || replies[m.Op]) && m.Seq == 0 && m.Op != OpError:
		return fmt.Errorf(`%s needs "seq"`, m.Op)
	case m.Worker < 0 || m.Generation < 0:
		return errors.New("worker and generation cannot be negative")
	}
	switch m.Op {
	case OpHello, OpWelcome, OpRefuse, OpSpawn, OpSpawned, OpSpawnFailed, OpPause, OpPaused, OpResume, OpResumed, OpError, OpStdio,
		OpMold, OpMolded, OpMoldFailed:
		return nil
	}
	return fmt.Errorf("unknown op %q", m.Op)
}

// Encode returns the packet for m, setting V to Version when it is zero.
func Encode(m Message) ([]byte, error) {
	if m.V == 0 {
		m.V = Version
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("protocol: encode: %w", err)
	}
	if len(b) > MaxMessageSize {
		return nil, fmt.Errorf("protocol: encode: %d bytes, the limit is %d", len(b), MaxMessageSize)
	}
	return b, nil
}
