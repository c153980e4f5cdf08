package cgroup

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// The test binary impersonates the processes these tests put in cgroups, chosen by
// FORKD_CGROUP_HELPER (the manner of os/exec's tests). Each one prints one JSON line on stdout
// once it is set up, then waits until its stdin closes.
const helperEnv = "FORKD_CGROUP_HELPER"

var helpers = map[string]func() any{
	// open: forkd's start, Open with the controllers in FORKD_CGROUP_CONTROLLERS, twice (the
	// second time as after a hot restart, already in the master's leaf).
	"open": func() any {
		var opts Options
		if c, ok := os.LookupEnv("FORKD_CGROUP_CONTROLLERS"); ok {
			opts.Controllers = strings.Fields(c)
		}
		first, err := Open(opts)
		if err != nil {
			return openResult{Err: err.Error(), Unavailable: errors.As(err, new(*Unavailable))}
		}
		again, err := Open(opts)
		if err != nil {
			return openResult{Err: "second Open: " + err.Error()}
		}
		return openResult{Dir: first.Dir(), Controllers: first.Controllers(), String: first.String(), Again: again.String()}
	},
	// open-readonly: Open with the cgroup2 mount read-only, as ProtectControlGroups=yes leaves
	// it. The helper runs in a mount namespace of its own (CLONE_NEWNS, whose mounts Go makes
	// private), so that the remount stays there.
	"open-readonly": func() any {
		mountinfo, _ := os.ReadFile("/proc/self/mountinfo")
		for _, m := range cgroup2Mounts(string(mountinfo)) {
			if err := unix.Mount("", m.point, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
				return openResult{Err: "remount read-only: " + err.Error()}
			}
		}
		_, err := Open(Options{})
		if err == nil {
			return openResult{}
		}
		return openResult{Err: err.Error(), Unavailable: errors.As(err, new(*Unavailable))}
	},
	// allocate: a worker that allocates and touches FORKD_CGROUP_BYTES of anonymous memory.
	"allocate": func() any {
		n, _ := strconv.Atoi(os.Getenv("FORKD_CGROUP_BYTES"))
		b := make([]byte, n)
		for i := 0; i < len(b); i += os.Getpagesize() {
			b[i] = 1
		}
		keep = b
		return map[string]int{"allocated": n}
	},
	// tree: a worker with a helper child that left its session and process group (setsid), as a
	// shell script's server child or a daemonizing helper does.
	"tree": func() any {
		cmd := exec.Command("/bin/sleep", "600")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return map[string]string{"error": err.Error()}
		}
		return map[string]int{"child": cmd.Process.Pid}
	},
}

var keep []byte

type openResult struct {
	Dir         string
	Controllers []string
	String      string
	Again       string
	Err         string
	Unavailable bool
}

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		out := helpers[name]()
		_ = json.NewEncoder(os.Stdout).Encode(out)
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helper is a running helper process.
type helper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	pid   int
}

// startHelper starts the helper name in the cgroup directory dir from its first instruction
// (CLONE_INTO_CGROUP), with env added, and decodes its JSON line into out. It is stopped at the
// test's end.
func startHelper(t *testing.T, name, dir string, out any, env ...string) *helper {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	return startHelperWith(t, name, &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}, out, env...)
}

func startHelperWith(t *testing.T, name string, attr *syscall.SysProcAttr, out any, env ...string) *helper {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	if attr.Credential != nil {
		exe = executableForAll(t, exe)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), helperEnv+"="+name), env...)
	cmd.SysProcAttr = attr
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	h := &helper{cmd: cmd, stdin: stdin, pid: cmd.Process.Pid}
	t.Cleanup(h.stop)
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	require.NoError(t, err, "helper %s said nothing", name)
	require.NoError(t, json.Unmarshal(line, out), "helper %s: %s", name, line)
	return h
}

// stop ends the helper and reaps it; killed if need be (it may already be dead).
func (h *helper) stop() {
	_ = h.stdin.Close()
	done := make(chan struct{})
	go func() { _ = h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = h.cmd.Process.Kill()
		<-done
	}
}

// executableForAll copies the test binary where another user can run it (the build's
// directories are private to root).
func executableForAll(t *testing.T, exe string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "forkd-cgroup-test-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	b, err := os.ReadFile(exe)
	require.NoError(t, err)
	copied := filepath.Join(dir, "cgroup.test")
	require.NoError(t, os.WriteFile(copied, b, 0o755))
	return copied
}

var testSeq atomic.Int64

// testCgroup creates a fresh cgroup for one test and removes it, and everything below it, at
// the test's end. It is made at the root of the cgroup v2 hierarchy when it may (so that it is
// offered every controller the root hands down), else below the test's own cgroup. Where no
// cgroup v2 directory is writable, the test skips, saying why.
func testCgroup(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("real cgroup tests run as root (they create cgroups and move processes)")
	}
	procCgroup, err := os.ReadFile("/proc/self/cgroup")
	require.NoError(t, err)
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	mounts := cgroup2Mounts(string(mountinfo))
	p, err := unifiedPath(string(procCgroup))
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	own, err := cgroupDir(mounts, p)
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	name := fmt.Sprintf("forkd-test-%d-%d", os.Getpid(), testSeq.Add(1))
	var dir string
	var tried []string
	for _, parent := range []string{mounts[0].point, own} {
		d := filepath.Join(parent, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", parent, err))
			continue
		}
		dir = d
		break
	}
	if dir == "" {
		t.Skipf("no writable cgroup v2 directory: %s", strings.Join(tried, "; "))
	}
	t.Cleanup(func() { removeCgroupTree(t, dir) })
	return dir
}

// removeCgroupTree kills every process below dir, waits for them to leave, and removes the
// cgroups deepest first.
func removeCgroupTree(t *testing.T, dir string) {
	_ = writeFile(filepath.Join(dir, "cgroup.kill"), "1")
	deadline := time.Now().Add(30 * time.Second)
	for {
		ev, err := readKeyed(filepath.Join(dir, "cgroup.events"))
		if err != nil || ev["populated"] == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.Reverse(dirs)
	for _, d := range dirs {
		if err := unix.Rmdir(d); err != nil {
			t.Errorf("cleanup: rmdir %s: %v", d, err)
		}
	}
}

// testTree is a Tree over a fresh test cgroup, with every controller the cgroup is offered
// enabled for its children, as Open leaves it, but without moving the test process into it.
func testTree(t *testing.T) *Tree {
	t.Helper()
	dir := testCgroup(t)
	tree := &Tree{dir: dir}
	tree.enable(offered(dir))
	require.Empty(t, tree.missing)
	return tree
}

func offered(dir string) []string {
	return strings.Fields(readOr(filepath.Join(dir, "cgroup.controllers")))
}

// requireMemory skips a test whose tree has no memory controller, saying why.
func requireMemory(t *testing.T, tree *Tree) {
	t.Helper()
	if !tree.Has("memory") {
		parent := filepath.Dir(tree.dir)
		t.Skipf("no memory controller for cgroup v2 here: %s offers %q; on a hybrid host (cgroup v1 mounted at "+
			"/sys/fs/cgroup/memory) the memory controller belongs to the v1 hierarchy", parent, readOr(filepath.Join(parent, "cgroup.subtree_control")))
	}
}

// cgroupOf returns the cgroup v2 path of pid, from /proc/PID/cgroup.
func cgroupOf(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	require.NoError(t, err)
	p, err := unifiedPath(string(b))
	require.NoError(t, err)
	return p
}

// gone reports whether pid has exited: no such process, or a zombie.
func gone(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z' || s[i+2] == 'X'
}

// eventually waits for cond, with a generous deadline for a busy machine.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
