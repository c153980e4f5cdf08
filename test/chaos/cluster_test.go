package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/control"
)

// Bounds of the suite. They are generous (a busy 2-core machine is slow) and a passing round
// never waits for them: every wait ends as soon as its condition holds.
const (
	workers = 3
	// heartbeatTimeout is the clusters' timeouts.worker; the SDKs beat every half of it.
	heartbeatTimeout = 6 * time.Second
	shutdownTimeout  = 10 * time.Second
	// readyBound: after a fault, every worker is ready again within this.
	readyBound = 60 * time.Second
	// goneBound: a process forkd no longer tracks is gone within this (a drain, then SIGKILL).
	goneBound = shutdownTimeout + 20*time.Second
	// commandBound: a forkctl command returns within this.
	commandBound = 90 * time.Second
	// masterNoFile is the masters' RLIMIT_NOFILE, soft and hard, as under LimitNOFILE=1024 or a
	// container runtime's default: a descriptor leak or a flood of connections reaches it within
	// a round, where it would take hours at the machine's default.
	masterNoFile = 1024
)

// A cluster is one forkd instance under test, of one runner: its config, the listening socket the
// suite holds and passes to every master as systemd does (so the port never closes, even when a
// fault kills the master and the suite starts a new one), and the log of every master it ran.
type cluster struct {
	runner   *runner
	dir      string
	config   string // path of the config file
	socket   string // the control socket
	listener *os.File
	addr     string
	inode    uint64 // the listening socket's, to find who holds it
	log      *eventLog
	logW     *os.File // the write end of the masters' output pipe, passed to each of them
	logFile  *os.File
	client   *control.Client

	mu     sync.Mutex
	master *exec.Cmd
	done   chan struct{} // closed when the current master has exited
	// masters counts the masters started (the first, and one after each that a fault killed).
	masters int
	// baseline is the current master's descriptor count and RSS when it first settled: what the
	// rounds are compared with.
	baseline *usage
}

// startCluster binds a loopback port, writes the runner's config and starts the first master.
func startCluster(r *runner, dir string) (*cluster, error) {
	c := &cluster{runner: r, dir: dir, config: filepath.Join(dir, "forkd.hcl"), socket: filepath.Join(dir, "control.sock"),
		log: &eventLog{done: make(chan struct{})}}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c.addr = l.Addr().String()
	c.listener, err = l.(*net.TCPListener).File()
	l.Close()
	if err != nil {
		return nil, err
	}
	if c.inode, err = socketInode(int(c.listener.Fd())); err != nil {
		return nil, err
	}
	if err := c.writeConfig(nil); err != nil {
		return nil, err
	}
	if c.logFile, err = os.Create(filepath.Join(dir, "forkd.log")); err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	c.logW = pw
	go c.log.follow(pr, c.logFile)
	c.client = control.NewClient(c.socket)
	if err := c.startMaster(); err != nil {
		return nil, err
	}
	return c, nil
}

// writeConfig writes the cluster's config; command replaces the runner's command (a broken
// release) when it is not nil.
func (c *cluster) writeConfig(command []string) error {
	r := c.runner
	if command == nil {
		command = r.command(repo, bin)
	}
	var env []string
	keys := make([]string, 0)
	for k := range r.env(repo) {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, fmt.Sprintf("%s = %q", k, r.env(repo)[k]))
	}
	blocks := ""
	if r.fork {
		// No automatic refork: the suite's own reforks are the only ones, so that a generation
		// moves only when the suite asked for it.
		blocks = "fork_worker {\n  refork_after = []\n  timeout      = \"10s\"\n}\n"
	}
	if r.abstract {
		blocks += "notify { abstract = true }\n"
	}
	cfg := fmt.Sprintf(`# written by test/chaos
name      = %q
command   = [%s]
directory = %q
env       = { %s }
workers   = %d
readiness = "notify"
timeouts {
  boot     = "30s"
  worker   = %q
  shutdown = %q
}
# The suite kills workers round after round: with the default backoff_max (30s), a slot it has
# hit often waits that long before its next spawn, which forkd means, and which would only slow
# the rounds down.
restart { backoff_max = "2s" }
control { socket = %q }
log { format = "json" }
%s`, fmt.Sprintf("chaos-%d-%s", os.Getpid(), r.name), quoteAll(command), r.dir(repo), strings.Join(env, ", "), workers,
		heartbeatTimeout.String(), shutdownTimeout.String(), c.socket, blocks)
	tmp := c.config + ".new"
	if err := os.WriteFile(tmp, []byte(cfg), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, c.config)
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}

// startMaster starts a master on the cluster's socket, as systemd does: LISTEN_FDS=1 and
// LISTEN_PID set to the master's own PID (a shell sets it, then execs forkd in place).
func (c *cluster) startMaster() error {
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, filepath.Join(bin, "forkd"), "--config", c.config)
	cmd.Env = append(cleanEnv(), "LISTEN_FDS=1", "LISTEN_FDNAMES=http")
	cmd.ExtraFiles = []*os.File{c.listener}
	cmd.Stdout, cmd.Stderr = c.logW, c.logW
	if err := startChild(cmd); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	limit := unix.Rlimit{Cur: masterNoFile, Max: masterNoFile}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &limit, nil); err != nil {
		cmd.Process.Kill()
		return fmt.Errorf("prlimit of the master: %w", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		forgetChild(pid)
		close(done)
	}()
	c.mu.Lock()
	c.master, c.done, c.baseline = cmd, done, nil
	c.masters++
	c.mu.Unlock()
	return nil
}

// cleanEnv is the suite's environment without what would tell forkd it runs under systemd.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM":
			continue
		}
		env = append(env, kv)
	}
	return env
}

func (c *cluster) masterPID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.master.Process.Pid
}

func (c *cluster) masterDone() chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

func (c *cluster) masterAlive() bool {
	select {
	case <-c.masterDone():
		return false
	default:
		return true
	}
}

// status asks the control API once, bounded.
func (c *cluster) status() (control.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.client.Status(ctx)
}

// settled is a cluster at rest: running, every desired worker ready, and nothing else in the
// worker list (no replacement booting, no old worker draining).
func settled(st control.Status) bool {
	if st.Phase != control.PhaseRunning || st.Workers != workers || st.Ready != workers || len(st.WorkerList) != workers {
		return false
	}
	for _, w := range st.WorkerList {
		if w.PID == 0 || w.State != control.WorkerReady || w.Replacement || w.Detached {
			return false
		}
	}
	return true
}

// waitSettled polls the status until the cluster is settled or within has passed; it returns the
// last status it read and whether it settled.
func (c *cluster) waitSettled(within time.Duration) (control.Status, bool, error) {
	end := time.Now().Add(within)
	var last control.Status
	var lastErr error
	for {
		if !c.masterAlive() {
			return last, false, errors.New("the master exited")
		}
		st, err := c.status()
		if err == nil {
			last, lastErr = st, nil
			if settled(st) {
				c.takeBaseline(st.MasterPID)
				return st, true, nil
			}
		} else {
			lastErr = err
		}
		if time.Now().After(end) {
			return last, false, lastErr
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// takeBaseline records the master's usage the first time it is seen settled, before any fault.
func (c *cluster) takeBaseline(pid int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.baseline != nil || pid != c.master.Process.Pid {
		return
	}
	if u, err := masterUsage(pid); err == nil {
		c.baseline = &u
	}
}

// usage is what the master holds: descriptors and resident memory.
type usage struct {
	fds int
	rss uint64 // bytes
	cpu time.Duration
}

func masterUsage(pid int) (usage, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return usage{}, err
	}
	u := usage{fds: len(entries)}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return usage{}, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			u.rss = kb * 1024
		}
	}
	u.cpu, err = cpuTime(pid)
	return u, err
}

// cpuTime is the user and system time pid has used.
func cpuTime(pid int) (time.Duration, error) {
	st, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	// /proc/PID/stat counts clock ticks, USER_HZ, which is 100 on Linux.
	return time.Duration(st.utime+st.stime) * (time.Second / 100), nil
}

// replaceMaster stops the master (SIGTERM, then SIGKILL), kills what is left of its tree, and
// starts a new master on the same socket.
func (c *cluster) replaceMaster() error {
	c.stopMaster()
	killLeftovers(c)
	return c.startMaster()
}

func (c *cluster) stopMaster() {
	if !c.masterAlive() {
		return
	}
	c.master.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.masterDone():
	case <-time.After(goneBound):
		c.master.Process.Kill()
		<-c.masterDone()
	}
}

// stop ends the cluster: SIGTERM to the master (it drains its workers), SIGKILL if it does not
// exit, then SIGKILL to anything of its tree left, by PID.
func (c *cluster) stop() {
	c.stopMaster()
	killLeftovers(c)
	c.logW.Close()
	select {
	case <-c.log.done:
	case <-time.After(10 * time.Second):
	}
	c.logFile.Close()
	c.listener.Close()
}
