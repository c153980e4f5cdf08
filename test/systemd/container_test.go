package systemd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// workPrefix names each run's scratch directory: the overlay's upper and work directories, the
// merged root the container boots from, its console log, and an owner file for stale cleanup.
const workPrefix = "/var/tmp/forkd-e2e-"

// container is a systemd booted in systemd-nspawn on an overlay of the cached rootfs.
type container struct {
	name    string
	work    string // scratch directory, workPrefix + random
	root    string // the merged overlay: the container's /, writable from the host
	console string // the container's console output
	cgroups []string
	mounted bool
	keep    bool // FORKD_E2E_KEEP=1: leave the container running after the test, for debugging

	cmd    *exec.Cmd     // the systemd-nspawn process (through sh, which moves itself into cgroups)
	exited chan struct{} // closed once cmd has exited
	leader int           // host PID of the container's PID 1
	logf   func(format string, args ...any)
}

// newContainer prepares the overlay root of a container on lower. It does not boot it yet, so that
// files can be put in place (and a package installed with chroot) first.
func newContainer(lower string, logf func(string, ...any)) (*container, error) {
	work, err := os.MkdirTemp(filepath.Dir(workPrefix), filepath.Base(workPrefix))
	if err != nil {
		return nil, err
	}
	c := &container{
		name:    "forkd-e2e-" + strconv.Itoa(os.Getpid()),
		work:    work,
		root:    filepath.Join(work, "root"),
		console: filepath.Join(work, "console.log"),
		exited:  make(chan struct{}),
		logf:    logf,
	}
	// Written first: a later run that finds this directory with its owner gone cleans it up.
	if err := os.WriteFile(filepath.Join(work, "owner"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return c, err
	}
	for _, d := range []string{"upper", "ovlwork", "root"} {
		if err := os.Mkdir(filepath.Join(work, d), 0o755); err != nil {
			return c, err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lower, filepath.Join(work, "upper"), filepath.Join(work, "ovlwork"))
	if err := unix.Mount("overlay", c.root, "overlay", 0, opts); err != nil {
		return c, fmt.Errorf("mount overlay on %s: %w", c.root, err)
	}
	c.mounted = true
	return c, nil
}

// boot starts systemd-nspawn and waits until systemd in the container has finished booting.
func (c *container) boot(ctx context.Context) error {
	var err error
	c.cgroups, err = cgroupDirs(c.name)
	if err != nil {
		return err
	}
	for _, d := range c.cgroups {
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("cgroup for nspawn: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(c.work, "cgroups"), []byte(strings.Join(c.cgroups, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	console, err := os.Create(c.console)
	if err != nil {
		return err
	}
	defer console.Close()

	// nspawn gets cgroups of its own: with --keep-unit it would otherwise create payload/ and
	// supervisor/ right in the host's root cgroups. sh moves itself there, then execs nspawn.
	var script strings.Builder
	for _, d := range c.cgroups {
		fmt.Fprintf(&script, "echo $$ >%s/cgroup.procs || exit 1; ", d)
	}
	script.WriteString(`exec systemd-nspawn -D "$0" -M "$1" -b --register=no --keep-unit --console=read-only --link-journal=no`)
	c.cmd = exec.Command("sh", "-c", script.String(), c.root, c.name)
	c.cmd.Stdout, c.cmd.Stderr = console, console
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !c.keep {
		// If the test binary dies (a panic, go test's -timeout, SIGKILL), the kernel sends nspawn
		// SIGTERM, and nspawn shuts the container down.
		c.cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	}
	if err := startOnLockedThread(c.cmd, c.exited); err != nil {
		return fmt.Errorf("start systemd-nspawn: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.work, "nspawn"), []byte(strconv.Itoa(c.cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return err
	}

	// The container's PID 1 is the child of nspawn that is PID 1 in a PID namespace of its own;
	// nspawn's other, short-lived children come and go first.
	for c.leader == 0 {
		if c.leader = containerInit(c.cmd.Process.Pid); c.leader != 0 {
			break
		}
		select {
		case <-c.exited:
			return fmt.Errorf("systemd-nspawn exited at once: %s", c.consoleTail(20))
		case <-ctx.Done():
			return fmt.Errorf("no container leader: %w: %s", ctx.Err(), c.consoleTail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
	for {
		if _, _, code, _ := c.exec(ctx, 5*time.Second, "test", "-S", "/run/systemd/private"); code == 0 {
			break
		}
		select {
		case <-c.exited:
			return fmt.Errorf("systemd-nspawn exited while booting: %s", c.consoleTail(30))
		case <-ctx.Done():
			return fmt.Errorf("systemd did not start in the container: %w: %s", ctx.Err(), c.consoleTail(30))
		case <-time.After(100 * time.Millisecond):
		}
	}
	state, _, _, _ := c.exec(ctx, 90*time.Second, "systemctl", "is-system-running", "--wait")
	state = strings.TrimSpace(state)
	switch state {
	case "running":
	case "degraded":
		failed, _, _, _ := c.exec(ctx, 10*time.Second, "systemctl", "--failed", "--no-legend", "--plain")
		c.logf("container booted degraded; failed units:\n%s", failed)
	default:
		return fmt.Errorf("systemd in the container is %q, not running: %s", state, c.consoleTail(30))
	}
	return nil
}

// startOnLockedThread starts cmd from an OS thread that lives until cmd has exited, and closes
// exited then. Pdeathsig fires when the thread that forked the child exits, not the process: a Go
// thread can exit under a goroutine, so the thread must outlive the child.
func startOnLockedThread(cmd *exec.Cmd, exited chan struct{}) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with this goroutine, after cmd
		defer close(exited)
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
	}()
	return <-started
}

// containerInit returns the child of pid that is PID 1 of its own PID namespace, or 0.
func containerInit(pid int) int {
	for _, child := range childrenOf(pid) {
		for _, line := range strings.Split(readFile(fmt.Sprintf("/proc/%d/status", child)), "\n") {
			// "NSpid:\t4242\t1": the PID in each namespace, outermost first.
			if f := strings.Fields(line); len(f) >= 3 && f[0] == "NSpid:" && f[len(f)-1] == "1" {
				return child
			}
		}
	}
	return 0
}

func childrenOf(pid int) []int {
	var children []int
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			children = append(children, n)
		}
		return children
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil && ppidOf(n) == pid {
			children = append(children, n)
		}
	}
	return children
}

func ppidOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// pid (comm) state ppid ...; comm may contain spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

// exec runs argv inside the container (all its namespaces, a clean environment) and returns its
// stdout, stderr and exit code. err is set when it could not run or timed out; a non-zero exit is
// only a code. timeout bounds it, whatever ctx allows.
func (c *container) exec(ctx context.Context, timeout time.Duration, argv ...string) (stdout, stderr string, code int, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := append([]string{"-t", strconv.Itoa(c.leader), "-a", "env", "-i",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "TERM=dumb",
		"SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "SYSTEMD_LOG_COLOR=0"}, argv...)
	return runCommand(ctx, "nsenter", args...)
}

// runCommand runs a host command in a process group of its own, killed whole when ctx ends.
func runCommand(ctx context.Context, name string, args ...string) (stdout, stderr string, code int, err error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return out.String(), errb.String(), -1, fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), ctx.Err())
	case errors.As(err, &exit):
		return out.String(), errb.String(), exit.ExitCode(), nil
	case err != nil:
		return out.String(), errb.String(), -1, err
	}
	return out.String(), errb.String(), 0, nil
}

// shutdown stops the container (a clean halt, then SIGKILL if it hangs) and removes everything
// the run made on the host: nspawn's cgroups, the overlay mount, the scratch directory.
func (c *container) shutdown() {
	if c.cmd != nil && c.cmd.Process != nil {
		t0 := time.Now()
		stopProcess(c.cmd.Process.Pid, c.exited)
		c.logf("container shutdown: %.1fs", time.Since(t0).Seconds())
	}
	for _, d := range c.cgroups {
		removeCgroupTree(d)
	}
	if c.mounted {
		if err := unmount(c.root); err != nil {
			c.logf("cannot unmount %s, leaving %s for the next run to clean: %v", c.root, c.work, err)
			return
		}
		c.mounted = false
	}
	if err := os.RemoveAll(c.work); err != nil {
		c.logf("cannot remove %s: %v", c.work, err)
	}
}

// stopProcess ends nspawn: SIGTERM (nspawn asks the container's systemd to halt), a second
// SIGTERM after 30s (nspawn then kills the container at once), SIGKILL after 5s more.
func stopProcess(pid int, exited <-chan struct{}) {
	steps := []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGTERM, 30 * time.Second}, {syscall.SIGTERM, 5 * time.Second}, {syscall.SIGKILL, 10 * time.Second}}
	for _, s := range steps {
		if syscall.Kill(pid, s.sig) != nil {
			break
		}
		select {
		case <-exited:
			return
		case <-time.After(s.wait):
		}
	}
	<-exited
}

func unmount(dir string) error {
	var err error
	for i := 0; i < 20; i++ {
		if err = unix.Unmount(dir, 0); err == nil || errors.Is(err, unix.EINVAL) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Busy still: detach it, so that it goes away once the last user is gone.
	if unix.Unmount(dir, unix.MNT_DETACH) == nil {
		return nil
	}
	return err
}

// removeCgroupTree removes a cgroup directory and its children, deepest first. Processes may still
// be leaving them, so it retries for a while.
func removeCgroupTree(dir string) {
	for i := 0; i < 50; i++ {
		var dirs []string
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if len(dirs) == 0 {
			return
		}
		for j := len(dirs) - 1; j >= 0; j-- {
			_ = unix.Rmdir(dirs[j])
		}
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cgroupDirs returns the cgroup directories to put nspawn in: one on a cgroup v2 host, the
// systemd named hierarchy plus the unified one on a hybrid host (this CI's layout), the named
// hierarchy alone on a legacy one.
func cgroupDirs(name string) ([]string, error) {
	if isCgroup2("/sys/fs/cgroup") {
		return []string{filepath.Join("/sys/fs/cgroup", name)}, nil
	}
	var dirs []string
	if _, err := os.Stat("/sys/fs/cgroup/systemd/cgroup.procs"); err == nil {
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup/systemd", name))
	}
	if isCgroup2("/sys/fs/cgroup/unified") {
		dirs = append(dirs, filepath.Join("/sys/fs/cgroup/unified", name))
	}
	if len(dirs) == 0 {
		return nil, errors.New("no cgroup hierarchy for systemd found under /sys/fs/cgroup")
	}
	return dirs, nil
}

func isCgroup2(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

func (c *container) consoleTail(lines int) string {
	return "console: " + tail(readFile(c.console), lines)
}

// cleanStale removes what earlier runs left when they were killed: their nspawn (if it somehow
// survived), cgroups, overlay mounts and scratch directories.
func cleanStale(logf func(string, ...any)) {
	dirs, _ := filepath.Glob(workPrefix + "*")
	for _, work := range dirs {
		owner, err := strconv.Atoi(strings.TrimSpace(readFile(filepath.Join(work, "owner"))))
		if err != nil || owner == os.Getpid() || processAlive(owner) {
			continue
		}
		logf("removing %s, left by test process %d", work, owner)
		if pid, err := strconv.Atoi(strings.TrimSpace(readFile(filepath.Join(work, "nspawn")))); err == nil &&
			strings.Contains(readFile(fmt.Sprintf("/proc/%d/cmdline", pid)), work) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			time.Sleep(time.Second)
		}
		for _, cg := range strings.Fields(readFile(filepath.Join(work, "cgroups"))) {
			removeCgroupTree(cg)
		}
		root := filepath.Join(work, "root")
		if err := unmount(root); err != nil {
			logf("cannot unmount %s: %v", root, err)
			continue
		}
		_ = os.RemoveAll(work)
	}
}

func processAlive(pid int) bool {
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
