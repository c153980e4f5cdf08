package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// hierarchyPath is dir's path in the cgroup v2 hierarchy, as /proc/PID/cgroup shows it.
func hierarchyPath(t *testing.T, dir string) string {
	t.Helper()
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	for _, m := range cgroup2Mounts(string(mountinfo)) {
		if rel, ok := within(m.point, dir); ok {
			return filepath.Join(m.root, rel)
		}
	}
	t.Fatalf("%s is under no cgroup2 mount", dir)
	return ""
}

// forkd started in a delegated cgroup R moves itself into R/master, and only then can R hand
// controllers to its children: the no-internal-processes rule, checked both ways.
func TestOpenMovesTheMasterIntoALeaf(t *testing.T) {
	root := testCgroup(t)
	controllers := offered(root)

	// While a process runs in R itself, R cannot enable a controller for its children.
	if len(controllers) > 0 {
		var res map[string]int
		squatter := startHelper(t, "allocate", root, &res, "FORKD_CGROUP_BYTES=0")
		tree := &Tree{dir: root}
		tree.enable(controllers)
		assert.Empty(t, tree.controllers)
		require.NotEmpty(t, tree.missing)
		assert.Contains(t, tree.missing[0], "holds processes of its own (["+strconv.Itoa(squatter.pid)+"])")
		squatter.stop()
		eventually(t, "the squatter to leave "+root, func() bool { return readOr(filepath.Join(root, "cgroup.procs")) == "" })
	} else {
		t.Logf("%s is offered no controller: the no-internal-processes rule is not exercised", root)
	}

	var res openResult
	master := startHelper(t, "open", root, &res, "FORKD_CGROUP_CONTROLLERS="+strings.Join(controllers, " "))
	require.Empty(t, res.Err)
	assert.Equal(t, root, res.Dir)
	assert.Equal(t, hierarchyPath(t, filepath.Join(root, MasterLeaf)), cgroupOf(t, master.pid))
	assert.Empty(t, readOr(filepath.Join(root, "cgroup.procs")), "R keeps no process of its own")
	assert.ElementsMatch(t, controllers, res.Controllers)
	assert.ElementsMatch(t, controllers, strings.Fields(readOr(filepath.Join(root, "cgroup.subtree_control"))))
	assert.Equal(t, res.String, res.Again, "a second Open, from the master's leaf, sees the same tree")
	t.Log(res.String)
}

func TestOpenRefuses(t *testing.T) {
	root := testCgroup(t)

	t.Run("the host's root cgroup", func(t *testing.T) {
		if !inInitialCgroupNamespace() {
			t.Skip("in a cgroup namespace of its own, the root cgroup is the container's")
		}
		_, err := open(filepath.Dir(root), "/", Options{})
		var u *Unavailable
		require.ErrorAs(t, err, &u)
		assert.Contains(t, u.Reason, "host's root cgroup")
		assert.NoDirExists(t, filepath.Join(filepath.Dir(root), MasterLeaf))
	})

	t.Run("a systemd unit without Delegate=yes", func(t *testing.T) {
		unit := filepath.Join(root, "app.service")
		require.NoError(t, os.Mkdir(unit, 0o755))
		_, err := open(unit, hierarchyPath(t, unit), Options{})
		var u *Unavailable
		require.ErrorAs(t, err, &u)
		assert.Equal(t, "app.service does not delegate its cgroup to forkd (add Delegate=yes to the unit)", u.Reason)
		assert.NoDirExists(t, filepath.Join(unit, MasterLeaf))

		// systemd marks a delegated cgroup: then forkd takes it.
		require.NoError(t, unix.Setxattr(unit, "trusted.delegate", []byte("1"), 0))
		var res openResult
		startHelper(t, "open", unit, &res)
		require.Empty(t, res.Err)
		assert.Equal(t, unit, res.Dir)
	})

	t.Run("a read-only cgroupfs", func(t *testing.T) {
		unit := filepath.Join(root, "ro.service")
		require.NoError(t, os.Mkdir(unit, 0o755))
		require.NoError(t, unix.Setxattr(unit, "trusted.delegate", []byte("1"), 0))
		fd, err := unix.Open(unit, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(fd)
		attr := &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd, Unshareflags: syscall.CLONE_NEWNS}
		var res openResult
		startHelperWith(t, "open-readonly", attr, &res)
		assert.True(t, res.Unavailable, "%+v", res)
		assert.Equal(t, "cgroups off: "+unit+" is on a read-only mount (under systemd: ProtectControlGroups=no and Delegate=yes in the unit; "+
			"in a container: a read-write /sys/fs/cgroup)", res.Err)
		assert.NoDirExists(t, filepath.Join(unit, MasterLeaf))
	})

	t.Run("a cgroup shared with other processes", func(t *testing.T) {
		dir := filepath.Join(root, "terminal")
		require.NoError(t, os.Mkdir(dir, 0o755))
		var shell map[string]int
		sh := startHelper(t, "allocate", dir, &shell, "FORKD_CGROUP_BYTES=0")
		var res openResult
		startHelper(t, "open", dir, &res)
		assert.True(t, res.Unavailable, "%+v", res)
		assert.Equal(t, fmt.Sprintf("cgroups off: %s holds other processes than forkd (pid %d): forkd needs a cgroup of its own "+
			"(a unit with Delegate=yes; from a shell, systemd-run --scope -p Delegate=yes forkd ...)", dir, sh.pid), res.Err)
		assert.NoDirExists(t, filepath.Join(dir, MasterLeaf))
	})

	t.Run("a cgroup another forkd has taken", func(t *testing.T) {
		dir := filepath.Join(root, "shared")
		require.NoError(t, os.Mkdir(dir, 0o755))
		var first, second openResult
		h := startHelper(t, "open", dir, &first)
		require.Empty(t, first.Err)
		startHelper(t, "open", dir, &second)
		assert.True(t, second.Unavailable, "%+v", second)
		assert.Equal(t, fmt.Sprintf("cgroups off: another forkd (pid %d) runs in %s: give each forkd a cgroup of its own (a unit of its own, with Delegate=yes)",
			h.pid, dir), second.Err)
	})

	t.Run("a cgroup forkd's user cannot write", func(t *testing.T) {
		dir := filepath.Join(root, "app")
		require.NoError(t, os.Mkdir(dir, 0o755))
		nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		require.NoError(t, err)
		defer unix.Close(fd)
		nobody.UseCgroupFD, nobody.CgroupFD = true, fd
		var res openResult
		startHelperWith(t, "open", nobody, &res)
		assert.True(t, res.Unavailable, "%+v", res)
		assert.Contains(t, res.Err, "cgroups off: "+dir+" is not writable by uid 65534 (under systemd: Delegate=yes")
	})
}

// Delegate=yes with User=: systemd chowns the unit's cgroup directory and its cgroup.procs,
// cgroup.subtree_control and cgroup.threads to the user, who then runs forkd there.
func TestOpenAsTheDelegatedUser(t *testing.T) {
	root := testCgroup(t)
	unit := filepath.Join(root, "app.service")
	require.NoError(t, os.Mkdir(unit, 0o755))
	for _, f := range []string{"", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"} {
		require.NoError(t, os.Chown(filepath.Join(unit, f), 65534, 65534))
	}
	// Root could read trusted.delegate, the user cannot: the cgroup's owner tells then.
	fd, err := unix.Open(unit, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	defer unix.Close(fd)
	attr := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, UseCgroupFD: true, CgroupFD: fd}
	var res openResult
	h := startHelperWith(t, "open", attr, &res, "FORKD_CGROUP_CONTROLLERS="+strings.Join(offered(unit), " "))
	require.Empty(t, res.Err)
	assert.Equal(t, hierarchyPath(t, filepath.Join(unit, MasterLeaf)), cgroupOf(t, h.pid))
	assert.ElementsMatch(t, offered(unit), res.Controllers)
}

// An exec'd worker is born in its cgroup; a forked one is moved there. Both show in Procs, and
// the cgroup is removed once they are gone, not before.
func TestWorkersInTheirCgroups(t *testing.T) {
	tree := testTree(t)
	exec0, err := tree.NewWorker(0, 1, Limits{})
	require.NoError(t, err)
	forked, err := tree.NewWorker(1, 2, Limits{})
	require.NoError(t, err)
	assert.Equal(t, "worker-0-1", exec0.Name())

	cmd := exec.Command("/bin/sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	exec0.SetSysProcAttr(cmd.SysProcAttr)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	assert.Equal(t, hierarchyPath(t, exec0.Dir()), cgroupOf(t, cmd.Process.Pid))
	procs, err := exec0.Procs()
	require.NoError(t, err)
	assert.Equal(t, []int{cmd.Process.Pid}, procs)

	// A "forked worker": born elsewhere (in the template's cgroup), moved on hello.
	other := exec.Command("/bin/sleep", "600")
	other.SysProcAttr = &syscall.SysProcAttr{}
	exec0.SetSysProcAttr(other.SysProcAttr)
	require.NoError(t, other.Start())
	t.Cleanup(func() { _ = other.Process.Kill(); _ = other.Wait() })
	require.NoError(t, forked.Place(other.Process.Pid))
	assert.Equal(t, hierarchyPath(t, forked.Dir()), cgroupOf(t, other.Process.Pid))

	names, err := tree.Workers()
	require.NoError(t, err)
	assert.Equal(t, []string{"worker-0-1", "worker-1-2"}, names)

	require.ErrorIs(t, forked.Remove(), ErrBusy)
	populated, err := forked.Populated()
	require.NoError(t, err)
	assert.True(t, populated)
	require.NoError(t, other.Process.Kill())
	_ = other.Wait()
	eventually(t, "the forked worker's cgroup to empty", func() bool { p, _ := forked.Populated(); return !p })
	require.NoError(t, forked.Remove())
	assert.NoDirExists(t, forked.Dir())
	require.NoError(t, forked.Remove(), "a second Remove does nothing")

	// After a hot restart: the adopted worker's cgroup, opened by name.
	again, err := tree.OpenWorker("worker-0-1")
	require.NoError(t, err)
	procs, err = again.Procs()
	require.NoError(t, err)
	assert.Equal(t, []int{cmd.Process.Pid}, procs)
	_, err = tree.OpenWorker("../escape")
	assert.Error(t, err)
}

// Kill takes a worker's whole tree, a helper that left the worker's session and process group
// included: what a process group cannot reach.
func TestKillTakesTheWholeTree(t *testing.T) {
	for _, tt := range []struct {
		name string
		kill func(*Worker) error
	}{
		{"cgroup.kill", (*Worker).Kill},
		{"signal each (before Linux 5.14)", (*Worker).killEach},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tree := testTree(t)
			w, err := tree.NewWorker(3, 7, Limits{})
			require.NoError(t, err)
			var res map[string]int
			h := startHelper(t, "tree", w.Dir(), &res)
			child := res["child"]
			require.NotZero(t, child)
			procs, err := w.Procs()
			require.NoError(t, err)
			assert.ElementsMatch(t, []int{h.pid, child}, procs)
			sid, err := unix.Getsid(child)
			require.NoError(t, err)
			require.Equal(t, child, sid, "the helper's child leads a session of its own")

			require.NoError(t, tt.kill(w))
			state, _ := h.cmd.Process.Wait()
			require.NotNil(t, state)
			assert.Equal(t, syscall.SIGKILL, state.Sys().(syscall.WaitStatus).Signal())
			eventually(t, "the setsid child to die", func() bool { return gone(child) })
			eventually(t, "the cgroup to empty", func() bool { p, _ := w.Populated(); return !p })
			require.NoError(t, w.Remove())
		})
	}
}

func TestLimitsNeedTheirController(t *testing.T) {
	tree := testTree(t)
	tree.controllers = nil // as on a host that offers none
	_, err := tree.NewWorker(0, 1, Limits{MemoryMax: 64 << 20})
	require.ErrorIs(t, err, ErrNoController)
	assert.Contains(t, err.Error(), "memory.max needs the memory controller")
	assert.NoDirExists(t, filepath.Join(tree.dir, "worker-0-1"), "a worker cgroup that failed is removed")

	w, err := tree.NewWorker(0, 2, Limits{})
	require.NoError(t, err, "no limit needs no controller")
	_, err = w.Memory()
	require.ErrorIs(t, err, ErrNoController)
	_, err = w.Events()
	require.ErrorIs(t, err, ErrNoController)
	require.NoError(t, w.Remove())
}

// memory.current counts what a worker allocated; memory.stat says it is anonymous memory.
func TestMemoryOfAWorker(t *testing.T) {
	tree := testTree(t)
	requireMemory(t, tree)
	w, err := tree.NewWorker(0, 1, Limits{})
	require.NoError(t, err)
	var res map[string]int
	startHelper(t, "allocate", w.Dir(), &res, "FORKD_CGROUP_BYTES="+strconv.Itoa(64<<20))
	m, err := w.Memory()
	require.NoError(t, err)
	assert.GreaterOrEqual(t, m.Current, uint64(64<<20))
	assert.GreaterOrEqual(t, m.Anon, uint64(60<<20))
	assert.NotEmpty(t, m.Stat)
	t.Logf("memory.current %d, anon %d, file %d, kernel %d", m.Current, m.Anon, m.File, m.Kernel)
}

// A worker past memory.max is OOM-killed, whole, and memory.events says so.
func TestMemoryMaxOOMKill(t *testing.T) {
	tree := testTree(t)
	requireMemory(t, tree)
	w, err := tree.NewWorker(0, 1, Limits{MemoryMax: 32 << 20})
	require.NoError(t, err)
	assert.Equal(t, strconv.Itoa(32<<20), readOr(filepath.Join(w.Dir(), "memory.max")))
	assert.Equal(t, "1", readOr(filepath.Join(w.Dir(), "memory.oom.group")))
	if swap := filepath.Join(w.Dir(), "memory.swap.max"); readOr(swap) != "" {
		require.NoError(t, writeFile(swap, "0"), "no swap, so that the limit is reached")
	}
	before, err := w.Events()
	require.NoError(t, err)

	exe, err := os.Executable()
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=allocate", "FORKD_CGROUP_BYTES="+strconv.Itoa(256<<20))
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	w.SetSysProcAttr(cmd.SysProcAttr)
	err = cmd.Run()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "the allocating worker must be killed, got %v", err)
	assert.Equal(t, syscall.SIGKILL, exit.Sys().(syscall.WaitStatus).Signal())

	after, err := w.Events()
	require.NoError(t, err)
	assert.Greater(t, after.OOMKill, before.OOMKill)
	assert.Greater(t, after.Max, before.Max)
	eventually(t, "the cgroup to empty", func() bool { p, _ := w.Populated(); return !p })
	require.NoError(t, w.Remove())
}

// A controller /proc/cgroups gives a v1 hierarchy is one cgroup v2 never offers; the status says
// so instead of only "not offered".
func TestBoundToV1(t *testing.T) {
	hybrid := "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\nmemory\t4\t50\t1\npids\t0\t1\t1\n"
	assert.True(t, boundToV1("memory", hybrid))
	assert.False(t, boundToV1("pids", hybrid), "hierarchy 0: cgroup v2's, or none")
	assert.False(t, boundToV1("io", hybrid), "not listed")
	assert.False(t, boundToV1("memory", ""))
}
