package supervisor

import (
	"errors"
	"fmt"
	"io"
	"net"

	"golang.org/x/sys/unix"

	"github.com/forkd/forkd/internal/fds"
	"github.com/forkd/forkd/pkg/cluster"
	"github.com/forkd/forkd/pkg/protocol"
)

// This file holds the driver's side of fork-worker mode: the control channels to the workers,
// spawn requests to the template, and pause/resume.

// channels reads every worker's control channel, each from a goroutine of its own blocked in Go's
// poller, and hands the messages to the loop. It also numbers the requests the master sends.
type channels struct {
	out chan<- controlMessage
	// spawns maps a spawn request's seq to the worker it forks; cancelled spawns stay, marked,
	// so a late reply can be recognized and its worker killed.
	spawns   map[uint64]*pendingSpawn
	lastSeq  uint64
	requests map[uint64]string // seq of a pause or resume → its op
}

type pendingSpawn struct {
	worker    cluster.WorkerID
	cancelled bool
	// mold: a mold request to a serving worker, whose error answer is MoldRefused.
	mold bool
}

// controlMessage is one packet from a worker's channel, or the end of the channel (eof).
type controlMessage struct {
	worker cluster.WorkerID
	protocol.Received
	eof bool
}

func newChannels() channels {
	return channels{spawns: map[uint64]*pendingSpawn{}, requests: map[uint64]string{}}
}

func (c *channels) nextSeq() uint64 {
	c.lastSeq++
	return c.lastSeq
}

// read starts the goroutine that reads worker's channel until it ends.
func (c *channels) read(worker cluster.WorkerID, conn *protocol.Conn) {
	out := c.out
	go func() {
		for {
			r, err := conn.Receive()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					out <- controlMessage{worker: worker, eof: true, Received: protocol.Received{Err: err}}
				}
				return
			}
			out <- controlMessage{worker: worker, Received: r}
		}
	}()
}

// forkWorker asks the template to fork a worker, or a serving worker to fork a mold (a.Mold): a
// fresh channel, whose worker end travels with the request. The answer comes later, on the
// template's (the serving worker's) channel.
func (d *Driver) forkWorker(a cluster.SpawnWorker) {
	t := d.procs[a.Template]
	if t == nil || t.conn == nil {
		d.learn(cluster.SpawnFailed{Worker: a.Worker, Err: "the template has no control channel"})
		return
	}
	conn, workerEnd, err := protocol.Socketpair()
	if err != nil {
		d.learn(cluster.SpawnFailed{Worker: a.Worker, Err: err.Error()})
		return
	}
	defer unix.Close(workerEnd)
	seq := d.channels.nextSeq()
	msg := protocol.Message{Op: protocol.OpSpawn, Seq: seq, Worker: a.Slot, Generation: a.Generation}
	// A forked worker inherits the template's NOTIFY_SOCKET; a mold gets one of its own, so that
	// its datagrams are told from its source's, which the workers forked from it inherit.
	ns := t.notify
	if a.Mold {
		if ns, err = d.notify.open(a.Worker, true); err != nil {
			conn.Close()
			d.learn(cluster.SpawnFailed{Worker: a.Worker, Err: err.Error()})
			return
		}
		msg = protocol.Message{Op: protocol.OpMold, Seq: seq, Generation: a.Generation, NotifySocket: ns.sock.Addr()}
	} else if ns != nil {
		ns.share()
	}
	if err := t.conn.Send(msg, workerEnd); err != nil {
		conn.Close()
		ns.release()
		d.learn(cluster.SpawnFailed{Worker: a.Worker, Err: err.Error()})
		return
	}
	d.channels.spawns[seq] = &pendingSpawn{worker: a.Worker, mold: a.Mold}
	d.cgroupFork(a) // a mold is born in its source's cgroup, and moved to one of slot 0's own
	d.procs[a.Worker] = &process{pidfd: -1, conn: conn, forked: true, slot: a.Slot, notify: ns}
	d.channels.read(a.Worker, conn)
}

// cancelSpawn closes the master's end of a forked worker's channel: a worker forked after all sees
// end of file and exits; a reply that names it later gets it killed.
func (d *Driver) cancelSpawn(worker cluster.WorkerID) {
	for _, s := range d.channels.spawns {
		if s.worker == worker {
			s.cancelled = true
		}
	}
	if p := d.procs[worker]; p != nil {
		p.close()
		delete(d.procs, worker)
	}
	d.cgroupExited(worker, cluster.ExitStatus{})
}

// controlWorker sends msg on a worker's control channel; a pause or resume is numbered, so that
// its answer can be told from a stale one.
func (d *Driver) controlWorker(worker cluster.WorkerID, msg protocol.Message) {
	p := d.procs[worker]
	if p == nil || p.conn == nil {
		return
	}
	if msg.Op == protocol.OpPause || msg.Op == protocol.OpResume {
		msg.Seq = d.channels.nextSeq()
		d.channels.requests[msg.Seq] = msg.Op
	}
	if err := p.conn.Send(msg); err != nil {
		d.log.Warn(fmt.Sprintf("cannot send %s to worker: %v", msg.Op, err), "event", "control-error", "pid", p.pid)
	}
	switch {
	case msg.Op == protocol.OpRefuse:
		p.conn.Close()
	case msg.Op == protocol.OpWelcome && p.forked:
		d.sendStdio(p)
	}
}

// sendStdio gives a forked worker its own output, which it would otherwise share with worker 0.
// An SDK that does not know the op answers error, and keeps worker 0's.
func (d *Driver) sendStdio(p *process) {
	out, stream := d.workerOutput(p.slot)
	if out == nil {
		return
	}
	defer out.Close()
	fd, err := fds.Raw(out)
	if err == nil {
		err = p.conn.Send(protocol.Message{Op: protocol.OpStdio, JournalStream: stream}, fd)
	}
	if err != nil {
		d.log.Warn(fmt.Sprintf("cannot send worker %d its output: %v", p.slot, err), "event", "control-error", "pid", p.pid)
	}
}

// handleControl turns a packet from a worker's channel into an event.
func (d *Driver) handleControl(cm controlMessage) {
	for _, fd := range cm.FDs {
		unix.Close(fd) // nothing a worker sends carries descriptors
	}
	p := d.procs[cm.worker]
	if p == nil {
		return // a worker forgotten since
	}
	if cm.eof {
		if cm.Err != nil && !errors.Is(cm.Err, io.EOF) {
			d.log.Debug("control channel: "+cm.Err.Error(), "pid", p.pid)
		}
		return // the worker is exiting; its exit says the rest
	}
	msg := cm.Message
	if cm.Err != nil && !errors.Is(cm.Err, protocol.ErrVersion) {
		d.log.Warn("worker sent a bad control message: "+cm.Err.Error(), "event", "control-error", "pid", p.pid)
		if msg.Seq != 0 {
			p.conn.Send(protocol.Message{Op: protocol.OpError, Seq: msg.Seq, Error: cm.Err.Error()})
		}
		return
	}
	switch msg.Op {
	case protocol.OpHello:
		if p.pid == 0 {
			// A forked worker: its hello is the first the master hears of its PID, and the
			// pidfd must be open before the machine counts on it.
			pidfd, err := unix.PidfdOpen(msg.PID, 0)
			if err != nil {
				d.log.Warn(fmt.Sprintf("worker says hello as pid %d: %v", msg.PID, err), "event", "control-error")
				return
			}
			p.pid, p.pidfd = msg.PID, pidfd
			d.cgroupPlace(cm.worker, p)
		}
		hello := cluster.Hello{Worker: cm.worker, PID: msg.PID, Fork: msg.Fork, Mold: msg.Mold, SDK: msg.SDK}
		if msg.V != protocol.Version {
			hello.Mismatch = fmt.Sprintf("this forkd master speaks protocol %d, the worker speaks %d: upgrade the worker's SDK or forkd",
				protocol.Version, msg.V)
		}
		d.step(hello)
	case protocol.OpSpawned, protocol.OpSpawnFailed, protocol.OpMolded, protocol.OpMoldFailed:
		d.spawnReply(msg)
	case protocol.OpPaused, protocol.OpResumed:
		if _, ok := d.channels.requests[msg.Seq]; !ok {
			return
		}
		delete(d.channels.requests, msg.Seq)
		if msg.Op == protocol.OpPaused {
			d.step(cluster.TemplatePaused{Worker: cm.worker})
		} else {
			d.step(cluster.TemplateResumed{Worker: cm.worker})
		}
	case protocol.OpError:
		if s, ok := d.channels.spawns[msg.Seq]; ok && s.mold {
			// An SDK without molds: the machine forks from the template instead, and says so.
			delete(d.channels.spawns, msg.Seq)
			if !s.cancelled {
				d.step(cluster.MoldRefused{Worker: s.worker, Err: msg.Error})
			}
			return
		}
		d.log.Warn("worker could not handle a control message: "+msg.Error, "event", "control-error", "pid", p.pid)
		if op, ok := d.channels.requests[msg.Seq]; ok {
			delete(d.channels.requests, msg.Seq)
			d.log.Warn(fmt.Sprintf("worker 0 rejected %s", op), "event", "control-error")
		}
	default:
		if msg.Seq != 0 {
			p.conn.Send(protocol.Message{Op: protocol.OpError, Seq: msg.Seq, Error: fmt.Sprintf("a worker cannot send %q", msg.Op)})
		}
	}
}

// spawnReply handles the template's answer to a spawn request.
func (d *Driver) spawnReply(msg protocol.Message) {
	s, ok := d.channels.spawns[msg.Seq]
	if !ok {
		d.log.Warn(fmt.Sprintf("worker 0 answered spawn request %d, which it was never sent", msg.Seq), "event", "control-error")
		return
	}
	delete(d.channels.spawns, msg.Seq)
	if msg.Op == protocol.OpSpawnFailed || msg.Op == protocol.OpMoldFailed {
		if !s.cancelled {
			d.step(cluster.SpawnFailed{Worker: s.worker, Err: msg.Error})
		}
		return
	}
	pidfd, err := unix.PidfdOpen(msg.PID, 0)
	if s.cancelled {
		// Given up on: the worker exists after all. Its channel is closed, so it should exit on
		// its own; make sure.
		if err == nil {
			unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
			unix.Close(pidfd)
		}
		d.log.Warn(fmt.Sprintf("worker 0 forked pid %d after forkd gave up on it: killed", msg.PID), "event", "fork-late")
		return
	}
	p := d.procs[s.worker]
	if p == nil {
		if err == nil {
			unix.Close(pidfd)
		}
		return
	}
	if err != nil {
		// Gone before the master could hold it (and already reaped as an orphan).
		d.step(cluster.SpawnFailed{Worker: s.worker, Err: fmt.Sprintf("the forked worker (pid %d) exited at once", msg.PID)})
		return
	}
	if p.pid == 0 {
		p.pid, p.pidfd = msg.PID, pidfd
		d.cgroupPlace(s.worker, p)
	} else {
		unix.Close(pidfd) // its hello came first
	}
	d.step(cluster.Spawned{Worker: s.worker, PID: msg.PID})
}
