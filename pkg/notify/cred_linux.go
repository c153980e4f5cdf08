package notify

import "golang.org/x/sys/unix"

// scmMaxFD is the most descriptors one datagram can carry (SCM_MAX_FD in the kernel).
const scmMaxFD = 253

// oobSize fits the credentials and the most descriptors a sender can pass. Should a datagram
// carry more control data than that, the kernel closes what does not fit rather than install it.
var oobSize = unix.CmsgSpace(unix.SizeofUcred) + unix.CmsgSpace(scmMaxFD*4)

func setPassCred(fd int) error {
	return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
}

// restrictMode gives a socket not yet bound the mode 0600, which bind(2) then gives its file
// (masked by the umask, which cannot widen it).
func restrictMode(fd int) error {
	return unix.Fchmod(fd, 0o600)
}

// parseControl returns the sender's credentials from a datagram's control data (0, -1, -1 when it
// has none), and closes every descriptor passed with it.
//
// It handles one control message at a time, so that the descriptors of every message before a
// malformed one are still closed. (The kernel writes well-formed ones, even when it cuts them
// short for lack of space, with MSG_CTRUNC.)
func parseControl(oob []byte) (pid, uid, gid int, fds []int) {
	pid, uid, gid = 0, -1, -1
	for rest := oob; len(rest) >= unix.CmsgLen(0); {
		header, data, remainder, err := unix.ParseOneSocketControlMessage(rest)
		if err != nil {
			break
		}
		rest = remainder
		if header.Level != unix.SOL_SOCKET {
			continue
		}
		m := unix.SocketControlMessage{Header: header, Data: data}
		switch header.Type {
		case unix.SCM_CREDENTIALS:
			if cred, err := unix.ParseUnixCredentials(&m); err == nil {
				pid, uid, gid = int(cred.Pid), int(cred.Uid), int(cred.Gid)
			}
		case unix.SCM_RIGHTS:
			passed, _ := unix.ParseUnixRights(&m)
			fds = append(fds, passed...)
		}
	}
	return pid, uid, gid, fds
}
