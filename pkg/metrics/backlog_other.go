//go:build !linux

package metrics

// ReadBacklog fails: the accept queue is read with Linux's TCP_INFO and sock_diag.
func ReadBacklog(fd int) (Backlog, error) { return Backlog{}, ErrBacklogUnavailable }
