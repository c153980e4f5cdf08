// Package restart owns forkd's rollouts: phased restart (workers replaced one by one with new
// code, on systemctl reload) and hot restart (the master re-execs itself in place, keeping its
// PID, its listeners and its workers). It is being built; see docs/architecture.md.
package restart
