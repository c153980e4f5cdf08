//go:build !linux

package activation

import (
	"errors"
	"fmt"
	"os"

	"github.com/forkd/forkd/pkg/config"
)

var errUnsupported = errors.New("activation: sockets are only supported on Linux")

// FromSystemd returns (nil, nil): only Linux has systemd.
func FromSystemd() ([]Listener, error) { return nil, nil }

// Bind always fails: forkd supports only Linux.
func Bind(ls []config.Listener) ([]Listener, error) { return nil, errUnsupported }

// RunShim prints why it cannot run and exits with ShimExitCannotExec.
func RunShim(args []string) {
	fmt.Fprintf(os.Stderr, "forkd-shim: %v\n", errUnsupported)
	os.Exit(ShimExitCannotExec)
}
