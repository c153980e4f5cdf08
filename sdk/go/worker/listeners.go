package worker

import (
	"fmt"
	"net"
	"slices"
)

// Listeners returns the listening sockets passed to this process, in file descriptor order (fd 3
// first), the order of forkd's listener blocks or of a systemd .socket unit's Listen= lines.
//
// The first call turns the passed descriptors into listeners and closes the descriptors, so they
// are not held twice. Every call returns the same listeners: closing one closes it for every
// caller, and serving on one from two places is the caller's choice.
//
// Outcomes:
//   - (listeners, nil): the passed sockets.
//   - (nil, nil): nothing was passed to this process; not running under forkd or socket
//     activation. A program that runs outside forkd too binds its own listener then.
//   - (nil, err): a passed descriptor is not a TCP or unix stream socket (a UDP socket or a FIFO
//     from a systemd .socket unit, say). No listener is returned then, and every call returns err.
func (w *Worker) Listeners() ([]net.Listener, error) {
	w.listenOnce.Do(w.convertListeners)
	return slices.Clone(w.listeners), w.listenErr
}

// ListenersByName returns the listeners of Listeners grouped by their names in LISTEN_FDNAMES
// (forkd's listener block labels, or a .socket unit's FileDescriptorName=, which defaults to the
// unit's name), each group in fd order. Sockets passed without LISTEN_FDNAMES are named "unknown",
// as sd_listen_fds_with_names(3) names them.
//
// Outcomes are those of Listeners, with an empty map for "nothing was passed".
func (w *Worker) ListenersByName() (map[string][]net.Listener, error) {
	w.listenOnce.Do(w.convertListeners)
	if w.listenErr != nil {
		return nil, w.listenErr
	}
	byName := make(map[string][]net.Listener, len(w.listeners))
	for i, l := range w.listeners {
		byName[w.names[i]] = append(byName[w.names[i]], l)
	}
	return byName, nil
}

// convertListeners makes a net.Listener of each passed file, runs once, and leaves the outcome in
// w.listeners and w.listenErr.
func (w *Worker) convertListeners() {
	listeners := make([]net.Listener, 0, len(w.listenFiles))
	for i, f := range w.listenFiles {
		// FileListener duplicates the descriptor; the original is no longer needed either way.
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			for _, made := range listeners {
				made.Close()
			}
			for _, rest := range w.listenFiles[i+1:] {
				rest.Close()
			}
			w.listenErr = fmt.Errorf("worker: passed fd %d (%s) is not a stream socket to accept on: %w",
				listenFDsStart+i, w.names[i], err)
			w.listenFiles = nil
			return
		}
		listeners = append(listeners, l)
	}
	w.listenFiles = nil
	if len(listeners) > 0 {
		w.listeners = listeners
	}
}
