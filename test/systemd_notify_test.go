package test

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/forkd/forkd/pkg/control"
	"github.com/forkd/forkd/pkg/notify"
)

// fakeSystemd receives what forkd sends to systemd's NOTIFY_SOCKET, from forkd's PID only.
type fakeSystemd struct {
	sock *notify.Socket
	mu   sync.Mutex
	msgs []string
}

func newFakeSystemd(t *testing.T) *fakeSystemd {
	t.Helper()
	sock, err := notify.Listen(notify.NewAbstractAddr())
	require.NoError(t, err)
	s := &fakeSystemd{sock: sock}
	go func() {
		for {
			d, err := sock.Receive()
			if err != nil {
				return
			}
			d.Release()
			s.mu.Lock()
			s.msgs = append(s.msgs, string(d.Data))
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { sock.Close() })
	return s
}

// count returns how many messages so far contain s.
func (s *fakeSystemd) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.msgs {
		if strings.Contains(m, sub) {
			n++
		}
	}
	return n
}

func (s *fakeSystemd) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.msgs...)
}

func waitCount(t *testing.T, s *fakeSystemd, sub string, n int) {
	t.Helper()
	end := time.Now().Add(deadline)
	for s.count(sub) < n {
		require.True(t, time.Now().Before(end), "systemd never got %d x %q; it got %q", n, sub, s.all())
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSystemdNotifications: what systemd hears from forkd over a whole life: READY=1 with the
// STATUS line once every worker is ready, WATCHDOG=1 pings, RELOADING=1 with MONOTONIC_USEC then
// READY=1 around a reload, STOPPING=1 on stop.
func TestSystemdNotifications(t *testing.T) {
	t.Parallel()
	sd := newFakeSystemd(t)
	f := startForkd(t, options{config: worker() + "\nworkers = 2\n", systemd: sd.sock, watchdog: 400 * time.Millisecond})
	f.waitReady(2)
	waitCount(t, sd, "READY=1\nSTATUS=2/2 workers ready, generation 1", 1)
	waitCount(t, sd, "WATCHDOG=1", 3)

	out, code := f.forkctl("reload", "--wait")
	require.Equal(t, 0, code, out)
	waitCount(t, sd, "RELOADING=1\nMONOTONIC_USEC=", 1)
	waitCount(t, sd, "READY=1\nSTATUS=2/2 workers ready, generation 2", 1)

	f.signal(syscall.SIGTERM)
	assert.Equal(t, 0, f.waitExit())
	waitCount(t, sd, "STOPPING=1", 1)
	// Workers never talk to systemd's socket: everything here came from the master (the socket
	// would have got READY=1 from each worker otherwise).
	assert.Equal(t, 2, sd.count("READY=1"), "READY=1 at start and after the reload, from the master only: %q", sd.all())
}

// TestWatchdogWithheldWhileTooFewWorkersReady: with systemd.watchdog_min_ready, a cluster that
// stays down stops feeding systemd's watchdog, so systemd restarts it; once workers are back, the
// pings resume.
func TestWatchdogWithheldWhileTooFewWorkersReady(t *testing.T) {
	t.Parallel()
	sd := newFakeSystemd(t)
	broken := filepath.Join(t.TempDir(), "broken")
	f := startForkd(t, options{systemd: sd.sock, watchdog: 300 * time.Millisecond, config: worker("-crash-if-file", broken) + `
workers = 1
restart {
  backoff_min = "100ms"
  backoff_max = "200ms"
}
systemd {
  watchdog_min_ready = 1
}
`})
	st := f.waitReady(1)
	waitCount(t, sd, "WATCHDOG=1", 2)

	// The app breaks: every respawn exits at boot.
	require.NoError(t, os.WriteFile(broken, nil, 0o644))
	require.NoError(t, syscall.Kill(st.WorkerList[0].PID, syscall.SIGKILL))
	f.waitFor("the pings withheld", func(control.Status) bool {
		return strings.Contains(f.output.String(), "no more WATCHDOG=1")
	})
	held := sd.count("WATCHDOG=1")
	time.Sleep(time.Second) // three watchdog periods
	assert.Equal(t, held, sd.count("WATCHDOG=1"), "no WATCHDOG=1 while no worker is ready")

	// Fixed: the worker comes back and the pings resume.
	require.NoError(t, os.Remove(broken))
	f.waitReady(1)
	waitCount(t, sd, "WATCHDOG=1", held+2)
}

// TestLastStatusIsTheClustersWithReadinessStarted: with readiness = "started" a worker is ready as
// soon as it is spawned, which the master learns while it carries out the very actions that
// announced "starting: 0/2 workers ready". Whatever the order in which it learns things, the last
// STATUS= systemd hears is the cluster's own status, never that stale one.
func TestLastStatusIsTheClustersWithReadinessStarted(t *testing.T) {
	t.Parallel()
	sd := newFakeSystemd(t)
	f := startForkd(t, options{config: worker() + "\nworkers = 2\nreadiness = \"started\"\n", systemd: sd.sock})
	st := f.waitReady(2)
	waitCount(t, sd, "READY=1", 1)
	// Everything forkd sent before it answered the status is in the socket already; a marker sent
	// now is read after all of it.
	require.NoError(t, notify.Send(sd.sock.Addr(), "X_TEST=marker"))
	waitCount(t, sd, "X_TEST=marker", 1)
	var last string
	for _, m := range sd.all() {
		for _, line := range strings.Split(m, "\n") {
			if status, ok := strings.CutPrefix(line, "STATUS="); ok {
				last = status
			}
		}
	}
	assert.Equal(t, st.StatusLine, last, "systemd's last STATUS; it heard %q", sd.all())
	assert.Equal(t, "2/2 workers ready, generation 1", last)
}
