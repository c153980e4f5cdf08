package cgroup

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startIn starts /bin/sleep as attr makes it (Prepare's), stopped at the test's end.
func startIn(t *testing.T, attr *syscall.SysProcAttr) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/bin/sleep", "600")
	cmd.SysProcAttr = attr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// The life of the workers' cgroups as the driver leads it: an exec'd template born in its
// cgroup, a worker it forks moved into its own, both killed whole, their cgroups gone with them.
func TestSetFollowsTheWorkers(t *testing.T) {
	tree := testTree(t)
	set := NewSet(tree, Limits{}, nil)

	attr := &syscall.SysProcAttr{}
	require.NoError(t, set.Prepare(0, 1, attr))
	template := startIn(t, attr)
	assert.Equal(t, hierarchyPath(t, filepath.Join(tree.Dir(), "worker-0-1")), cgroupOf(t, template.Process.Pid))

	// The template's fork is born in the template's cgroup (here: started there), and moved once
	// its PID is known.
	set.Expect(1, 2, 1)
	forked := startIn(t, attr)
	require.NoError(t, set.Place(2, forked.Process.Pid))
	assert.Equal(t, hierarchyPath(t, filepath.Join(tree.Dir(), "worker-1-2")), cgroupOf(t, forked.Process.Pid))
	require.NoError(t, set.Place(2, forked.Process.Pid), "a second report of its PID (hello, then the reply) does nothing")

	// A PID that is not in the template's cgroup is never moved: the app could name any process.
	set.Expect(2, 3, 1)
	stranger := startIn(t, &syscall.SysProcAttr{})
	assert.ErrorContains(t, set.Place(3, stranger.Process.Pid), "is not in the template's cgroup")
	assert.NotContains(t, cgroupOf(t, stranger.Process.Pid), "worker-2-3")
	assert.NoDirExists(t, filepath.Join(tree.Dir(), "worker-2-3"))

	killed, err := set.Kill(2)
	require.NoError(t, err)
	assert.True(t, killed)
	_ = forked.Wait()
	oom, _ := set.Exited(2)
	assert.False(t, oom)
	eventually(t, "worker-1-2 to be removed", func() bool {
		set.Sweep()
		_, err := os.Stat(filepath.Join(tree.Dir(), "worker-1-2"))
		return os.IsNotExist(err)
	})

	killed, err = set.Kill(99)
	require.NoError(t, err)
	assert.False(t, killed, "a worker without a cgroup")
}

// A worker that exits leaving a helper behind: its cgroup stays until the helper is gone, KillGone
// takes the helper, and Sweep the cgroup.
func TestSetKeepsACgroupUntilItEmpties(t *testing.T) {
	tree := testTree(t)
	set := NewSet(tree, Limits{}, nil)
	attr := &syscall.SysProcAttr{}
	require.NoError(t, set.Prepare(0, 1, attr))
	var tr map[string]int
	h := startHelperWith(t, "tree", attr, &tr)
	helper := tr["child"]
	require.NotZero(t, helper)
	h.stop() // the worker exits; its setsid child does not
	oom, _ := set.Exited(1)
	assert.False(t, oom)
	assert.Equal(t, 1, set.Leftovers())
	set.Sweep()
	assert.DirExists(t, filepath.Join(tree.Dir(), "worker-0-1"))
	assert.False(t, gone(helper))

	set.KillGone()
	eventually(t, "the helper to be killed", func() bool { return gone(helper) })
	assert.Zero(t, set.Drain(30*time.Second), "worker-0-1 to be removed")
	assert.NoDirExists(t, filepath.Join(tree.Dir(), "worker-0-1"))
}

// After a hot restart, the adopted workers' cgroups are theirs again, and the others', left
// empty by workers that exited meanwhile, are removed.
func TestSetAdoptsAfterAHotRestart(t *testing.T) {
	tree := testTree(t)
	before := NewSet(tree, Limits{}, nil)
	attr := &syscall.SysProcAttr{}
	require.NoError(t, before.Prepare(0, 1, attr))
	kept := startIn(t, attr)
	require.NoError(t, before.Prepare(1, 2, &syscall.SysProcAttr{}))

	after := NewSet(tree, Limits{}, []uint64{1})
	assert.Equal(t, filepath.Join(tree.Dir(), "worker-0-1"), after.Dir(1))
	assert.NoDirExists(t, filepath.Join(tree.Dir(), "worker-1-2"))
	killed, err := after.Kill(1)
	require.NoError(t, err)
	assert.True(t, killed)
	_ = kept.Wait()

	// A leftover that still holds processes is never reused for a new worker of that name.
	require.NoError(t, after.Prepare(2, 3, attr))
	startIn(t, attr)
	fresh := NewSet(tree, Limits{}, nil)
	assert.ErrorContains(t, fresh.Prepare(2, 3, &syscall.SysProcAttr{}), "left over from an earlier worker")
}

// Exited tells an OOM kill from memory.events (a fake cgroup: this host's cgroup v2 may have no
// memory controller), and says the memory.max it happened at.
func TestSetExitedReportsAnOOMKill(t *testing.T) {
	dir := t.TempDir()
	tree := &Tree{dir: dir, controllers: []string{"memory"}}
	for name, events := range map[string]string{
		"worker-0-1": "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n",
		"worker-1-2": "low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
	} {
		require.NoError(t, os.Mkdir(filepath.Join(dir, name), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name, "memory.events"), []byte(events), 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name, "memory.max"), []byte("268435456\n"), 0o644))
	}
	set := NewSet(tree, Limits{}, []uint64{1, 2})
	oom, memoryMax := set.Exited(1)
	assert.True(t, oom)
	assert.Equal(t, uint64(256<<20), memoryMax)
	oom, _ = set.Exited(2)
	assert.False(t, oom, "throttled past memory.high is no kill")
	oom, _ = set.Exited(3)
	assert.False(t, oom, "a worker without a cgroup")
}
