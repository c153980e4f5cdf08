package config

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// sandbox makes a directory the tests can point configs at and changes into it, so relative paths
// in test configs (and the locations in their diagnostics) do not depend on where the temporary
// directory is. It holds:
//
//	app/            a directory, for directory = "app"
//	bin/server      an executable, found via PATH (set to bin/ only) or as "bin/server"
//	bin/notexec     a file without execute permission
//	app/run         an executable inside app/, for directory = "app" with command ["./run"]
//	file            a regular file, for directory = "file"
func sandbox(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	t.Chdir(dir)
	mustWrite(t, filepath.Join(dir, "bin", "server"), "#!/bin/sh\n", 0o755)
	mustWrite(t, filepath.Join(dir, "bin", "notexec"), "#!/bin/sh\n", 0o644)
	mustWrite(t, filepath.Join(dir, "app", "run"), "#!/bin/sh\n", 0o755)
	mustWrite(t, filepath.Join(dir, "file"), "", 0o644)
	t.Setenv("PATH", filepath.Join(dir, "bin"))
	// Keep DefaultControlSocket's answer independent of the machine running the tests.
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	t.Setenv("RUNTIME_DIRECTORY", "")
	return dir
}

func mustWrite(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// writeConfig writes an HCL config file into the current directory.
func writeConfig(t *testing.T, name, src string) string {
	t.Helper()
	mustWrite(t, name, src, 0o644)
	return name
}

// diagnosticsText returns what WriteTo prints for err, or fails the test if err is not a
// *DiagnosticsError.
func diagnosticsText(t *testing.T, err error) string {
	t.Helper()
	var diagErr *DiagnosticsError
	if !errors.As(err, &diagErr) {
		t.Fatalf("error %v (%T) is not a *DiagnosticsError", err, err)
	}
	var sb strings.Builder
	n, werr := diagErr.WriteTo(&sb)
	if werr != nil {
		t.Fatalf("WriteTo: %v", werr)
	}
	if int(n) != sb.Len() {
		t.Errorf("WriteTo returned %d bytes, wrote %d", n, sb.Len())
	}
	return sb.String()
}

// defaultWorkers is what workers defaults to on this machine.
func defaultWorkers() int { return min(runtime.NumCPU(), MaxWorkers) }
