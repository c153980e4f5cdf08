// Package supervisor runs a cluster.Machine against real processes: it turns signals, reaped
// children, sd_notify datagrams, control-channel messages and control API requests into the
// machine's events, and carries out the machine's actions with syscalls (spawning through the shim,
// pidfds, process groups, the notify sockets, helpers and hooks, the hot restart's exec). It decides
// nothing: every rule of the cluster is the machine's.
package supervisor
