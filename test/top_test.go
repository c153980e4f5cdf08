package test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/forkd/forkd/pkg/control"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// pty is a pseudo-terminal, as a terminal emulator opens one: the test reads what a program
// writes to tty from ptmx, and types into it there.
type pty struct {
	ptmx, tty *os.File

	mu  sync.Mutex
	out bytes.Buffer
}

// openPTY opens a pseudo-terminal of cols x rows and reads everything written to it.
func openPTY(t *testing.T, cols, rows int) *pty {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: /dev/ptmx: %v", err)
	}
	ptmx := os.NewFile(uintptr(fd), "/dev/ptmx")
	require.NoError(t, unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0)) // unlockpt
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)                       // ptsname
	require.NoError(t, err)
	tty, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	require.NoError(t, err)
	require.NoError(t, unix.IoctlSetWinsize(int(tty.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Col: uint16(cols), Row: uint16(rows)}))
	p := &pty{ptmx: ptmx, tty: tty}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			p.mu.Lock()
			p.out.Write(buf[:n])
			p.mu.Unlock()
			if err != nil {
				return // EIO once the last program on the terminal has closed it
			}
		}
	}()
	t.Cleanup(func() { tty.Close(); ptmx.Close() })
	return p
}

func (p *pty) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// waitOutput waits until what was written to the terminal matches cond, and returns it.
func (p *pty) waitOutput(t *testing.T, what string, cond func(string) bool) string {
	t.Helper()
	for end := time.Now().Add(deadline); ; time.Sleep(50 * time.Millisecond) {
		out := p.output()
		if cond(out) {
			return out
		}
		if time.Now().After(end) {
			t.Fatalf("%s: not on the terminal after %s; it shows:\n%q", what, deadline, out)
		}
	}
}

// frames splits a full-screen program's output at each return of the cursor home: one frame
// each, its control sequences dropped.
func frames(out string) []string {
	var fs []string
	for _, f := range strings.Split(out, "\x1b[H")[1:] {
		fs = append(fs, controlSequence.ReplaceAllString(f, ""))
	}
	return fs
}

var controlSequence = regexp.MustCompile(`\x1b\[[?0-9;]*[A-Za-z]`)

// workerRow matches top's row of worker index, pid.
func workerRow(index, pid int) *regexp.Regexp {
	return regexp.MustCompile(`(?m)^` + strconv.Itoa(index) + ` +` + strconv.Itoa(pid) + ` `)
}

// forkctl top on a terminal takes the whole screen (the alternate screen, the cursor hidden), shows
// every worker, draws a new frame over the last when the cluster changes (a reload), and on q
// gives the terminal back as it found it: the main screen, the cursor, echo and line editing.
func TestTopFullScreenOnATerminal(t *testing.T) {
	t.Parallel()
	f := startForkd(t, options{config: worker() + "\nworkers = 3\n"})
	st := f.waitReady(3)
	term := openPTY(t, 120, 40)
	before, err := unix.IoctlGetTermios(int(term.tty.Fd()), unix.TCGETS)
	require.NoError(t, err)

	top := exec.Command(filepath.Join(bin, "forkctl"), "--socket", f.socket, "top", "--interval", "200ms")
	top.Stdin, top.Stdout, top.Stderr = term.tty, term.tty, term.tty
	// Its own session, the pseudo-terminal as its controlling terminal: as a shell starts it.
	top.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	top.Env = append(os.Environ(), "TERM=xterm")
	require.NoError(t, top.Start())
	exited := make(chan error, 1)
	go func() { exited <- top.Wait() }()
	t.Cleanup(func() {
		if top.ProcessState == nil {
			top.Process.Kill()
			<-exited
		}
	})

	out := term.waitOutput(t, "the first frame with every worker", func(out string) bool {
		fs := frames(out)
		return len(fs) > 0 && strings.Contains(fs[len(fs)-1], "workers: 3/3 ready")
	})
	require.True(t, strings.HasPrefix(out, "\x1b[?1049h\x1b[?25l"), "the alternate screen and a hidden cursor first: %q", out[:min(len(out), 40)])
	first := frames(out)[0]
	for _, w := range st.WorkerList {
		assert.Regexp(t, workerRow(w.Index, w.PID), first, "a row for worker %d (pid %d)", w.Index, w.PID)
	}
	assert.Contains(t, first, "q quits")
	// Raw keys while top runs: no echo, no line editing, so that q acts at once.
	during, err := unix.IoctlGetTermios(int(term.tty.Fd()), unix.TCGETS)
	require.NoError(t, err)
	assert.Zero(t, during.Lflag&(unix.ECHO|unix.ICANON), "echo and canonical mode off while top runs")

	// A reload replaces every worker: a later frame shows generation 2's processes.
	shown := len(frames(term.output()))
	out2, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out2)
	st2 := f.waitFor("generation 2 settled", func(st control.Status) bool {
		return st.Generation == 2 && st.Ready == 3 && len(st.WorkerList) == 3
	})
	term.waitOutput(t, "a frame of generation 2's workers", func(out string) bool {
		fs := frames(out)
		if len(fs) <= shown {
			return false
		}
		last := fs[len(fs)-1]
		for _, w := range st2.WorkerList {
			if !workerRow(w.Index, w.PID).MatchString(last) {
				return false
			}
		}
		for _, w := range st.WorkerList {
			if workerRow(w.Index, w.PID).MatchString(last) {
				return false // generation 1's, draining
			}
		}
		return strings.Contains(last, "workers: 3/3 ready") && strings.Contains(last, "last rollout: reload (generation 2): done")
	})

	// q quits, and the terminal is as it was.
	_, err = term.ptmx.Write([]byte("q"))
	require.NoError(t, err)
	select {
	case err := <-exited:
		require.NoError(t, err, "top's exit")
	case <-time.After(deadline):
		t.Fatalf("top did not quit on q; the terminal shows:\n%q", term.output())
	}
	term.waitOutput(t, "the main screen and the cursor back", func(out string) bool {
		return strings.HasSuffix(out, "\x1b[?25h\x1b[?1049l")
	})
	after, err := unix.IoctlGetTermios(int(term.tty.Fd()), unix.TCGETS)
	require.NoError(t, err)
	assert.Equal(t, before.Lflag, after.Lflag, "the terminal's modes after top")
}
