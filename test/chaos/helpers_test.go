package chaos

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Helpers are processes the suite runs as another user: a copy of this test binary (bin/helper)
// that, with helperEnv set, plays the helper named there instead of running tests.

var helperCommands = map[string]func(args []string) (string, error){
	"flood-notify":  floodNotify,
	"flood-control": floodControl,
}

func runHelper(name string, args []string) int {
	run, ok := helperCommands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "chaos helper: no helper %q\n", name)
		return 2
	}
	summary, err := run(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "chaos helper %s: %v\n", name, err)
		return 1
	}
	fmt.Println(summary)
	return 0
}

type helper struct {
	cmd  *exec.Cmd
	out  strings.Builder
	done chan error
}

// startHelper runs the helper name as the user nobody.
func startHelper(name string, args ...string) (*helper, error) {
	u, err := user.Lookup("nobody")
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return startHelperAs(&syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, name, args...)
}

// startLocalHelper runs the helper name as the suite's own user, which is forkd's: a process
// that may reach every socket forkd binds, but is not a worker nor a worker's descendant.
func startLocalHelper(name string, args ...string) (*helper, error) {
	return startHelperAs(nil, name, args...)
}

func startHelperAs(cred *syscall.Credential, name string, args ...string) (*helper, error) {
	h := &helper{cmd: exec.Command(filepath.Join(bin, "helper"), args...), done: make(chan error, 1)}
	h.cmd.Env = []string{helperEnv + "=" + name, "PATH=/usr/bin:/bin"}
	h.cmd.Dir = "/"
	h.cmd.Stdout, h.cmd.Stderr = &h.out, &h.out
	if cred != nil {
		h.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	if err := startChild(h.cmd); err != nil {
		return nil, err
	}
	go func() {
		err := h.cmd.Wait()
		forgetChild(h.cmd.Process.Pid)
		h.done <- err
	}()
	return h, nil
}

// wait returns the helper's summary line once it has exited, killing it after within.
func (h *helper) wait(within time.Duration) (string, error) {
	select {
	case err := <-h.done:
		out := strings.TrimSpace(h.out.String())
		if err != nil {
			return out, fmt.Errorf("%v: %s", err, out)
		}
		return out, nil
	case <-time.After(within):
		h.cmd.Process.Kill()
		<-h.done
		return "", fmt.Errorf("the helper did not end within %s", within)
	}
}

// floodArgs are a flood helper's arguments: TARGET DURATION SEED.
func floodArgs(args []string) (target string, d time.Duration, r *rand.Rand, err error) {
	if len(args) != 3 {
		return "", 0, nil, fmt.Errorf("want TARGET DURATION SEED, got %q", args)
	}
	if d, err = time.ParseDuration(args[1]); err != nil {
		return "", 0, nil, err
	}
	seed, err := strconv.ParseUint(args[2], 10, 64)
	if err != nil {
		return "", 0, nil, err
	}
	return args[0], d, rand.New(rand.NewPCG(seed, 0)), nil
}

// notifyPayloads is what a hostile sender might say: every state a worker reports, absurd values,
// garbage, and a long datagram.
var notifyPayloads = [][]byte{
	[]byte("READY=1"),
	[]byte("WATCHDOG=1"),
	[]byte("STOPPING=1"),
	[]byte("STATUS=flooded"),
	[]byte("WATCHDOG=trigger"),
	[]byte("X_FORKD_REQUESTS=18446744073709551615"),
	[]byte("READY=1\nSTATUS=not a worker\nMAINPID=1"),
	{0xff, 0xfe, 0x00, '=', '\n'},
	[]byte("STATUS=" + strings.Repeat("x", 4000)),
}

// floodNotify sends sd_notify datagrams to the socket as fast as it can for the duration; a
// sender that cannot even reach the socket keeps trying. Its summary starts with the count sent:
// "N datagrams sent". It exits only once the master has read what it sent (or 10s after the
// flood), so that forkd can trace every datagram to it: a datagram whose sender is gone when it is
// read is its socket's worker's (only a worker's processes are expected to know its socket).
func floodNotify(args []string) (string, error) {
	target, d, r, err := floodArgs(args)
	if err != nil {
		return "", err
	}
	addr := &net.UnixAddr{Name: target, Net: "unixgram"}
	var sent, refused int
	var lastErr error
	var unread bool
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		conn, err := net.DialUnix("unixgram", nil, addr)
		if err != nil {
			refused++
			lastErr = err
			continue
		}
		conn.SetWriteDeadline(end)
		for time.Now().Before(end) {
			if _, err := conn.Write(notifyPayloads[r.IntN(len(notifyPayloads))]); err != nil {
				refused++
				lastErr = err
				break
			}
			sent++
		}
		unread = !waitRead(conn, end.Add(10*time.Second))
		conn.Close()
	}
	summary := fmt.Sprintf("%d datagrams sent, %d refused", sent, refused)
	if unread {
		summary += ", some still unread at exit"
	}
	if lastErr != nil && !isTimeout(lastErr) {
		summary += fmt.Sprintf(" (%v)", lastErr)
	}
	return summary, nil
}

// waitRead waits until the receiver has read every datagram sent on conn (its send queue is
// empty: SIOCOUTQ), or until the deadline; it reports whether it has.
func waitRead(conn *net.UnixConn, deadline time.Time) bool {
	raw, err := conn.SyscallConn()
	if err != nil {
		return false
	}
	for {
		queued := -1
		raw.Control(func(fd uintptr) {
			if n, err := unix.IoctlGetInt(int(fd), unix.SIOCOUTQ); err == nil {
				queued = n
			}
		})
		if queued == 0 {
			return true
		}
		if queued < 0 || time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// floodControl connects to the control socket and asks for the status, as fast as it can for the
// duration.
func floodControl(args []string) (string, error) {
	target, d, _, err := floodArgs(args)
	if err != nil {
		return "", err
	}
	var refused, answered int
	answers := map[string]int{}
	var lastErr error
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		conn, err := net.DialTimeout("unix", target, time.Second)
		if err != nil {
			refused++
			lastErr = err
			continue
		}
		conn.SetDeadline(time.Now().Add(time.Second))
		fmt.Fprintf(conn, "GET /v1/status HTTP/1.1\r\nHost: forkd\r\n\r\n")
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil {
			refused++
			lastErr = err
			continue
		}
		answered++
		answers[strings.TrimSpace(line)]++
	}
	summary := fmt.Sprintf("%d connections refused", refused)
	if lastErr != nil {
		summary += fmt.Sprintf(" (%v)", lastErr)
	}
	summary += fmt.Sprintf(", %d answered", answered)
	lines := make([]string, 0, len(answers))
	for line, n := range answers {
		lines = append(lines, fmt.Sprintf("%d x %q", n, line))
	}
	sort.Strings(lines)
	if len(lines) > 0 {
		summary += " (" + strings.Join(lines, ", ") + ")"
	}
	return summary, nil
}
