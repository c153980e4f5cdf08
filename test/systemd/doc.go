// Package systemd is forkd's end-to-end suite under a real systemd: it boots systemd (PID 1 of a
// container) in systemd-nspawn on a debootstrap'd Debian rootfs, installs the .deb that
// `make package` built, and runs scenarios against forkd@.service and forkd@.socket exactly as an
// operator would: systemctl, forkctl, journalctl, and connections from the host.
//
// Run it with `make e2e` (it builds the package first), as root:
//
//	make e2e
//	FORKD_E2E=1 FORKD_E2E_DEB=packaging/dist/forkd_..._amd64.deb go test -v -count=1 ./test/systemd
//
// Without FORKD_E2E=1 the test skips at once, so `go test ./...` stays fast. With it, the suite
// needs root, systemd-nspawn and debootstrap (it installs both with apt-get when they are missing;
// note that systemd-container upgrades the host's systemd libraries in lockstep), and, the first
// time, network access to a Debian mirror. When any of that is missing it skips and says why;
// FORKD_E2E_REQUIRED=1 turns those skips into failures (CI).
//
// Environment:
//
//	FORKD_E2E=1             run at all
//	FORKD_E2E_REQUIRED=1    fail instead of skipping when the suite cannot run
//	FORKD_E2E_DEB           the .deb to install (default: the one packaging/dist/forkd_*.deb)
//	FORKD_E2E_CACHE         where the rootfs is cached (default /var/cache/forkd-e2e)
//	FORKD_E2E_SUITE         the Debian suite of the rootfs (default bookworm: systemd 252)
//	FORKD_E2E_MIRROR        the Debian mirror (default: the host's, else deb.debian.org)
//	FORKD_E2E_RUN           a regular expression: run only the scenarios whose name matches
//	FORKD_E2E_KEEP=1        leave the container running at the end, and say how to enter it
//
// The rootfs (debootstrap --variant=minbase plus systemd, dbus, procps, python3 and
// python3-gunicorn) is built once
// and cached; each run boots it through an overlayfs mount, so the cache is never modified and
// every run starts from the same state. The container shares the host's network namespace: the
// host connects to the sockets systemd opens in it at 127.0.0.1. nspawn runs in a cgroup of its
// own; the container is always torn down, also when the test binary dies (the nspawn process gets
// SIGTERM from the kernel then), and a later run removes whatever a killed run left behind.
//
// It is written for, and tested on, hosts whose PID 1 is not systemd (CI machines, Debian 12 with
// the cgroup hybrid layout); a pure cgroup v2 host is handled (cgroupDirs) but untested.
//
// The demo apps: examples/python/app.py on gunicorn's threaded worker (forkd.gunicorn, the Python
// SDK) in fork-worker mode (forkd@demo), with a
// GET /print route added (printRoute: a line on stdout and one on stderr, for the worker-output
// scenario), and examples/hello built statically in exec mode (forkd@hello, forkd@plain on the
// template socket's default unix socket, the single-app forkd.service, and forkd-fdstore.service:
// the packaged forkd.service without forkd.socket, where forkd binds the socket itself and hands it
// to systemd's fd store, for the fd-store scenario).
package systemd
