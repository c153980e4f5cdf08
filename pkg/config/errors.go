package config

import (
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// DiagnosticsError reports what is wrong with a config file: syntax errors, unknown or mistyped
// attributes, and values that fail validation, each located in the file. Load, LoadFile and Parse
// return it for problems in the file; problems in flags are plain errors.
type DiagnosticsError struct {
	// File is the config file the diagnostics are about.
	File string
	// Diagnostics holds one error per problem, sorted by position in the file. A diagnostic about
	// the file as a whole (such as a name derived from the file name) has no Subject and comes last.
	Diagnostics hcl.Diagnostics
	// Files holds the parsed sources by name, so WriteTo can print a snippet for each diagnostic.
	Files map[string]*hcl.File
}

// Error returns a one-line summary: the first problem, its location, and how many more there are.
func (e *DiagnosticsError) Error() string {
	problems := e.Problems()
	if len(problems) == 0 {
		return "config: " + e.File + ": invalid configuration"
	}
	msg := "config: " + problems[0]
	switch n := len(problems) - 1; n {
	case 0:
	case 1:
		msg += " (and 1 more error)"
	default:
		msg += fmt.Sprintf(" (and %d more errors)", n)
	}
	return msg
}

// Problems returns one line per error, without the source snippet: "demo.hcl:6,11-12: workers: 0
// is out of range 1..1024", for a log or a one-line reply.
func (e *DiagnosticsError) Problems() []string {
	var lines []string
	for _, d := range e.errorDiags() {
		line := e.location(d) + ": " + d.Summary
		if d.Detail != "" {
			// Diagnostics from HCL itself put the useful part in Detail ("An argument named "x"
			// is not expected here.").
			line += ": " + strings.Join(strings.Fields(d.Detail), " ")
		}
		lines = append(lines, line)
	}
	return lines
}

// WriteTo prints every diagnostic for a person to read: the location (file:line,column-column), the
// problem, and the source lines it is about. It implements io.WriterTo.
func (e *DiagnosticsError) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	// width 0: no wrapping, since the output often goes to the journal or a CI log rather than a
	// terminal; no color for the same reason.
	dw := hcl.NewDiagnosticTextWriter(cw, e.Files, 0, false)
	for _, d := range e.Diagnostics {
		// The text writer says "on demo.hcl line 6" but not the column; the range in the summary
		// line gives editors and people the exact place, and makes each problem greppable.
		located := *d
		located.Summary = e.location(d) + ": " + d.Summary
		if err := dw.WriteDiagnostic(&located); err != nil {
			return cw.n, err
		}
	}
	return cw.n, nil
}

// errorDiags returns the error diagnostics, leaving out warnings.
func (e *DiagnosticsError) errorDiags() hcl.Diagnostics {
	var errs hcl.Diagnostics
	for _, d := range e.Diagnostics {
		if d.Severity == hcl.DiagError {
			errs = append(errs, d)
		}
	}
	return errs
}

// location is "demo.hcl:6,11-12" for a diagnostic with a subject, the file name otherwise.
func (e *DiagnosticsError) location(d *hcl.Diagnostic) string {
	if d.Subject != nil {
		return d.Subject.String()
	}
	return e.File
}

// countingWriter counts the bytes written through it, for io.WriterTo's return value.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
