package systemd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// cannotRun is why the suite cannot run on this machine (not root, no nspawn, no network for
// debootstrap, ...): the test skips with it, or fails under FORKD_E2E_REQUIRED=1.
type cannotRun struct{ reason string }

func (c *cannotRun) Error() string { return c.reason }

func cannot(format string, args ...any) error {
	return &cannotRun{reason: fmt.Sprintf(format, args...)}
}

// rootfsPackages are installed into the rootfs beside debootstrap's minbase: systemd and dbus to
// boot, procps for kill and pgrep, python3 and python3-gunicorn for the demo app (forkd.gunicorn).
// Changing the list (or rootfsRecipe) rebuilds the cached rootfs.
var rootfsPackages = []string{"systemd", "dbus", "procps", "python3", "python3-gunicorn"}

// rootfsRecipe versions the cached rootfs: bump it when the way it is built changes.
const rootfsRecipe = "forkd-e2e rootfs v1"

// checkHost makes sure the host can run the suite, installing systemd-nspawn and debootstrap
// when they are missing.
func checkHost(ctx context.Context, logf func(string, ...any)) error {
	if os.Geteuid() != 0 {
		return cannot("not root: systemd-nspawn, overlay mounts and debootstrap need root (run make e2e as root)")
	}
	if runtime.GOOS != "linux" {
		return cannot("not Linux")
	}
	if !strings.Contains(readFile("/proc/filesystems"), "\toverlay\n") {
		// The module may be loadable.
		_, _, _, _ = runCommand(ctx, "modprobe", "overlay")
		if !strings.Contains(readFile("/proc/filesystems"), "\toverlay\n") {
			return cannot("the kernel has no overlayfs (the cached rootfs is booted through an overlay)")
		}
	}
	if _, err := cgroupDirs("probe"); err != nil {
		return cannot("%v", err)
	}
	var missing []string
	for _, tool := range []string{"systemd-nspawn", "debootstrap", "nsenter", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return cannot("%s not installed, and no apt-get to install them", strings.Join(missing, ", "))
	}
	// systemd-container pulls in the systemd of the host's release and upgrades the host's
	// systemd libraries with it (libsystemd0, libudev1): harmless on a CI machine, worth knowing
	// on a workstation.
	logf("installing systemd-container and debootstrap (missing: %s); this upgrades the host's systemd libraries in lockstep",
		strings.Join(missing, ", "))
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	env := []string{"DEBIAN_FRONTEND=noninteractive"}
	if out, code, err := runEnv(ctx, env, "apt-get", "update", "-qq"); err != nil || code != 0 {
		return cannot("apt-get update failed (no network to the Debian mirror?): %v %s", err, tail(out, 10))
	}
	if out, code, err := runEnv(ctx, env, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
		"systemd-container", "debootstrap"); err != nil || code != 0 {
		return cannot("apt-get install systemd-container debootstrap failed: %v %s", err, tail(out, 10))
	}
	logf("apt-get install: %.1fs", time.Since(t0).Seconds())
	for _, tool := range missing {
		if _, err := exec.LookPath(tool); err != nil {
			return cannot("%s still missing after apt-get install", tool)
		}
	}
	return nil
}

func runEnv(ctx context.Context, env []string, name string, args ...string) (string, int, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(out), exit.ExitCode(), nil
	}
	if err != nil {
		return string(out), -1, err
	}
	return string(out), 0, nil
}

// rootfsCache is the cached rootfs, shared by every run on the machine. A run holds its lock
// shared for as long as it uses the rootfs (an overlay's lower directory must not change under
// it), and exclusive while it builds it.
type rootfsCache struct {
	dir  string // the rootfs
	lock *os.File
}

func (r *rootfsCache) release() {
	if r.lock != nil {
		r.lock.Close()
	}
}

// openRootfs returns the cached rootfs of suite, building it with debootstrap when it is missing
// or was built by another recipe.
func openRootfs(ctx context.Context, cacheDir, suite, mirror string, logf func(string, ...any)) (*rootfsCache, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, cannot("cannot create the rootfs cache %s: %v", cacheDir, err)
	}
	lock, err := os.OpenFile(filepath.Join(cacheDir, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	r := &rootfsCache{dir: filepath.Join(cacheDir, "rootfs-"+suite), lock: lock}
	recipe := fmt.Sprintf("%s\nsuite %s\npackages %s\n", rootfsRecipe, suite, strings.Join(rootfsPackages, ","))
	stamp := filepath.Join(r.dir, ".forkd-e2e-recipe")

	if err := flock(ctx, lock, syscall.LOCK_EX); err != nil {
		r.release()
		return nil, err
	}
	if readFile(stamp) != recipe {
		t0 := time.Now()
		logf("building the rootfs in %s with debootstrap (%s, %s); later runs reuse it", r.dir, suite, mirror)
		if err := debootstrap(ctx, cacheDir, r.dir, suite, mirror, recipe, stamp); err != nil {
			r.release()
			return nil, err
		}
		logf("debootstrap: %.1fs", time.Since(t0).Seconds())
	} else {
		logf("rootfs: cached in %s", r.dir)
	}
	// Shared from here on: other runs may use it, none may rebuild it.
	if err := flock(ctx, lock, syscall.LOCK_SH); err != nil {
		r.release()
		return nil, err
	}
	return r, nil
}

func flock(ctx context.Context, f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the rootfs lock %s (another run?): %w", f.Name(), ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// debootstrap builds the rootfs beside its final place and renames it there once complete, so that
// an interrupted build never looks like a cached rootfs.
func debootstrap(ctx context.Context, cacheDir, dir, suite, mirror, recipe, stamp string) error {
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	log := filepath.Join(cacheDir, "debootstrap-"+suite+".log")
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	out, code, err := runEnv(ctx, nil, "debootstrap", "--variant=minbase",
		"--include="+strings.Join(rootfsPackages, ","), suite, tmp, mirror)
	_ = os.WriteFile(log, []byte(out), 0o644)
	if err != nil || code != 0 {
		_ = os.RemoveAll(tmp)
		why := fmt.Sprintf("exit %d", code)
		if err != nil {
			why = err.Error()
		}
		return cannot("debootstrap %s from %s failed (no network to the mirror?): %s; see %s:\n%s",
			suite, mirror, why, log, tail(out, 15))
	}
	if _, err := os.Stat(filepath.Join(tmp, "lib/systemd/systemd")); err != nil {
		return cannot("debootstrap made a rootfs without systemd: %v", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".forkd-e2e-recipe"), []byte(recipe), 0o644); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Rename(tmp, dir)
}

// hostMirror is the Debian mirror the host's apt uses, or deb.debian.org.
func hostMirror() string {
	for _, path := range []string{"/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			switch {
			case len(fields) >= 2 && fields[0] == "URIs:":
				f.Close()
				return fields[1]
			case len(fields) >= 3 && fields[0] == "deb":
				for _, u := range fields[1:] {
					if strings.HasPrefix(u, "http") && !strings.Contains(u, "security") {
						f.Close()
						return u
					}
				}
			}
		}
		f.Close()
	}
	return "http://deb.debian.org/debian"
}
