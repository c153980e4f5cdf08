package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/forkd/forkd/internal/cgroup"
	"github.com/forkd/forkd/internal/supervisor"
	"github.com/forkd/forkd/pkg/config"
)

// openCgroups gives forkd its cgroup tree where the config and the system let it (the cgroups
// block): the tree, or nil, and the status's one line about it ("on: DIR (memory, pids)", "off
// (REASON)"). Only cgroups.mode = "on" makes their absence an error.
func openCgroups(c config.Cgroups, logger *slog.Logger) (*cgroup.Tree, string, error) {
	if c.Mode == config.CgroupsOff {
		return nil, `off (cgroups.mode = "off")`, nil
	}
	tree, err := cgroup.Open(cgroup.Options{})
	var u *cgroup.Unavailable
	switch {
	case errors.As(err, &u) && c.Mode == config.CgroupsOn:
		return nil, "", fmt.Errorf(`cgroups.mode = "on", but forkd may not create cgroups: %s`, u.Reason)
	case errors.As(err, &u):
		logger.Info("the workers run without cgroups of their own: "+u.Reason, "event", "cgroups")
		return nil, "off (" + u.Reason + ")", nil
	case err != nil:
		return nil, "", err
	}
	line := strings.TrimPrefix(tree.String(), "cgroups ")
	if (c.MemoryMax != 0 || c.MemoryHigh != 0) && !tree.Has("memory") {
		if c.Mode == config.CgroupsOn {
			return nil, "", fmt.Errorf("cgroups.memory_max and memory_high need the memory controller, which the workers' cgroups do not have (%s)", line)
		}
		logger.Warn("cgroups.memory_max and memory_high are not applied: the workers' cgroups have no memory controller ("+line+")", "event", "cgroups")
		line += "; memory limits not applied"
	}
	logger.Info("each worker runs in a cgroup of its own, below "+tree.Dir(), "event", "cgroups", "cgroups", line)
	return tree, line, nil
}

// workerCgroups is the set of the workers' cgroups in tree, nil without a tree. After a hot
// restart, the adopted workers' cgroups are theirs again; any other left in the tree is removed
// once empty.
func workerCgroups(tree *cgroup.Tree, c config.Cgroups, adopt *supervisor.Handover) *cgroup.Set {
	if tree == nil {
		return nil
	}
	var adopted []uint64
	if adopt != nil {
		for _, p := range adopt.Procs {
			adopted = append(adopted, uint64(p.Worker))
		}
	}
	return cgroup.NewSet(tree, cgroupLimits(tree, c), adopted)
}

// cgroupLimits are the workers' limits from the config, those the tree can apply.
func cgroupLimits(tree *cgroup.Tree, c config.Cgroups) cgroup.Limits {
	if !tree.Has("memory") {
		return cgroup.Limits{}
	}
	return cgroup.Limits{MemoryMax: c.MemoryMax, MemoryHigh: c.MemoryHigh}
}
