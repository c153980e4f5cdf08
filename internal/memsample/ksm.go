package memsample

import (
	"errors"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// KSMDir is where the kernel shows its same-page merging daemon, ksmd (run, pages_to_scan, ...).
const KSMDir = "/sys/kernel/mm/ksm"

// The problems KSMProblem reports: without them, memory.ksm's opt-in (PR_SET_MEMORY_MERGE) is
// made but merges nothing.
const (
	KSMNoKernelSupport = "this kernel has no PR_SET_MEMORY_MERGE (KSM for whole processes needs Linux 6.4 or later, built with CONFIG_KSM): the workers run without KSM"
	KSMDaemonOff       = "KSM is enabled for workers but the kernel's ksmd is not running: echo 1 > " + KSMDir + "/run"
)

// KSMProblem says why memory.ksm would merge nothing on this machine: the kernel cannot opt a
// process in (no /sys/kernel/mm/ksm, or prctl(PR_GET_MEMORY_MERGE) fails with EINVAL), or ksmd
// is not running (its run file is not 1). It returns "" when KSM can work. It asks about the
// calling process only, and changes nothing.
func KSMProblem() string {
	return ksmProblem(KSMDir, func() error {
		_, err := unix.PrctlRetInt(unix.PR_GET_MEMORY_MERGE, 0, 0, 0, 0)
		return err
	})
}

func ksmProblem(dir string, getMerge func() error) string {
	if _, err := os.Stat(dir); err != nil {
		return KSMNoKernelSupport
	}
	if err := getMerge(); errors.Is(err, unix.EINVAL) {
		return KSMNoKernelSupport
	}
	run, err := os.ReadFile(filepath.Join(dir, "run"))
	if err != nil || strings.TrimSpace(string(run)) != "1" {
		// 0 is stopped, 2 is stopped after unmerging everything.
		return KSMDaemonOff
	}
	return ""
}
