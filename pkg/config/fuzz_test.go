package config

import (
	"errors"
	"io"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics, that every error it returns can be printed, and that a
// nil error means a complete, valid Config: the promise the rest of forkd relies on to never check
// again. The checks below restate the rules independently of validate.
func FuzzParse(f *testing.F) {
	sandbox(f)
	f.Add([]byte(fullConfig))
	f.Add([]byte(overriddenConfig))
	f.Add([]byte(`command = ["server"]`))
	for _, tt := range parseProblemTests {
		f.Add([]byte(tt.src))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := Parse(src, "fuzz.hcl")
		if err != nil {
			if cfg != nil {
				t.Fatalf("Parse returned both a config and %v", err)
			}
			_ = err.Error()
			var diagErr *DiagnosticsError
			if !errors.As(err, &diagErr) {
				t.Fatalf("Parse returned %T, want *DiagnosticsError: %v", err, err)
			}
			if _, err := diagErr.WriteTo(io.Discard); err != nil {
				t.Fatalf("WriteTo: %v", err)
			}
			return
		}
		checkValid(t, cfg)
	})
}

// checkValid fails t unless cfg keeps the promises of a Config returned without error.
func checkValid(t *testing.T, cfg *Config) {
	t.Helper()
	if cfg.Name == "" || cfg.Name == "." || cfg.Name == ".." {
		t.Errorf("Name %q", cfg.Name)
	}
	for _, r := range cfg.Name {
		if !isNameChar(r) {
			t.Errorf("Name %q contains %q", cfg.Name, r)
		}
	}
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		t.Errorf("Command %q", cfg.Command)
	}
	if cfg.Workers < 1 || cfg.Workers > MaxWorkers {
		t.Errorf("Workers %d", cfg.Workers)
	}
	if cfg.Readiness != ReadyOnNotify && cfg.Readiness != ReadyOnStart {
		t.Errorf("Readiness %q", cfg.Readiness)
	}
	names := map[string]bool{}
	for _, l := range cfg.Listeners {
		if names[l.Name] || checkFDName(l.Name) != nil {
			t.Errorf("listener name %q duplicate or invalid", l.Name)
		}
		names[l.Name] = true
		switch l.Network {
		case "tcp", "tcp4", "tcp6":
			if _, _, err := parseListenURL(l.URL()); err != nil || l.Mode != 0 {
				t.Errorf("listener %+v: %v", l, err)
			}
		case "unix":
			if l.Address == "" || len(l.Address) > maxUnixPath || l.ReusePort {
				t.Errorf("listener %+v", l)
			}
			if l.Address[0] != '@' && (!filepath.IsAbs(l.Address) || l.Mode > 0o777) {
				t.Errorf("listener %+v", l)
			}
		default:
			t.Errorf("listener %+v: network", l)
		}
		if l.Backlog < 1 {
			t.Errorf("listener %+v: backlog", l)
		}
	}
	if tm := cfg.Timeouts; tm.Boot <= 0 || tm.Worker < 0 || tm.Shutdown < 0 {
		t.Errorf("Timeouts %+v", tm)
	}
	if r := cfg.Restart; r.BackoffMin <= 0 || r.BackoffMax < r.BackoffMin || r.ResetAfter <= 0 {
		t.Errorf("Restart %+v", r)
	}
	if s := cfg.Control.Socket; !filepath.IsAbs(s) || len(s) > maxUnixPath {
		t.Errorf("Control.Socket %q", s)
	}
	switch cfg.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		t.Errorf("Log.Level %q", cfg.Log.Level)
	}
	switch cfg.Log.Format {
	case "auto", "text", "json", "journal":
	default:
		t.Errorf("Log.Format %q", cfg.Log.Format)
	}
}
