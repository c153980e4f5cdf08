package chaos

import (
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

var (
	seedFlag    = flag.Uint64("chaos.seed", 0, "the seed that chooses every fault and its moment (0: a new one, printed)")
	fullFlag    = flag.Bool("chaos.full", false, "run every fault on every runner, -chaos.rounds times (make chaos), not the short version")
	roundsFlag  = flag.Int("chaos.rounds", 2, "with -chaos.full: rounds of each fault per runner")
	runnersFlag = flag.String("chaos.runners", "", "comma-separated runners to use (default: all)")
	faultsFlag  = flag.String("chaos.faults", "", "comma-separated faults to inject (default: all)")
	keepFlag    = flag.Bool("chaos.keep", false, "keep every cluster's log directory, not only those of rounds with violations")
)

// bin holds what TestMain builds: forkd, forkctl, the hello worker, and a copy of this test binary
// that the helpers run as (helperEnv). The directory is world-readable, since the flooders run as
// another user.
var (
	bin  string
	repo string
)

// helperEnv names the helper a copy of this test binary plays instead of running the tests (the
// way os/exec's tests impersonate other programs): see helpers_test.go.
const helperEnv = "FORKD_CHAOS_HELPER"

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		os.Exit(runHelper(name, os.Args[1:]))
	}
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	var err error
	if repo, err = filepath.Abs("../.."); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if bin, err = os.MkdirTemp("", "forkd-chaos-bin-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bin)
	if err := os.Chmod(bin, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Plain builds, without -race: the suite measures the master's memory, which the race
	// detector's shadow memory would blur, and runs many rounds.
	for name, pkg := range map[string]string{
		"forkd":   "../../cmd/forkd",
		"forkctl": "../../cmd/forkctl",
		"hello":   "../../examples/hello",
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, name), pkg)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", name, err)
			return 1
		}
	}
	if err := copyExecutable(filepath.Join(bin, "helper")); err != nil {
		fmt.Fprintln(os.Stderr, "copy the test binary for the helpers:", err)
		return 1
	}
	// Everything forkd starts stays in this process's tree, even after the master dies: its
	// orphans come to the suite, which finds them by ancestry (processes_test.go).
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
		return 1
	}
	return m.Run()
}

// copyExecutable copies this test binary to path, where a user other than root can run it.
func copyExecutable(path string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	src, err := os.Open(self)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}
