package cgroup

import (
	"errors"
	"strings"
)

// MasterLeaf is the name of the leaf cgroup the master moves itself into, below its own.
const MasterLeaf = "master"

// workerPrefix starts the name of every worker cgroup: worker-SLOT-ID.
const workerPrefix = "worker-"

// DefaultControllers are the controllers Open enables for the workers when Options names none:
// memory (per-worker memory figures, limits and OOM kills) and pids (pids.max).
var DefaultControllers = []string{"memory", "pids"}

// ErrNoController is returned when a limit needs a controller the tree does not have.
var ErrNoController = errors.New("cgroup: controller not enabled")

// Unavailable is why forkd may not create cgroups. Its message is what a status shows:
// "cgroups off: <reason>".
type Unavailable struct {
	// Reason says what is missing and, where there is one, what to do about it.
	Reason string
}

func (u *Unavailable) Error() string { return "cgroups off: " + u.Reason }

func unavailable(reason string) error { return &Unavailable{Reason: reason} }

// Options are what Open enables.
type Options struct {
	// Controllers are enabled in forkd's cgroup for the workers, those it offers; a controller it
	// does not offer is noted in the tree's String. Nil means DefaultControllers; an empty,
	// non-nil slice enables none (the workers still get cgroups: their process trees and
	// cgroup.kill need no controller).
	Controllers []string
}

// Tree is forkd's delegated subtree: the cgroup forkd was started in, with the master moved into
// its MasterLeaf. Its methods may be called from any goroutine.
type Tree struct {
	dir         string   // forkd's own cgroup directory, R
	controllers []string // enabled in R/cgroup.subtree_control
	missing     []string // "memory (not offered by R)" and the like, for String
}

// Dir is forkd's own cgroup directory, the parent of the master's and the workers' cgroups.
func (t *Tree) Dir() string { return t.dir }

// Controllers lists the controllers the workers' cgroups have.
func (t *Tree) Controllers() []string { return append([]string(nil), t.controllers...) }

// Has reports whether the workers' cgroups have controller.
func (t *Tree) Has(controller string) bool {
	for _, c := range t.controllers {
		if c == controller {
			return true
		}
	}
	return false
}

// String says what a status shows: "cgroups on: DIR (memory, pids)", and which controllers asked
// for are missing and why: "cgroups on: DIR (pids; no memory: not offered by DIR)".
func (t *Tree) String() string {
	var b strings.Builder
	b.WriteString("cgroups on: ")
	b.WriteString(t.dir)
	b.WriteString(" (")
	if len(t.controllers) == 0 {
		b.WriteString("no controllers")
	} else {
		b.WriteString(strings.Join(t.controllers, ", "))
	}
	// "memory: R holds processes", "pids: R holds processes": said once, for both.
	var reasons []string
	byReason := map[string][]string{}
	for _, m := range t.missing {
		c, reason, _ := strings.Cut(m, ": ")
		if byReason[reason] == nil {
			reasons = append(reasons, reason)
		}
		byReason[reason] = append(byReason[reason], c)
	}
	for _, r := range reasons {
		b.WriteString("; no ")
		b.WriteString(strings.Join(byReason[r], ", "))
		b.WriteString(": ")
		b.WriteString(r)
	}
	b.WriteString(")")
	return b.String()
}
