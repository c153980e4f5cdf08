package activation_test

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/proctest"
	"github.com/forkd/forkd/pkg/activation"
)

// The test binary impersonates the processes these tests need, as os/exec's tests do: the
// helpers below, chosen by helperEnv.
const helperEnv = "FORKD_ACTIVATION_TEST_HELPER"

const (
	helperFromSystemd = "from-systemd" // a master under systemd: reports FromSystemd's result
	helperOpen        = "open"         // the same through Open
)

// unset marks an environment variable that is not set in a report.
const unset = proctest.Unset

func TestMain(m *testing.M) {
	switch mode := os.Getenv(helperEnv); mode {
	case "":
		// Whatever descriptors the test process inherited without close-on-exec (from a shell or
		// a CI runner) would leak into every child and spoil the checks on what a worker
		// inherits. A forkd master must do the same at startup.
		if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
			fmt.Fprintf(os.Stderr, "close_range: %v\n", err)
			os.Exit(2)
		}
		os.Exit(m.Run())
	case helperFromSystemd, helperOpen:
		os.Exit(runFromSystemd(mode))
	default:
		fmt.Fprintf(os.Stderr, "unknown %s=%q\n", helperEnv, mode)
		os.Exit(2)
	}
}

// systemdReport is what the from-systemd and open helpers saw.
type systemdReport struct {
	PID       int
	Listeners []activation.Listener
	Activated bool
	Err       string
	EnvAfter  map[string]string
	// CloseOnExec is, for each descriptor LISTEN_FDS announced, whether it is close-on-exec after
	// the call.
	CloseOnExec map[int]bool
}

func runFromSystemd(mode string) int {
	report := systemdReport{PID: os.Getpid(), EnvAfter: map[string]string{}, CloseOnExec: map[int]bool{}}
	announced, _ := strconv.Atoi(os.Getenv(activation.EnvListenFDs))

	var err error
	if mode == helperOpen {
		report.Listeners, report.Activated, err = activation.Open(openConfig)
	} else {
		report.Listeners, err = activation.FromSystemd()
	}
	if err != nil {
		report.Err = err.Error()
	}
	for _, key := range []string{activation.EnvListenPID, activation.EnvListenFDs, activation.EnvListenFDNames} {
		report.EnvAfter[key] = proctest.Getenv(key)
	}
	for fd := activation.ListenFDsStart; fd < activation.ListenFDsStart+announced; fd++ {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		report.CloseOnExec[fd] = err == nil && flags&unix.FD_CLOEXEC != 0
	}
	if err := json.NewEncoder(os.Stdout).Encode(report); err != nil {
		panic(err)
	}
	return 0
}

// baseEnv is the environment every child starts from.
func baseEnv(helper string) []string { return proctest.Env(helperEnv, helper) }
