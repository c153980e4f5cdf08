// Command cgroupprobe runs internal/cgroup the way the forkd master will, and prints what it saw
// as one JSON object: whether forkd may create cgroups where the probe runs (Open), and if so, a
// worker's cgroup with a shell script in it whose child left its session (setsid), the whole tree
// killed with cgroup.kill and the cgroup removed, and with the memory controller, a worker over
// its memory.max, OOM-killed and reported in memory.events. The systemd end-to-end suite
// (test/systemd, scenario cgroup-delegation) runs it as units with and without Delegate=yes.
//
//	cgroupprobe            # the probe
//	cgroupprobe -allocate N # (the probe's own OOM worker) allocate and touch N bytes, then wait
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/forkd/forkd/internal/cgroup"
)

// Result is what the probe prints.
type Result struct {
	// Status is the tree's String ("cgroups on: ...") or Open's error ("cgroups off: ...").
	Status string `json:"status"`
	// Dir is forkd's cgroup directory; MasterCgroup the probe's own cgroup after Open.
	Dir          string   `json:"dir,omitempty"`
	MasterCgroup string   `json:"master_cgroup,omitempty"`
	Controllers  []string `json:"controllers,omitempty"`
	// Procs counts the processes in the worker's cgroup before the kill (the script and its
	// setsid child: 2); Killed says the script died of SIGKILL, ChildGone that its child did.
	Procs     int  `json:"procs"`
	Killed    bool `json:"killed"`
	ChildGone bool `json:"child_gone"`
	Removed   bool `json:"removed"`
	// OOM: the memory controller's part, when the tree has it.
	MemoryTested bool     `json:"memory_tested"`
	OOMKilled    bool     `json:"oom_killed"`
	OOMKills     uint64   `json:"oom_kills"`
	Errors       []string `json:"errors,omitempty"`
}

func main() {
	allocate := flag.Int("allocate", 0, "allocate and touch this many bytes, then wait")
	flag.Parse()
	if *allocate > 0 {
		b := make([]byte, *allocate)
		for i := 0; i < len(b); i += os.Getpagesize() {
			b[i] = 1
		}
		time.Sleep(time.Minute)
		os.Exit(0)
	}
	r := probe()
	_ = json.NewEncoder(os.Stdout).Encode(r)
}

func probe() (r Result) {
	fail := func(format string, args ...any) { r.Errors = append(r.Errors, fmt.Sprintf(format, args...)) }
	tree, err := cgroup.Open(cgroup.Options{})
	if err != nil {
		r.Status = err.Error()
		return r
	}
	r.Status, r.Dir, r.Controllers = tree.String(), tree.Dir(), tree.Controllers()
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil {
		for line := range strings.Lines(string(b)) {
			if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
				r.MasterCgroup = p
			}
		}
	}

	w, err := tree.NewWorker(0, 1, cgroup.Limits{})
	if err != nil {
		fail("NewWorker: %v", err)
		return r
	}
	cmd := exec.Command("/bin/sh", "-c", "setsid sleep 600 & echo $!; wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	w.SetSysProcAttr(cmd.SysProcAttr)
	out, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		fail("start the worker: %v", err)
		return r
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	child, _ := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || child == 0 {
		fail("the worker's child: %q %v", line, err)
	}
	waitUntil(func() bool { p, _ := w.Procs(); return len(p) >= 2 })
	procs, _ := w.Procs()
	r.Procs = len(procs)
	if err := w.Kill(); err != nil {
		fail("Kill: %v", err)
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	r.Killed = errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
	r.ChildGone = waitUntil(func() bool { return child != 0 && gone(child) })
	waitUntil(func() bool { p, _ := w.Populated(); return !p })
	if err := w.Remove(); err != nil {
		fail("Remove: %v", err)
	}
	_, err = os.Stat(w.Dir())
	r.Removed = errors.Is(err, os.ErrNotExist)

	if !tree.Has("memory") {
		return r
	}
	r.MemoryTested = true
	m, err := tree.NewWorker(1, 2, cgroup.Limits{MemoryMax: 32 << 20})
	if err != nil {
		fail("NewWorker with memory.max: %v", err)
		return r
	}
	_ = os.WriteFile(m.Dir()+"/memory.swap.max", []byte("0"), 0) // no swap, if there is any
	exe, _ := os.Executable()
	hog := exec.Command(exe, "-allocate", strconv.Itoa(256<<20))
	hog.SysProcAttr = &syscall.SysProcAttr{}
	m.SetSysProcAttr(hog.SysProcAttr)
	err = hog.Run()
	r.OOMKilled = errors.As(err, &exit) && exit.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL
	if ev, err := m.Events(); err == nil {
		r.OOMKills = ev.OOMKill
	} else {
		fail("Events: %v", err)
	}
	waitUntil(func() bool { p, _ := m.Populated(); return !p })
	if err := m.Remove(); err != nil {
		fail("Remove the OOM worker: %v", err)
	}
	return r
}

// waitUntil polls cond for up to 30 s, and says whether it came true.
func waitUntil(cond func() bool) bool {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// gone reports whether pid has exited (no such process, or a zombie).
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}
