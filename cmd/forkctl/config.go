package main

// This file is forkctl's only use of pkg/config: checking a file, reading the control socket from
// one, the default socket, and instance names.

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

// defaultSocket is the control socket of forkd instance name when its config does not set one:
// "forkd" for a forkd started without a config file or --name.
func defaultSocket(name string) string {
	return config.DefaultControlSocket(name)
}

// checkInstanceName says what is wrong with an instance name given to --name, as forkd would.
func checkInstanceName(name string) error {
	return config.CheckName(name)
}
