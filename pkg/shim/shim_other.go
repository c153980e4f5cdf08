//go:build !linux

package shim

import (
	"fmt"
	"os"
)

// Run prints why it cannot run and exits with ExitCannotExec: forkd supports only Linux.
func Run(args []string) {
	fmt.Fprintln(os.Stderr, "forkd-shim: workers are only supported on Linux")
	os.Exit(ExitCannotExec)
}
