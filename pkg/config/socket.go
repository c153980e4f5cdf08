package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclparse"
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

// ControlSocketOf returns the control socket of the forkd configured by the file at path, reading
// only what decides it (name and control.socket). Unlike LoadFile it does not validate the rest, so
// forkctl finds a running forkd even where the app's command would not resolve (another PATH,
// another working directory).
func ControlSocketOf(path string) (string, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("config: read %s: %w", path, err)
	}
	file, diags := hclparse.NewParser().ParseHCL(src, path)
	if diags.HasErrors() {
		return "", &DiagnosticsError{File: path, Diagnostics: diags, Files: map[string]*hcl.File{path: file}}
	}
	var partial struct {
		Name    *string `hcl:"name,optional"`
		Control *struct {
			Socket *string  `hcl:"socket,optional"`
			Rest   hcl.Body `hcl:",remain"`
		} `hcl:"control,block"`
		Rest hcl.Body `hcl:",remain"`
	}
	if diags := gohcl.DecodeBody(file.Body, nil, &partial); diags.HasErrors() {
		return "", &DiagnosticsError{File: path, Diagnostics: diags, Files: map[string]*hcl.File{path: file}}
	}
	if partial.Control != nil && partial.Control.Socket != nil && *partial.Control.Socket != "" {
		socket := *partial.Control.Socket
		if !filepath.IsAbs(socket) {
			dir, err := filepath.Abs(filepath.Dir(path))
			if err != nil {
				return "", fmt.Errorf("config: %w", err)
			}
			socket = filepath.Join(dir, socket)
		}
		return socket, nil
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	if partial.Name != nil && *partial.Name != "" {
		name = *partial.Name
	}
	return DefaultControlSocket(name), nil
}
