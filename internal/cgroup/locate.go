package cgroup

import (
	"bufio"
	"errors"
	"path"
	"strconv"
	"strings"
)

// This file finds a process's cgroup v2 directory from the text of /proc/PID/cgroup and
// /proc/PID/mountinfo. It is pure, so that the layouts of other machines (a pure cgroup v2
// host, a hybrid one, a container) are tested here as text.

// errNoUnified is a /proc/PID/cgroup without a cgroup v2 line: a cgroup v1 only system.
var errNoUnified = errors.New("no cgroup v2 hierarchy (this system mounts cgroup v1 only; boot with systemd.unified_cgroup_hierarchy=1)")

// unifiedPath returns the cgroup v2 path of /proc/PID/cgroup's text: the "0::PATH" line. The path
// is relative to the root of the reader's cgroup namespace.
func unifiedPath(procCgroup string) (string, error) {
	for line := range strings.Lines(procCgroup) {
		line = strings.TrimSuffix(line, "\n")
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			if !strings.HasPrefix(p, "/") {
				return "", errors.New("malformed cgroup v2 path " + strconv.Quote(p) + " in /proc/self/cgroup")
			}
			if p == "/.." || strings.HasPrefix(p, "/../") {
				// A cgroup above the root of the reader's cgroup namespace (it was moved out
				// after the namespace was made): no path under the mount names it.
				return "", errors.New("forkd's cgroup " + p + " is outside its cgroup namespace")
			}
			return p, nil
		}
	}
	return "", errNoUnified
}

// mount is one line of /proc/PID/mountinfo, the fields this package needs.
type mount struct {
	root, point string
}

// cgroup2Mounts returns the cgroup2 mounts listed in mountinfo's text (proc(5)): the root of the
// hierarchy each one shows (field 4), where it is mounted (field 5), and the filesystem type
// after the " - " separator. A hybrid host mounts it at /sys/fs/cgroup/unified, a pure cgroup v2
// one at /sys/fs/cgroup; a container may show only a subtree of it.
func cgroup2Mounts(mountinfo string) []mount {
	var mounts []mount
	sc := bufio.NewScanner(strings.NewReader(mountinfo))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" && i >= 6 {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || fields[sep+1] != "cgroup2" {
			continue
		}
		mounts = append(mounts, mount{root: unescapeMount(fields[3]), point: unescapeMount(fields[4])})
	}
	return mounts
}

// unescapeMount undoes mountinfo's octal escapes of space, tab, newline and backslash ("\040").
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupDir returns the directory of the cgroup at path (from unifiedPath) under the first cgroup2
// mount that shows it: the mount point, joined with path relative to the mount's root.
func cgroupDir(mounts []mount, cgroupPath string) (string, error) {
	if len(mounts) == 0 {
		return "", errors.New("no cgroup2 filesystem is mounted (on a systemd host it is at /sys/fs/cgroup or /sys/fs/cgroup/unified)")
	}
	for _, m := range mounts {
		rel, ok := within(m.root, cgroupPath)
		if ok {
			return path.Join(m.point, rel), nil
		}
	}
	return "", errors.New("forkd's cgroup " + cgroupPath + " is not visible under any cgroup2 mount (" + mounts[0].point + " shows " + mounts[0].root + ")")
}

// within reports whether p is root or below it, and p relative to root.
func within(root, p string) (string, bool) {
	root, p = path.Clean(root), path.Clean(p)
	if root == "/" {
		return p, true
	}
	if p == root {
		return "/", true
	}
	if rest, ok := strings.CutPrefix(p, root+"/"); ok {
		return "/" + rest, true
	}
	return "", false
}
