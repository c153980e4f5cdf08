//go:build !linux

package activation

import "errors"

var errUnsupported = errors.New("activation: sockets are only supported on Linux")

// FromSystemd returns (nil, nil): only Linux has systemd.
func FromSystemd() ([]Listener, error) { return nil, nil }

// Bind always fails: forkd supports only Linux.
func Bind(ls []Spec) ([]Listener, error) { return nil, errUnsupported }
