package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestCheck(t *testing.T) {
	tests := []struct {
		name     string
		src      string // "" for no file
		wantCode int
		want     string
	}{
		{"ok", "command = [\"server\"]\nworkers = 4\nlisten \"http\" { address = \"tcp://:8080\" }",
			0, "demo.hcl: ok (4 workers, 1 listener, readiness notify)\n"},
		{"ok, plural", "command = [\"server\"]\nworkers = 1\nreadiness = \"started\"\n" +
			"listen \"a\" { address = \"tcp://:1\" }\nlisten \"b\" { address = \"tcp://:2\" }",
			0, "demo.hcl: ok (1 worker, 2 listeners, readiness started)\n"},
		{"ok, no listeners", "command = [\"server\"]\nworkers = 2",
			0, "demo.hcl: ok (2 workers, 0 listeners, readiness notify)\n"},
		{"bad", "command = [\"server\"]\nworkers = 0\nreadiness = \"x\"",
			ExitConfig, "" +
				"Error: demo.hcl:2,11-12: workers: 0 is out of range 1..1024\n" +
				"\n" +
				"  on demo.hcl line 2:\n" +
				"   2: workers = 0\n" +
				"\n" +
				"Error: demo.hcl:3,13-16: readiness: \"x\" is not one of \"notify\", \"started\"\n" +
				"\n" +
				"  on demo.hcl line 3:\n" +
				"   3: readiness = \"x\"\n" +
				"\n" +
				"demo.hcl: 2 errors\n"},
		{"missing file", "", ExitConfig, "config: read demo.hcl: no such file or directory\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sandbox(t)
			if tt.src != "" {
				writeConfig(t, "demo.hcl", tt.src)
			}
			var out strings.Builder
			assert.Equal(t, tt.wantCode, Check("demo.hcl", &out))
			assert.Equal(t, tt.want, out.String())
		})
	}
}
