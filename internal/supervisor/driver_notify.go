package supervisor

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/notify"
)

// This file holds the workers' notify sockets. Each exec'd worker gets a NOTIFY_SOCKET of its own:
// a datagram socket the master binds for it, as a file (mode 0600) in a directory of the master's
// own (mode 0700), or at an abstract address. A datagram is the worker's when its sender is the
// worker or one of its descendants, as /proc tells while the sender lives. A sender that is gone
// by the time its datagram is read (a helper that notifies and exits at once, such as
// systemd-notify --no-block run by an unprivileged worker) cannot be traced, but only the worker's
// own processes know its socket: the socket says whose it is. And a datagram read after its worker
// exited is known as late rather than hostile.
//
// In fork-worker mode, the workers the template forks inherit the template's NOTIFY_SOCKET: that
// socket is shared, so only a sender /proc can trace (or a worker that just exited) is attributed
// there. A shared socket lives until the last worker that has it is gone.
//
// What a flood can cost is bounded: a datagram from a uid other than forkd's own and root's is
// dropped before anything else is looked at (a socket file already keeps other users out; an
// abstract one does not), drops are counted in bulk, walks of /proc beyond a direct child of the
// master are rate-limited, the readers take the next datagram at a bounded rate after one they
// dropped (a sender that can reach a socket would otherwise keep its reader busy as fast as it
// can send), and each socket has a reader of its own, so a flood on one socket only delays that
// socket's datagrams.

// NotifyConfig says where the driver binds the workers' notify sockets.
type NotifyConfig struct {
	// Dir is where the driver makes its own directory of socket files, notify-PID (mode 0700); it
	// is created if missing. Unused with Abstract.
	Dir string
	// Abstract binds abstract addresses ("@forkd/PID/RANDOM/ID") instead: no file, no permission.
	Abstract bool
}

// notifyDrainGrace is how long a notify socket is still read after the last process that had it is
// gone: what it sent just before exiting is already queued, and is read as late, not lost.
const notifyDrainGrace = 200 * time.Millisecond

// Walks of /proc for senders that are not the master's direct children (a worker's helper, on a
// shared socket) are limited to walkRate per second, with bursts of walkBurst: far more than any
// app's helpers send, far less than a flood.
const (
	walkRate  = 500
	walkBurst = 500
)

// After a datagram from a sender that is not the master's child (one it drops, or a worker's
// helper, traced further up), a reader takes a token of a bucket all readers share, paceRate a
// second in bursts of paceBurst, and waits when it is in debt by paceSleep: however cheap a drop,
// each datagram costs the master a receive and a read of /proc, and a flood from a process of
// forkd's own user (which can reach every socket) or from any user on an abstract socket would
// cost it a CPU. A worker's own datagram takes no token: it waits in the socket behind the flood,
// and its sender waits for room (the kernel queues only net.unix.max_dgram_qlen datagrams), for
// a few milliseconds at this rate.
const (
	paceRate  = 1000
	paceBurst = 1000
	paceSleep = 10 * time.Millisecond
)

// notifySocket is one worker's NOTIFY_SOCKET.
type notifySocket struct {
	sock *notify.Socket
	// owner is the worker it was made for. shared: the owner may fork workers (worker 0 in
	// fork-worker mode), which inherit it, so a datagram's sender must be looked up.
	owner  cluster.WorkerID
	shared bool
	// users counts the live processes (and forks asked for) that have it as NOTIFY_SOCKET;
	// retired is set once the last is gone. Both belong to the driver's loop.
	users   int
	retired bool
	state   *notifyState
}

// datagram is a notification with the socket it came on and its sender's ancestry: the sender's
// PID, its parent's, and so on up to (not including) the master. gone: the sender had exited (or
// is in a PID namespace forkd cannot see) when it was read, so its ancestry is unknown.
type datagram struct {
	notify.Datagram
	sock    *notifySocket
	lineage []int
	gone    bool
}

// notifyState is what the driver keeps for the notify sockets.
type notifyState struct {
	// dir is the master's directory of socket files; prefix starts each abstract address.
	dir, prefix string
	sockets     []*notifySocket // live ones, for the hot restart
	datagrams   chan datagram
	euid        int
	walks       tokenBucket
	strangers   tokenBucket
	log         *slog.Logger

	// Datagrams dropped by the readers, before they reach the loop: counted here and stepped in
	// bulk, so that a flood costs the loop an event every dropReport at most, not one per
	// datagram. wake tells the loop there are some (lastWake is when it last did); the loop also
	// takes them at every housekeeping tick, so that none waits longer than that.
	drops    sync.Mutex
	drop     map[cluster.DropReason]cluster.NotifyRejected // by reason: each one is counted apart
	lastWake time.Time
	wake     chan struct{}
	// inFlight counts datagrams a reader has taken from its socket and not yet handed to the loop
	// (or dropped).
	inFlight atomic.Int32
}

func newNotifyState(log *slog.Logger) notifyState {
	return notifyState{datagrams: make(chan datagram, 256), euid: os.Geteuid(), wake: make(chan struct{}, 1),
		walks: tokenBucket{rate: walkRate, burst: walkBurst, tokens: walkBurst}, strangers: tokenBucket{rate: paceRate, burst: paceBurst, tokens: paceBurst},
		log: log}
}

// prepareNotifyDir makes the master's directory of notify sockets in cfg.Dir, or the prefix of its
// abstract addresses. A directory left by an earlier master with the same PID (a container's PID 1
// started again, say) is stale and replaced; those of masters no longer running are removed.
func (n *notifyState) prepare(cfg NotifyConfig) error {
	if cfg.Abstract {
		var random [8]byte
		_, _ = rand.Read(random[:])
		n.prefix = "@forkd/" + strconv.Itoa(os.Getpid()) + "/" + hex.EncodeToString(random[:]) + "/"
		return nil
	}
	if !filepath.IsAbs(cfg.Dir) {
		return fmt.Errorf("cluster: the notify directory %q is not an absolute path", cfg.Dir)
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("cluster: notify directory: %w", err)
	}
	removeStaleNotifyDirs(cfg.Dir)
	dir := filepath.Join(cfg.Dir, "notify-"+strconv.Itoa(os.Getpid()))
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("cluster: notify directory: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("cluster: notify directory: %w", err)
	}
	n.dir = dir
	return nil
}

// removeStaleNotifyDirs removes the notify-PID directories in dir of masters that no longer run.
func removeStaleNotifyDirs(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		pid, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "notify-"))
		if !e.IsDir() || !strings.HasPrefix(e.Name(), "notify-") || err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
}

// cleanup removes the master's directory of notify sockets, when the master is done.
func (n *notifyState) cleanup() {
	if n.dir != "" {
		os.RemoveAll(n.dir)
	}
}

// addr is the address of worker id's notify socket.
func (n *notifyState) addr(id cluster.WorkerID) string {
	if n.dir == "" {
		return n.prefix + strconv.FormatUint(uint64(id), 10)
	}
	return filepath.Join(n.dir, strconv.FormatUint(uint64(id), 10))
}

// open binds a notify socket for worker id, with one user, and starts reading it.
func (n *notifyState) open(id cluster.WorkerID, shared bool) (*notifySocket, error) {
	sock, err := notify.Listen(n.addr(id))
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return n.adopt(sock, id, shared, 1), nil
}

// adopt starts reading sock, the notify socket of worker id.
func (n *notifyState) adopt(sock *notify.Socket, id cluster.WorkerID, shared bool, users int) *notifySocket {
	ns := &notifySocket{sock: sock, owner: id, shared: shared, users: users, state: n}
	n.sockets = append(n.sockets, ns)
	go n.read(ns)
	return ns
}

// share counts one more process that has ns as NOTIFY_SOCKET (a worker the owner forks).
func (ns *notifySocket) share() { ns.users++ }

// release counts one process fewer; after the last, the socket is read for notifyDrainGrace more,
// then closed. A nil socket is ignored.
func (ns *notifySocket) release() {
	if ns == nil || ns.retired {
		return
	}
	if ns.users--; ns.users > 0 {
		return
	}
	ns.retired = true
	n := ns.state
	if i := slices.Index(n.sockets, ns); i >= 0 {
		n.sockets = slices.Delete(n.sockets, i, i+1)
	}
	if err := ns.sock.SetReadDeadline(time.Now().Add(notifyDrainGrace)); err != nil {
		ns.sock.Close()
	}
}

// read reads one notify socket until it is retired or closed. It drops what comes
// from a refused uid before anything else, and on a shared socket reads the sender's ancestry at
// once, while the sender is most likely alive; a sender using sd_notify_barrier(3) stays alive
// until its descriptor is released, after that.
func (n *notifyState) read(ns *notifySocket) {
	for {
		dg, err := ns.sock.Receive()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, net.ErrClosed) {
				ns.sock.Close()
				return
			}
			n.log.Warn("notify socket", "error", err)
			continue
		}
		n.inFlight.Add(1)
		n.pass(ns, dg)
		n.inFlight.Add(-1)
	}
}

// pass drops dg, or hands it to the loop with its sender's ancestry. After a datagram that is not
// from a direct child of the master, it paces the reader (paceRate).
func (n *notifyState) pass(ns *notifySocket, dg notify.Datagram) {
	if dg.UID != 0 && dg.UID != n.euid {
		dg.Release()
		n.dropped(dg.PID, cluster.DropRefusedUID,
			fmt.Sprintf("sender uid %d is refused (only root and forkd's uid %d may notify)", dg.UID, n.euid))
		n.pace()
		return
	}
	lineage, gone, ok := n.lineageOf(dg.PID)
	dg.Release()
	if !ok {
		n.dropped(dg.PID, cluster.DropRateLimited, "too many notifications from processes that are not workers: not traced")
		n.pace()
		return
	}
	n.datagrams <- datagram{Datagram: dg, sock: ns, lineage: lineage, gone: gone}
	if len(lineage) > 1 {
		n.pace()
	}
}

// pace takes a token of strangers for the reader, and holds it back while the bucket is in debt by
// paceSleep or more.
func (n *notifyState) pace() {
	if wait := n.strangers.take(time.Now()); wait >= paceSleep {
		time.Sleep(wait)
	}
}

// pending reports a datagram waiting in a worker's socket, or read from one and not yet handed to
// the loop: the loop reads those before it judges any deadline.
func (n *notifyState) pending() bool {
	// The sockets first: a datagram a reader takes from one meanwhile is counted in flight by then.
	for _, ns := range n.sockets {
		if fd, err := ns.sock.FD(); err == nil {
			if queued, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err == nil && queued > 0 {
				return true
			}
		}
	}
	return n.inFlight.Load() > 0
}

// dropReport is how often at most a flood of dropped datagrams wakes the loop.
const dropReport = 100 * time.Millisecond

// dropped counts a datagram a reader dropped for reason (detail says it in words), and wakes the
// loop to step it, unless it did so less than dropReport ago.
func (n *notifyState) dropped(pid int, reason cluster.DropReason, detail string) {
	now := time.Now()
	n.drops.Lock()
	if n.drop == nil {
		n.drop = make(map[cluster.DropReason]cluster.NotifyRejected)
	}
	n.drop[reason] = cluster.NotifyRejected{PID: pid, Reason: reason, Detail: detail, Count: n.drop[reason].Count + 1}
	wake := now.Sub(n.lastWake) >= dropReport
	if wake {
		n.lastWake = now
	}
	n.drops.Unlock()
	if wake {
		select {
		case n.wake <- struct{}{}:
		default:
		}
	}
}

// stepDrops steps the drops the readers counted since the last call, as one event per reason.
func (d *Driver) stepDrops() {
	n := &d.notify
	n.drops.Lock()
	drops := n.drop
	n.drop = nil
	n.drops.Unlock()
	for _, reason := range cluster.DropReasons() { // in a fixed order, for the log
		if e := drops[reason]; e.Count > 0 {
			d.step(e)
		}
	}
}

// lineageOf lists pid and its ancestors, walking parent links in /proc, up to the master or PID 1
// (excluded): a worker's descendant re-parented to the master after its parent died is no longer
// attributable to that worker. gone reports that pid itself could not be read (it exited, or it
// is 0: in a PID namespace forkd cannot see). A direct child of the master (a worker) costs one
// read; a deeper walk needs a token of the limiter, and without one lineageOf reports false.
func (n *notifyState) lineageOf(pid int) (lineage []int, gone, ok bool) {
	if pid <= 0 {
		return nil, true, true
	}
	lineage, _, err := ancestry(pid, func() bool { return n.walks.allow(time.Now()) })
	if errors.Is(err, errWalkLimited) {
		return nil, false, false
	}
	return lineage, err != nil && len(lineage) == 1, true
}

// tokenBucket: rate tokens a second, at most burst saved.
type tokenBucket struct {
	rate, burst float64
	mu          sync.Mutex
	tokens      float64
	last        time.Time
}

func (l *tokenBucket) refill(now time.Time) {
	if !l.last.IsZero() && now.After(l.last) {
		l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	}
	if now.After(l.last) {
		l.last = now
	}
}

// allow takes a token if there is one.
func (l *tokenBucket) allow(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill(now)
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

// take takes a token, in debt if there is none, and returns how long from now until it is due.
func (l *tokenBucket) take(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill(now)
	l.tokens--
	if l.tokens >= 0 {
		return 0
	}
	return time.Duration(-l.tokens / l.rate * float64(time.Second))
}

// handleDatagram attributes a notification to a worker: its sender is the worker or one of its
// descendants, or, when the sender is gone and the socket is a worker's own, that worker. What came
// from a worker that has exited since is late, and ignored; anything else is dropped.
func (d *Driver) handleDatagram(dg datagram) {
	reject := func(reason cluster.DropReason, detail string) {
		d.step(cluster.NotifyRejected{PID: dg.PID, Reason: reason, Detail: detail})
	}
	if dg.Truncated {
		reject(cluster.DropOversize, "datagram too large")
		return
	}
	var id cluster.WorkerID
	found := false
	for _, pid := range dg.lineage {
		if id, found = d.m.WorkerByPID(pid); found {
			break
		}
	}
	if !found {
		// Sent by a worker just before it exited, read after.
		id, found = d.m.ExitedWorker(dg.PID)
	}
	switch {
	case found:
	case dg.gone && !dg.sock.shared:
		id, found = dg.sock.owner, true // only the worker's own processes know its socket
	case dg.sock.retired:
		// A descendant of the socket's last worker, which is gone: too late to matter.
		id, found = dg.sock.owner, true
	}
	if !found {
		if dg.gone {
			reject(cluster.DropSenderExited, fmt.Sprintf("sender pid %d exited before forkd could tell whose it is (a helper on a shared socket: use sd_notify_barrier)", dg.PID))
		} else {
			reject(cluster.DropUnknownSender, fmt.Sprintf("sender pid %d is not a worker nor a worker's descendant", dg.PID))
		}
		return
	}
	msg, err := notify.Parse(dg.Data)
	if err != nil {
		reject(cluster.DropUnparsable, err.Error())
		return
	}
	d.step(cluster.Notified{Worker: id, Message: notification(msg)})
}

// notification is the part of a datagram the machine reads.
func notification(msg notify.Message) cluster.Notification {
	return cluster.Notification{
		Ready: msg.Ready, Stopping: msg.Stopping, Watchdog: msg.Watchdog, WatchdogTrigger: msg.WatchdogTrigger,
		Status: msg.Status, HasStatus: msg.HasStatus, Requests: msg.Requests, HasRequests: msg.HasRequests,
		Busy: msg.Busy, HasBusy: msg.HasBusy, HeapSize: msg.HeapSize, HasHeapSize: msg.HasHeapSize,
		WatchdogTimeout: msg.WatchdogTimeout, ExtendTimeout: msg.ExtendTimeout,
	}
}
