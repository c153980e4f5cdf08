// Package version reports which build of forkd is running: the release set at link time, or the
// VCS revision Go recorded in the binary.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set at link time: -ldflags "-X github.com/forkd/forkd/internal/version.Version=1.2.3".
var Version = "dev"

// String returns "forkd VERSION (REVISION, GOVERSION)", naming the commit when Go recorded one,
// else "forkd VERSION (GOVERSION)".
func String() string { return Of("forkd") }

// Of returns String's line for another program of the project: Of("forkctl").
func Of(program string) string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return fmt.Sprintf("%s %s (%s, %s)", program, Version, s.Value[:12], runtime.Version())
			}
		}
	}
	return fmt.Sprintf("%s %s (%s)", program, Version, runtime.Version())
}
