package cluster

import "fmt"

// RolloutKind names an operation the cluster runs one at a time (ops.go): Status.Rollout and
// Status.Queued, RolloutResult and the records of rollouts speak of them.
type RolloutKind int

// The kinds: KindRefork re-forks workers 1..n-1 from the template; KindReload is a phased restart,
// every worker replaced from the config loaded again; KindRestart a hot restart, before its exec
// and in the phased restart that completes it. NoRollout is none.
const (
	NoRollout RolloutKind = iota
	KindRefork
	KindReload
	KindRestart
)

func (k RolloutKind) String() string {
	switch k {
	case NoRollout:
		return ""
	case KindRefork:
		return "refork"
	case KindReload:
		return "reload"
	case KindRestart:
		return "restart"
	}
	return fmt.Sprintf("RolloutKind(%d)", int(k))
}

// MarshalText spells a kind as its name in a State, so that the handover reads as the status does.
func (k RolloutKind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads a kind's name.
func (k *RolloutKind) UnmarshalText(b []byte) error {
	for kind := NoRollout; kind <= KindRestart; kind++ {
		if kind.String() == string(b) {
			*k = kind
			return nil
		}
	}
	return fmt.Errorf("cluster: unknown rollout kind %q", b)
}
