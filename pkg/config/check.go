package config

import (
	"errors"
	"fmt"
	"io"
)

// Check loads the config file at path and writes the verdict to w, for "forkd check CONFIG" and
// "forkctl check CONFIG". It returns the exit status: 0 after writing
// "PATH: ok (4 workers, 1 listener, readiness notify)", or ExitConfig after writing every problem
// found (see DiagnosticsError.WriteTo) or why the file could not be read.
func Check(path string, w io.Writer) int {
	cfg, err := LoadFile(path)
	var diagErr *DiagnosticsError
	switch {
	case errors.As(err, &diagErr):
		// A write error is not worth reporting: the exit status still says the config is bad.
		_, _ = diagErr.WriteTo(w)
		_, _ = fmt.Fprintf(w, "%s: %s\n", path, plural(len(diagErr.errorDiags()), "error"))
		return ExitConfig
	case err != nil:
		_, _ = fmt.Fprintln(w, err)
		return ExitConfig
	}
	_, _ = fmt.Fprintf(w, "%s: ok (%s, %s, readiness %s)\n", path,
		plural(cfg.Workers, "worker"), plural(len(cfg.Listeners), "listener"), cfg.Readiness)
	return 0
}

// plural returns "1 worker", "4 workers".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
