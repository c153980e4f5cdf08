package control

import (
	"errors"
	"net/http"
)

// Error is a failure the API reports to its client: an HTTP status code and a message for the
// operator. A Backend returns one to choose the status code; a Client returns one for every JSON
// error the server sends.
//
// Error's text is Message alone, without a "control:" prefix: it is the sentence the server meant
// forkctl to print, and Code, not the text, says what kind of failure it is.
type Error struct {
	// Code is the HTTP status code, 400..599.
	Code int
	// Message says what went wrong, for a human.
	Message string
}

func (e *Error) Error() string { return e.Message }

// Is reports whether target is an *Error with the same Code and Message, so a sentinel still
// matches after a round trip through the wire: errors.Is(err, control.ErrStopping) works on what a
// Client returns.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code && t.Message == e.Message
}

// Errors a Backend returns as they are (unwrapped, so that they survive the round trip for
// errors.Is; for a message with more detail, return a new *Error with the same Code).
var (
	// ErrStopping: forkd is stopping and takes no more commands that change it.
	ErrStopping = &Error{Code: http.StatusConflict, Message: "forkd is stopping"}
	// ErrBusy: another command is in progress (e.g. a rollout) and this one cannot run beside it.
	ErrBusy = &Error{Code: http.StatusConflict, Message: "forkd is busy with another command"}
	// ErrUnavailable: the backend is gone (the master's loop has exited) and cannot answer.
	ErrUnavailable = &Error{Code: http.StatusServiceUnavailable, Message: "forkd is shutting down and no longer answers commands"}
)

// ErrNotRunning is matched (errors.Is) by the error a Client returns when nothing answers on the
// control socket: "forkd is not running (no control socket at PATH)" or "... (nothing listening on
// PATH)". Like Error, its text has no prefix, because forkctl prints it as it is.
var ErrNotRunning = errors.New("forkd is not running")

// ErrAlreadyRunning is matched (errors.Is) by the error Listen returns when a live process
// already answers on the socket path.
var ErrAlreadyRunning = errors.New("control: forkd is already running")
