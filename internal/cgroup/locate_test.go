package cgroup

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Three machines' /proc/self/mountinfo, cut to what matters: a hybrid host (cgroup v1
// controllers, and the v2 hierarchy at /sys/fs/cgroup/unified without them), a pure cgroup v2
// host, and a container that sees only its own subtree of the host's hierarchy.
const (
	hybridMountinfo = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	unifiedMountinfo = `22 26 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
25 23 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`
	containerMountinfo = `700 690 0:23 /system.slice/docker-ab12.scope /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate
`
)

func TestUnifiedPath(t *testing.T) {
	for _, tt := range []struct {
		name, procCgroup, want, err string
	}{
		{"hybrid", "9:name=systemd:/system.slice/forkd.service\n4:memory:/system.slice/forkd.service\n0::/system.slice/forkd.service\n", "/system.slice/forkd.service", ""},
		{"unified", "0::/system.slice/forkd.service\n", "/system.slice/forkd.service", ""},
		{"namespace root", "0::/\n", "/", ""},
		{"v1 only", "9:name=systemd:/user.slice\n4:memory:/user.slice\n", "", "cgroup v1 only"},
		{"outside the namespace", "0::/../../sibling\n", "", "outside its cgroup namespace"},
		{"relative", "0::foo\n", "", "malformed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := unifiedPath(tt.procCgroup)
			if tt.err != "" {
				assert.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestCgroupDir(t *testing.T) {
	for _, tt := range []struct {
		name, mountinfo, path, want, err string
	}{
		{"hybrid", hybridMountinfo, "/system.slice/forkd.service", "/sys/fs/cgroup/unified/system.slice/forkd.service", ""},
		{"unified", unifiedMountinfo, "/system.slice/forkd.service", "/sys/fs/cgroup/system.slice/forkd.service", ""},
		{"unified root", unifiedMountinfo, "/", "/sys/fs/cgroup", ""},
		// Without a cgroup namespace, a container's /proc/self/cgroup shows the host's path,
		// and its mount shows the subtree from there.
		{"container subtree", containerMountinfo, "/system.slice/docker-ab12.scope/app", "/sys/fs/cgroup/app", ""},
		{"container root", containerMountinfo, "/system.slice/docker-ab12.scope", "/sys/fs/cgroup", ""},
		{"not under the mount", containerMountinfo, "/system.slice/other.scope", "", "not visible"},
		{"prefix is not a parent", containerMountinfo, "/system.slice/docker-ab12.scopex", "", "not visible"},
		{"no cgroup2 mount", `35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory` + "\n", "/", "", "no cgroup2 filesystem"},
		{"escaped mount point", `25 23 0:23 / /mnt/cg\040two rw - cgroup2 cgroup2 rw` + "\n", "/a", "/mnt/cg two/a", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cgroupDir(cgroup2Mounts(tt.mountinfo), tt.path)
			if tt.err != "" {
				assert.ErrorContains(t, err, tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestUnescapeMount(t *testing.T) {
	assert.Equal(t, "a b\tc\\d", unescapeMount(`a\040b\011c\134d`))
	assert.Equal(t, `trailing\04`, unescapeMount(`trailing\04`))
	assert.Equal(t, `not\999octal`, unescapeMount(`not\999octal`))
}

// A memory.stat and a memory.events as Linux 6.1 writes them, cut short.
const (
	memoryStat = `anon 52502528
file 8192000
kernel 1212416
kernel_stack 98304
pagetables 339968
sock 4096
shmem 40960
file_mapped 4505600
workingset_refault_anon 0
`
	memoryEvents = `low 0
high 3
max 17
oom 2
oom_kill 1
oom_group_kill 1
`
)

func TestMemoryFromStat(t *testing.T) {
	m := memoryFrom(61_000_000, parseKeyed([]byte(memoryStat)))
	assert.Equal(t, Memory{
		Current: 61_000_000, Anon: 52502528, File: 8192000, Shmem: 40960, Kernel: 1212416, Sock: 4096,
		Stat: m.Stat,
	}, m)
	assert.Equal(t, uint64(4505600), m.Stat["file_mapped"])
	assert.Len(t, m.Stat, 9)

	assert.Equal(t, MemoryEvents{High: 3, Max: 17, OOM: 2, OOMKill: 1, OOMGroupKill: 1},
		memoryEventsFrom(parseKeyed([]byte(memoryEvents))))
}

func TestTreeString(t *testing.T) {
	tree := &Tree{dir: "/sys/fs/cgroup/system.slice/forkd.service", controllers: []string{"memory", "pids"}}
	assert.Equal(t, "cgroups on: /sys/fs/cgroup/system.slice/forkd.service (memory, pids)", tree.String())
	tree = &Tree{dir: "/c", missing: []string{"memory: not offered by /c", "pids: not offered by /c"}}
	assert.Equal(t, "cgroups on: /c (no controllers; no memory, pids: not offered by /c)", tree.String())
	tree = &Tree{dir: "/c", controllers: []string{"pids"}, missing: []string{"memory: not offered by /c", "io: permission denied"}}
	assert.Equal(t, "cgroups on: /c (pids; no memory: not offered by /c; no io: permission denied)", tree.String())
	assert.EqualError(t, unavailable("no cgroup v2"), "cgroups off: no cgroup v2")
}
