//go:build !linux

package notify

import "errors"

// oobSize is the control data buffer's size: none, since there are no credentials to receive.
const oobSize = 0

// setPassCred fails: SO_PASSCRED is Linux's, and forkd cannot tell workers apart without it.
func setPassCred(fd int) error {
	return errors.New("notify: sender credentials (SO_PASSCRED) are only supported on Linux")
}

func parseControl(oob []byte) (pid, uid, gid int, fds []int) { return 0, -1, -1, nil }

func restrictMode(fd int) error {
	return errors.New("notify: socket modes are only supported on Linux")
}
