package config

import (
	"fmt"
	"os"
	"path/filepath"
)

// euid returns the effective user ID; tests replace it to reach the non-root branch of
// DefaultControlSocket.
var euid = os.Geteuid

// DefaultControlSocket returns where forkd instance name puts its control socket when the config
// does not say: /run/forkd/NAME/control.sock for root (as under systemd),
// $XDG_RUNTIME_DIR/forkd/NAME/control.sock for other users, or
// $TMPDIR/forkd-UID/NAME/control.sock when XDG_RUNTIME_DIR is unset. forkctl computes the same path
// from the same name, so the two find each other without configuration.
func DefaultControlSocket(name string) string {
	uid := euid()
	if uid == 0 {
		return filepath.Join("/run/forkd", name, "control.sock")
	}
	// The XDG Base Directory spec says to ignore a relative XDG_RUNTIME_DIR.
	if dir := os.Getenv("XDG_RUNTIME_DIR"); filepath.IsAbs(dir) {
		return filepath.Join(dir, "forkd", name, "control.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("forkd-%d", uid), name, "control.sock")
}
