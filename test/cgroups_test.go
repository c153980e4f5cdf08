package test

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/control"
)

// cgroupForForkd makes a fresh cgroup v2 for one forkd, as a unit with Delegate=yes has (below the
// cgroup2 mount's root: this host's own, not a container's), removed at the test's end, and returns
// it with an O_PATH descriptor to start forkd in it. It skips, saying why, where none can be made.
func cgroupForForkd(t *testing.T) (string, int) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cgroups: making a cgroup for forkd needs root")
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	require.NoError(t, err)
	var mount string
	sc := bufio.NewScanner(strings.NewReader(string(mountinfo)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if i := slices.Index(f, "-"); i > 0 && i+1 < len(f) && f[i+1] == "cgroup2" && f[3] == "/" {
			mount = f[4]
			break
		}
	}
	if mount == "" {
		t.Skip("cgroups: no cgroup2 hierarchy mounted at its root here (cgroup v1 only, or a container's subtree)")
	}
	dir := filepath.Join(mount, fmt.Sprintf("forkd-test-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-")))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cgroups: no writable cgroup v2 here: %v", err)
	}
	t.Cleanup(func() { removeCgroup(t, dir) })
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return dir, fd
}

// removeCgroup kills what is left below dir and removes it, deepest first.
func removeCgroup(t *testing.T, dir string) {
	_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.Reverse(dirs)
	for _, d := range dirs {
		end := time.Now().Add(deadline)
		for unix.Rmdir(d) == unix.EBUSY && time.Now().Before(end) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("cleanup: %s is still there", dir)
	}
}

// cgroupOfPID is the last element of pid's cgroup v2 path ("worker-1-2"), "" if it is gone.
func cgroupOfPID(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(b)) {
		if p, ok := strings.CutPrefix(strings.TrimSpace(line), "0::"); ok {
			return filepath.Base(p)
		}
	}
	return ""
}

// TestWorkersInCgroupsOfTheirOwn: forkd started in a cgroup of its own (as under Delegate=yes)
// moves itself into its master leaf and runs each worker in a cgroup of its own. A worker killed
// by forkd (here for a missed heartbeat) takes its whole tree along, a helper that left its
// session included, which the process group misses: without cgroup.kill the helper, which ignores
// SIGTERM, would live until the stray's shutdown timeout (10 minutes here).
func TestWorkersInCgroupsOfTheirOwn(t *testing.T) {
	t.Parallel()
	dir, fd := cgroupForForkd(t)
	helperDir := t.TempDir()
	// The worker: a helper in a session of its own, then no heartbeat (and no READY=1 needed:
	// readiness "started"), so forkd kills it once the heartbeat timeout passes.
	script := `trap '' TERM; setsid sleep 3600 & echo $! >` + helperDir + `/helper-$$; exec sleep 3600`
	f := startForkd(t, options{cgroupFD: fd, config: fmt.Sprintf(`command = ["/bin/sh", "-c", %q]
workers = 2
readiness = "started"
timeouts {
  worker   = "3s"
  shutdown = "10m"
}
`, script)})
	st := f.waitFor("2 workers", func(st control.Status) bool { return len(workerPIDs(st)) == 2 })
	require.True(t, strings.HasPrefix(st.Cgroups, "on: "+dir+" "), "status: cgroups: %s", st.Cgroups)
	assert.Equal(t, "master", cgroupOfPID(st.MasterPID))
	first := map[int]int{}      // worker → its helper
	cgroups := map[int]string{} // worker → its cgroup
	for _, w := range st.WorkerList {
		cgroups[w.PID] = cgroupOfPID(w.PID)
		assert.Regexp(t, fmt.Sprintf(`^worker-%d-\d+$`, w.Index), cgroups[w.PID], "worker %d's cgroup", w.Index)
		var helper int
		waitUntil(t, "the worker's helper", func() bool {
			b, err := os.ReadFile(filepath.Join(helperDir, "helper-"+strconv.Itoa(w.PID)))
			helper, _ = strconv.Atoi(strings.TrimSpace(string(b)))
			return err == nil && helper != 0
		})
		if cg := cgroupOfPID(helper); cg != "" { // "": killed with its worker already
			assert.Equal(t, cgroups[w.PID], cg, "the helper is in its worker's cgroup")
		}
		first[w.PID] = helper
	}
	out, code := f.forkctl("status")
	require.Equal(t, 0, code, out)
	assert.Regexp(t, `(?m)^cgroups:\s+on: /`, out)

	// forkd kills each worker for its missed heartbeat: its helper dies with it, and its cgroup
	// is removed.
	for worker, helper := range first {
		cg := filepath.Join(dir, cgroups[worker])
		waitUntil(t, fmt.Sprintf("worker %d and its setsid helper %d to be killed", worker, helper), func() bool {
			return processGone(worker) && processGone(helper)
		})
		waitUntil(t, cg+" to be removed", func() bool { _, err := os.Stat(cg); return os.IsNotExist(err) })
	}
	assert.Contains(t, f.output.String(), "heartbeat timeout")
	if !strings.Contains(st.Cgroups, "memory") || strings.Contains(st.Cgroups, "no memory") {
		t.Logf("no memory controller here (%s): per-worker memory and limits are shown by the systemd e2e suite where there is one", st.Cgroups)
	}
	f.forkctl("stop", "--immediate")
	f.waitExit()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		assert.False(t, e.IsDir() && strings.HasPrefix(e.Name(), "worker-"), "%s left behind", e.Name())
	}
}
