package main

import (
	"testing"

	"github.com/forkd/forkd/pkg/cluster"
)

// Every kind of rollout has its name in the control API, the one the cluster gives it.
func TestRolloutKindNames(t *testing.T) {
	for k := cluster.KindRefork; k <= cluster.KindRestart; k++ {
		if got := rolloutKind(k); got == "" || got != k.String() {
			t.Errorf("rolloutKind(%v) = %q", k, got)
		}
	}
	if got := rolloutKind(cluster.NoRollout); got != "" {
		t.Errorf("rolloutKind(NoRollout) = %q, want none", got)
	}
}
