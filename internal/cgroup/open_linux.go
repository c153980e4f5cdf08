package cgroup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// initCgroupNamespace is the inode of the initial cgroup namespace (PROC_CGROUP_INIT_INO in
// include/linux/proc_ns.h): a process that sees it is not in a container's cgroup namespace.
const initCgroupNamespace = 0xEFFFFFFB

// Open finds forkd's cgroup, makes sure forkd may manage the subtree below it, moves the master
// into R/master and enables opts' controllers for the workers. It returns an *Unavailable error
// when forkd may not: no cgroup v2, the host's root cgroup, a systemd unit without Delegate=yes,
// a cgroup forkd cannot write. Then forkd runs without cgroups, and the error says why.
//
// Open is also right after a hot restart, in the new image: the master is in R/master already,
// and the workers' cgroups are there to be opened again (OpenWorker).
func Open(opts Options) (*Tree, error) {
	procCgroup, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, unavailable("cannot read /proc/self/cgroup: " + err.Error())
	}
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, unavailable("cannot read /proc/self/mountinfo: " + err.Error())
	}
	p, err := unifiedPath(string(procCgroup))
	if err != nil {
		return nil, unavailable(err.Error())
	}
	dir, err := cgroupDir(cgroup2Mounts(string(mountinfo)), p)
	if err != nil {
		return nil, unavailable(err.Error())
	}
	return open(dir, p, opts)
}

// open is Open for the cgroup directory dir, whose path in the hierarchy is p.
func open(dir, p string, opts Options) (*Tree, error) {
	root := dir
	if filepath.Base(dir) == MasterLeaf {
		// Moved there by an earlier Open of this same process: a hot restart.
		root = filepath.Dir(dir)
		p = filepath.Dir(p)
	}
	if p == "/" && inInitialCgroupNamespace() {
		return nil, unavailable("forkd runs in the host's root cgroup, which belongs to the init system " +
			"(run forkd as a systemd service with Delegate=yes, or in a container with a cgroup namespace)")
	}
	if err := checkDelegated(root); err != nil {
		return nil, err
	}
	if typ, err := readLine(filepath.Join(root, "cgroup.type")); err == nil && typ != "domain" {
		return nil, unavailable(root + " is a " + typ + " cgroup: worker cgroups need a domain cgroup")
	}
	master := filepath.Join(root, MasterLeaf)
	if dir != master {
		if err := checkOwn(root, master); err != nil {
			return nil, err
		}
	}
	if err := os.Mkdir(master, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, unavailable(notWritable(root, err))
	}
	if dir != master {
		if err := writeFile(filepath.Join(master, "cgroup.procs"), strconv.Itoa(os.Getpid())); err != nil {
			return nil, unavailable("cannot move forkd into " + master + ": " + errText(err))
		}
	}
	t := &Tree{dir: root}
	wanted := opts.Controllers
	if wanted == nil {
		wanted = DefaultControllers
	}
	t.enable(wanted)
	return t, nil
}

// checkDelegated refuses a cgroup that systemd manages for a unit without Delegate=yes: systemd
// owns such a cgroup's subtree and may move or remove what it finds there. systemd marks a
// delegated cgroup with the xattrs trusted.delegate and user.delegate set to "1". Only root reads
// trusted.* (to anyone else it does not exist), and root may write any cgroup, so the marks
// decide for root; for another user, whether the cgroup is writable does (Open's mkdir), since
// systemd chowns a delegated cgroup to the unit's User=.
func checkDelegated(root string) error {
	base := filepath.Base(root)
	if os.Geteuid() != 0 || !strings.HasSuffix(base, ".service") && !strings.HasSuffix(base, ".scope") {
		return nil
	}
	for _, name := range []string{"trusted.delegate", "user.delegate"} {
		v, err := getxattr(root, name)
		switch {
		case err == nil && v == "1":
			return nil
		case err != nil && !errors.Is(err, unix.ENODATA):
			return nil // ENOTSUP: a kernel without xattrs on cgroupfs; no marks to go by
		}
	}
	return unavailable(base + " does not delegate its cgroup to forkd (add Delegate=yes to the unit)")
}

// checkOwn refuses a cgroup that forkd shares: with other processes (a shell's, in the scope of a
// terminal), which would stay behind in it and keep it from handing controllers down; or with
// another forkd, already in its master leaf, whose workers' cgroups would be this one's too.
func checkOwn(root, master string) error {
	self := os.Getpid()
	others := func(dir string) []int {
		pids, _ := readPIDs(filepath.Join(dir, "cgroup.procs"))
		return slices.DeleteFunc(pids, func(pid int) bool { return pid == self })
	}
	if pids := others(master); len(pids) > 0 {
		return unavailable(fmt.Sprintf("another forkd (pid %d) runs in %s: give each forkd a cgroup of its own (a unit of its own, with Delegate=yes)", pids[0], root))
	}
	if pids := others(root); len(pids) > 0 {
		return unavailable(fmt.Sprintf("%s holds other processes than forkd (pid %s): forkd needs a cgroup of its own "+
			"(a unit with Delegate=yes; from a shell, systemd-run --scope -p Delegate=yes forkd ...)", root, joinPIDs(pids, 3)))
	}
	return nil
}

// joinPIDs lists up to n PIDs, and how many more there are.
func joinPIDs(pids []int, n int) string {
	var b strings.Builder
	for i, pid := range pids {
		if i == n {
			fmt.Fprintf(&b, " and %d more", len(pids)-n)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Itoa(pid))
	}
	return b.String()
}

func getxattr(file, name string) (string, error) {
	buf := make([]byte, 16)
	n, err := unix.Getxattr(file, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func inInitialCgroupNamespace() bool {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/cgroup", &st); err != nil {
		return true // no cgroup namespaces (Linux before 4.6): the host's
	}
	return st.Ino == initCgroupNamespace
}

func notWritable(dir string, err error) string {
	if errors.Is(err, unix.EROFS) {
		return dir + " is on a read-only mount (under systemd: ProtectControlGroups=no and Delegate=yes in the unit; " +
			"in a container: a read-write /sys/fs/cgroup)"
	}
	if errors.Is(err, fs.ErrPermission) {
		return dir + " is not writable by uid " + strconv.Itoa(os.Geteuid()) +
			" (under systemd: Delegate=yes in the unit; in a container: a cgroup namespace and a read-write /sys/fs/cgroup)"
	}
	return "cannot create a cgroup in " + dir + ": " + errText(err)
}

// enable turns on the wanted controllers that t.dir offers in its cgroup.subtree_control, one at
// a time, so that one refused does not take the others with it, and notes the missing ones.
func (t *Tree) enable(wanted []string) {
	offered := strings.Fields(readOr(filepath.Join(t.dir, "cgroup.controllers")))
	enabled := strings.Fields(readOr(filepath.Join(t.dir, "cgroup.subtree_control")))
	for _, c := range wanted {
		switch {
		case slices.Contains(enabled, c):
			t.controllers = append(t.controllers, c)
		case !slices.Contains(offered, c):
			why := c + ": not offered by " + t.dir
			if procCgroups, err := os.ReadFile("/proc/cgroups"); err == nil && boundToV1(c, string(procCgroups)) {
				// Worded for any controller, so that String says it once for all of them.
				why += " (bound to a cgroup v1 hierarchy on this host, and a controller belongs to one " +
					"hierarchy only: boot with systemd.unified_cgroup_hierarchy=1 for cgroup v2)"
			}
			t.missing = append(t.missing, why)
		default:
			err := writeFile(filepath.Join(t.dir, "cgroup.subtree_control"), "+"+c)
			switch {
			case err == nil:
				t.controllers = append(t.controllers, c)
			case errors.Is(err, unix.EBUSY):
				// The no-internal-processes rule: something besides the master still runs in R.
				procs, _ := readPIDs(filepath.Join(t.dir, "cgroup.procs"))
				t.missing = append(t.missing, fmt.Sprintf("%s: %s holds processes of its own (%v), so it cannot hand controllers to its children", c, t.dir, procs))
			default:
				t.missing = append(t.missing, c+": "+errText(err))
			}
		}
	}
}

// Workers lists the worker cgroups below the tree, by name: after a hot restart, those of the
// adopted workers and of workers that exited meanwhile.
func (t *Tree) Workers() ([]string, error) {
	entries, err := os.ReadDir(t.dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), workerPrefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// boundToV1 reports whether controller is bound to a cgroup v1 hierarchy, as /proc/cgroups (the
// kernel's, the same in every namespace) says: a non-zero hierarchy ID. Such a controller is
// never offered in cgroup v2: a hybrid host's memory controller, say.
func boundToV1(controller, procCgroups string) bool {
	for _, line := range strings.Split(procCgroups, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == controller {
			return f[1] != "0"
		}
	}
	return false
}
