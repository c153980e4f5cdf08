// Package restart owns the transport of forkd's hot restart: how the master, about to exec a new
// image of itself in place (same PID), hands that image its state and its open descriptors. The
// state travels as JSON in a memfd whose number is in FORKD_HANDOVER_FD; descriptors survive the
// exec because their close-on-exec flag is cleared just before it. What the state holds is the
// cluster's business (pkg/cluster); this package only carries it.
//
// The new image finds the handover with Receive. Not being handed over anything is an answer
// (false), not an error: that is a normal start.
package restart

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// EnvHandoverFD names the memfd holding the handover.
const EnvHandoverFD = "FORKD_HANDOVER_FD"

// Version is the handover format this build writes and reads. A hot restart onto a binary that
// speaks another version is refused before the exec (see HandoverVersionArg).
const Version = 3

// HandoverVersionArg makes forkd print the handover Version it reads and exit: the old image asks
// the new binary before exec'ing it.
const HandoverVersionArg = "__forkd-handover-version"

// Send writes v as JSON into a new memfd and returns its descriptor, not close-on-exec, with the
// environment entry that names it for the new image. Close the fd if the exec does not happen.
func Send(v any) (fd int, env string, err error) {
	b, err := json.Marshal(v)
	if err != nil {
		return -1, "", fmt.Errorf("restart: encode the handover: %w", err)
	}
	fd, err = unix.MemfdCreate("forkd-handover", 0)
	if err != nil {
		return -1, "", fmt.Errorf("restart: memfd: %w", err)
	}
	for off := 0; off < len(b); {
		n, err := unix.Pwrite(fd, b[off:], int64(off))
		if err != nil {
			unix.Close(fd)
			return -1, "", fmt.Errorf("restart: write the handover: %w", err)
		}
		off += n
	}
	return fd, EnvHandoverFD + "=" + strconv.Itoa(fd), nil
}

// Receive reads the handover the previous image of this process left, into v. It returns:
//   - (false, nil): there is none (FORKD_HANDOVER_FD unset): a normal start;
//   - (true, nil): v holds it; the memfd is closed and FORKD_HANDOVER_FD unset, so workers and
//     later images never see it;
//   - (true, err): there was one but it cannot be read (another format, a corrupt file).
func Receive(v any) (bool, error) {
	s, ok := os.LookupEnv(EnvHandoverFD)
	if !ok {
		return false, nil
	}
	os.Unsetenv(EnvHandoverFD)
	fd, err := strconv.Atoi(s)
	if err != nil || fd < 0 {
		return true, fmt.Errorf("restart: %s=%q is not a descriptor", EnvHandoverFD, s)
	}
	f := os.NewFile(uintptr(fd), "forkd-handover")
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, 0, 1<<30))
	if err != nil {
		return true, fmt.Errorf("restart: read the handover: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return true, fmt.Errorf("restart: decode the handover: %w", err)
	}
	return true, nil
}

// ErrIncompatible: the new binary cannot take over (another handover Version, or it does not run).
var ErrIncompatible = errors.New("restart: the new forkd binary cannot take over")
