package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDiagnosticsErrorSummary(t *testing.T) {
	at := &hcl.Range{Filename: "demo.hcl", Start: hcl.Pos{Line: 3, Column: 13}, End: hcl.Pos{Line: 3, Column: 17}}
	problem := func(summary, detail string, subject *hcl.Range) *hcl.Diagnostic {
		return &hcl.Diagnostic{Severity: hcl.DiagError, Summary: summary, Detail: detail, Subject: subject}
	}
	tests := []struct {
		name  string
		diags hcl.Diagnostics
		want  string
	}{
		{"one", hcl.Diagnostics{problem("workers: 0 is out of range 1..1024", "", at)},
			"config: demo.hcl:3,13-17: workers: 0 is out of range 1..1024"},
		{"two", hcl.Diagnostics{problem("a", "", at), problem("b", "", at)},
			"config: demo.hcl:3,13-17: a (and 1 more error)"},
		{"three", hcl.Diagnostics{problem("a", "", at), problem("b", "", at), problem("c", "", nil)},
			"config: demo.hcl:3,13-17: a (and 2 more errors)"},
		{"HCL's detail is kept on one line", hcl.Diagnostics{problem("Unsupported argument", "An argument\nnamed \"x\".", at)},
			`config: demo.hcl:3,13-17: Unsupported argument: An argument named "x".`},
		{"no subject", hcl.Diagnostics{problem("name: bad", "", nil)},
			"config: demo.hcl: name: bad"},
		{"warnings are not errors", hcl.Diagnostics{{Severity: hcl.DiagWarning, Summary: "w"}, problem("e", "", at)},
			"config: demo.hcl:3,13-17: e"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := &DiagnosticsError{File: "demo.hcl", Diagnostics: tt.diags}
			assert.Equal(t, tt.want, err.Error())
		})
	}
}

// TestDiagnosticsErrorWriteToWithoutSource: a diagnostic whose file is not in Files still prints
// its location.
func TestDiagnosticsErrorWriteToWithoutSource(t *testing.T) {
	at := &hcl.Range{Filename: "demo.hcl", Start: hcl.Pos{Line: 3, Column: 13}, End: hcl.Pos{Line: 3, Column: 17}}
	err := &DiagnosticsError{File: "demo.hcl", Diagnostics: hcl.Diagnostics{
		{Severity: hcl.DiagError, Summary: "workers: bad", Subject: at},
	}}
	var sb strings.Builder
	n, werr := err.WriteTo(&sb)
	require.NoError(t, werr)
	assert.Equal(t, int64(sb.Len()), n)
	assert.Equal(t, "Error: demo.hcl:3,13-17: workers: bad\n\n  on demo.hcl line 3:\n  (source code not available)\n\n", sb.String())
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestDiagnosticsErrorWriteToFails(t *testing.T) {
	err := &DiagnosticsError{File: "demo.hcl", Diagnostics: hcl.Diagnostics{
		{Severity: hcl.DiagError, Summary: "workers: bad"},
	}}
	_, werr := err.WriteTo(failingWriter{})
	assert.ErrorContains(t, werr, "disk full")
}
