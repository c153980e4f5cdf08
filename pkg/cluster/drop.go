package cluster

import "fmt"

// DropReason is why datagrams on the notify sockets were dropped (NotifyRejected, NotifyDropped):
// each one is a different way the driver tells a datagram it cannot take, so that metrics and
// alerts can tell a misbehaving helper from a flood without reading the log's sentences.
type DropReason int

// The reasons, in the order the driver meets them.
const (
	// DropRefusedUID: the sender's uid is neither root's nor forkd's.
	DropRefusedUID DropReason = iota + 1
	// DropRateLimited: the sender is not a worker, and tracing its ancestry would exceed the
	// rate at which forkd walks /proc for unknown senders.
	DropRateLimited
	// DropOversize: the datagram is larger than the largest notification forkd reads (it was
	// truncated).
	DropOversize
	// DropUnknownSender: the sender is neither a worker nor a worker's descendant.
	DropUnknownSender
	// DropSenderExited: the sender exited before forkd could tell whose it is, on a socket
	// shared by several workers.
	DropSenderExited
	// DropUnparsable: the datagram is not sd_notify's KEY=VALUE lines, or a field's value is bad.
	DropUnparsable
)

// dropReasonNames spell the reasons as metrics label them.
var dropReasonNames = map[DropReason]string{
	DropRefusedUID:    "refused_uid",
	DropRateLimited:   "rate_limited",
	DropOversize:      "oversize",
	DropUnknownSender: "unknown_sender",
	DropSenderExited:  "sender_exited",
	DropUnparsable:    "unparsable",
}

// DropReasons lists every reason, for a metric that shows each one from the start.
func DropReasons() []DropReason {
	return []DropReason{DropRefusedUID, DropRateLimited, DropOversize, DropUnknownSender, DropSenderExited, DropUnparsable}
}

func (r DropReason) String() string {
	if name, ok := dropReasonNames[r]; ok {
		return name
	}
	return fmt.Sprintf("DropReason(%d)", int(r))
}
