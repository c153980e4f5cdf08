package config

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// withEUID makes DefaultControlSocket see uid as the effective user ID for the rest of the test.
func withEUID(t *testing.T, uid int) {
	saved := euid
	euid = func() int { return uid }
	t.Cleanup(func() { euid = saved })
}

func TestDefaultControlSocket(t *testing.T) {
	tests := []struct {
		name   string
		euid   int
		xdg    string
		tmpdir string
		want   string
	}{
		{"root", 0, "/run/user/0", "", "/run/forkd/demo/control.sock"},
		{"user with XDG_RUNTIME_DIR", 1000, "/run/user/1000", "", "/run/user/1000/forkd/demo/control.sock"},
		{"user without XDG_RUNTIME_DIR", 1000, "", "/var/tmp", "/var/tmp/forkd-1000/demo/control.sock"},
		{"user with a relative XDG_RUNTIME_DIR", 1000, "run/user", "/var/tmp", "/var/tmp/forkd-1000/demo/control.sock"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			withEUID(t, tt.euid)
			t.Setenv("XDG_RUNTIME_DIR", tt.xdg)
			t.Setenv("TMPDIR", tt.tmpdir)
			assert.Equal(t, tt.want, DefaultControlSocket("demo"))
		})
	}
}

// TestDefaultControlSocketFollowsName: the default socket is computed from the final name, so
// --name moves it, and forkctl --name finds it.
func TestDefaultControlSocketFollowsName(t *testing.T) {
	sandbox(t)
	withEUID(t, 0)
	path := writeConfig(t, "demo.hcl", `command = ["server"]`)

	cfg, err := LoadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "/run/forkd/demo/control.sock", cfg.Control.Socket)

	cfg, err = Load(Flags{Config: path, Name: "blue"})
	require.NoError(t, err)
	assert.Equal(t, "/run/forkd/blue/control.sock", cfg.Control.Socket)

	withEUID(t, 1000)
	cfg, err = LoadFile(path)
	require.NoError(t, err)
	assert.Equal(t, "/run/user/1000/forkd/demo/control.sock", cfg.Control.Socket)

	// The machine's real answer, as a smoke test of the euid seam.
	euid = os.Geteuid
	cfg, err = LoadFile(path)
	require.NoError(t, err)
	assert.True(t, filepath.IsAbs(cfg.Control.Socket))
}

func TestControlSocketOfReadsOnlyWhatDecidesIt(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The command does not exist: LoadFile would refuse the file, ControlSocketOf does not care.
	p := write("app.hcl", "command = [\"no-such-program\"]\ncontrol {\n  socket = \"run/ctl.sock\"\n}\n")
	got, err := ControlSocketOf(p)
	if err != nil || got != filepath.Join(dir, "run/ctl.sock") {
		t.Fatalf("ControlSocketOf = %q, %v", got, err)
	}
	p = write("web.hcl", "name = \"shop\"\ncommand = [\"x\"]\n")
	if got, err := ControlSocketOf(p); err != nil || got != DefaultControlSocket("shop") {
		t.Fatalf("ControlSocketOf = %q, %v; want the default for name shop", got, err)
	}
	p = write("api.hcl", "command = [\"x\"]\n")
	if got, err := ControlSocketOf(p); err != nil || got != DefaultControlSocket("api") {
		t.Fatalf("ControlSocketOf = %q, %v; want the default for the file's base name", got, err)
	}
	p = write("broken.hcl", "control {\n")
	var diags *DiagnosticsError
	if _, err := ControlSocketOf(p); !errors.As(err, &diags) {
		t.Fatalf("a file that does not parse: got %v, want diagnostics", err)
	}
}
