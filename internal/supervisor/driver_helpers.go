package supervisor

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/forkd/forkd/pkg/cluster"
	"golang.org/x/sys/unix"
)

// This file runs the master's own short-lived commands (the checks before a hot restart, hooks).
// They are the master's children like the workers, so the driver's reaper must see them first:
// os/exec's Wait would race with wait4(-1).

// maxHelperOutput bounds what is kept of a helper's output, for the log.
const maxHelperOutput = 64 << 10

type helper struct {
	name   string
	pid    int
	pidfd  int
	status *cluster.ExitStatus
	output bytes.Buffer
	read   bool // the output pipe reached end of file
	timer  *time.Timer
	done   func(cluster.ExitStatus, string)
}

// helperEvent is a helper's output finished (pid), or its time up (kill).
type helperEvent struct {
	pid  int
	kill bool
	out  []byte
}

// runHelper starts argv with env, bounded by timeout (then SIGKILL), and calls done from the loop
// once it has exited and its output (stdout and stderr together) has been read.
func (d *Driver) runHelper(name string, argv, env []string, timeout time.Duration, done func(cluster.ExitStatus, string)) error {
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("cluster: %s: %w", name, err)
	}
	pidfd := -1
	attr := &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{d.devNull.Fd(), w.Fd(), w.Fd()},
		Sys:   &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, PidFD: &pidfd},
	}
	pid, err := d.spawner.start(argv[0], argv, attr)
	w.Close()
	if err != nil {
		r.Close()
		return fmt.Errorf("cluster: %s: %w", name, err)
	}
	h := &helper{name: name, pid: pid, pidfd: pidfd, done: done}
	d.helpers[pid] = h
	events := d.helperEvents
	h.timer = time.AfterFunc(timeout, func() { events <- helperEvent{pid: pid, kill: true} })
	go func() {
		b, _ := io.ReadAll(io.LimitReader(r, maxHelperOutput))
		io.Copy(io.Discard, r)
		r.Close()
		events <- helperEvent{pid: pid, out: b}
	}()
	return nil
}

// helperExited records a reaped helper; it reports false when pid is not one.
func (d *Driver) helperExited(pid int, st cluster.ExitStatus) bool {
	h, ok := d.helpers[pid]
	if !ok {
		return false
	}
	h.status = &st
	d.finishHelper(h)
	return true
}

func (d *Driver) handleHelperEvent(e helperEvent) {
	h, ok := d.helpers[e.pid]
	if !ok {
		return
	}
	if e.kill {
		if h.status == nil && h.pidfd >= 0 {
			d.log.Warn(fmt.Sprintf("%s did not finish in time: killed", h.name), "event", "helper-timeout", "pid", h.pid)
			unix.PidfdSendSignal(h.pidfd, unix.SIGKILL, nil, 0)
		}
		return
	}
	h.output.Write(e.out)
	h.read = true
	d.finishHelper(h)
}

func (d *Driver) finishHelper(h *helper) {
	if h.status == nil || !h.read {
		return
	}
	delete(d.helpers, h.pid)
	h.timer.Stop()
	if h.pidfd >= 0 {
		unix.Close(h.pidfd)
	}
	h.done(*h.status, h.output.String())
}
