package main

// This file is forkctl's only use of pkg/config: checking a file, reading the control socket from
// one, and the default socket.

import (
	"io"

	"github.com/forkd/forkd/pkg/config"
)

// exitConfig is the exit code for an invalid config file (EX_CONFIG), as for forkd itself.
const exitConfig = config.ExitConfig

// checkConfigFile validates the config file at path, prints "ok" or its diagnostics to w, and
// returns the exit code: 0, or exitConfig.
func checkConfigFile(path string, w io.Writer) int {
	return config.Check(path, w)
}

// socketFromConfigFile returns the control socket of the forkd configured by the file at path,
// without validating the rest of the file.
func socketFromConfigFile(path string) (string, error) {
	return config.ControlSocketOf(path)
}

// defaultSocket is the control socket of a forkd started without a config file, whose instance
// name is "forkd".
func defaultSocket() string {
	return config.DefaultControlSocket("forkd")
}
