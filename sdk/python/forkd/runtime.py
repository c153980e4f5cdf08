"""The fork-worker runtime: a worker's control channel while it serves, and the template's spawns,
pauses and resumes between two serving periods (docs/protocol.md section 3).

It is written for a server that serves in *periods*: one period runs until the server is told to
stop serving, returns, and another may start later. forkd.gunicorn runs one gunicorn worker per
period. The template (worker 0 in fork-worker mode) then forks only between two periods, when no
request is in flight, no client connection is open and no thread of the server is left, so no
client connection and no thread is inherited by a new worker.

- While a period runs, a :class:`Reader` thread reads the control channel. It answers what it can
  at once, and hands ``spawn`` and ``pause`` to the :class:`Template`, which asks the server to end
  its period (the caller's ``quiesce`` callback). End of file on the channel (the master is gone)
  asks it to stop.
- Between two periods, the template's main thread runs :meth:`Template.quiet`: it forks the queued
  spawns (:func:`double_fork`), answers ``pause`` and ``resume``, and sends the heartbeats, until
  it may serve again or must stop. In the new worker of a spawn, :func:`double_fork` raises
  :class:`Forked`, which the caller catches at its top level to carry on as that worker.

Heartbeats are the process's, not a thread's (forkd.worker.beat): whoever runs (the server's
loop, the reader while a period drains, the template between forks) keeps to one schedule, so a
template that forks often never misses one.
"""

import collections
import gc
import os
import select
import signal
import sys
import threading
import traceback

from . import hooks
from . import protocol
from . import worker

__all__ = ["Forked", "Reader", "Template", "double_fork", "apply_stdio", "reply", "set_gc_freeze",
           "thaw_heap"]


class Forked(BaseException):
    """Raised in the new worker of a spawn (the template's grandchild) to unwind to the caller's
    top level, which goes on as worker ``msg["worker"]`` with the channel at ``fd``. A
    BaseException, so that no ``except Exception`` on the way catches it."""

    def __init__(self, msg, fd, hello_sent):
        super().__init__()
        self.msg = msg
        self.fd = fd
        self.hello_sent = hello_sent


def reply(channel, msg):
    """Send msg on channel; a failure is logged (the master's end of file tells the rest)."""
    if channel is None:
        return
    try:
        channel.send(msg)
    except (OSError, ValueError) as e:
        worker.log("cannot reply %s to the master: %s" % (msg.get("op"), e))


def _close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def apply_stdio(msg, fds):
    """The ``stdio`` op: this forked worker's own stdout and stderr (under systemd, a journal
    stream with its own identifier) instead of the ones it inherited from worker 0."""
    if len(fds) != 1:
        for fd in fds:
            _close_quietly(fd)
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.dup2(fds[0], 1)
    os.dup2(fds[0], 2)
    _close_quietly(fds[0])
    if msg.get("journal_stream"):
        os.environ["JOURNAL_STREAM"] = msg["journal_stream"]
    else:
        os.environ.pop("JOURNAL_STREAM", None)


class Reader:
    """A daemon thread that reads the control channel while the main thread serves.

    handle(msg, fds) runs in the thread for every valid message; at end of file it gets
    (None, []). Packets that are not messages are answered with ``error`` here. While ticking,
    tick() runs every interval seconds as well (the template's heartbeats while its serving
    period drains). stop() ends the thread and waits for it, so that a fork that follows leaves no
    thread of ours behind.
    """

    def __init__(self, channel, handle, tick=None):
        self.channel = channel
        self.handle = handle
        self.tick = tick
        self.interval = None
        self.thread = None
        self.stop_r = self.stop_w = -1
        self.lock = threading.Lock()

    def start(self):
        """Returns False when the thread could not be started (logged)."""
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.thread = worker.start_thread(
            self._run, (), "forkd-control", "the master's requests go unanswered")
        if self.thread is None:
            self._close_pipe()
            return False
        return True

    def ticking(self, interval):
        """Run tick every interval seconds from now on (None: stop ticking)."""
        with self.lock:
            self.interval = interval
        self._poke()

    def _poke(self):
        try:
            os.write(self.stop_w, b"t")
        except OSError:
            pass

    def stop(self):
        t, self.thread = self.thread, None
        if t is None:
            return
        try:
            os.write(self.stop_w, b"s")
        except OSError:
            pass
        if t is not threading.current_thread():
            t.join()
        self._close_pipe()

    def _close_pipe(self):
        for fd in (self.stop_r, self.stop_w):
            if fd >= 0:
                _close_quietly(fd)
        self.stop_r = self.stop_w = -1

    def _run(self):
        ch = self.channel
        while True:
            with self.lock:
                interval = self.interval
            try:
                r, _, _ = select.select([ch.fileno(), self.stop_r], [], [], interval)
            except InterruptedError:
                continue
            if self.stop_r in r:
                try:
                    data = os.read(self.stop_r, 64)
                except BlockingIOError:
                    data = b""
                if b"s" in data:
                    return
            if not r and self.tick is not None:
                self.tick()
            if ch.fileno() not in r:
                continue
            try:
                msg, fds = ch.recv()
            except OSError as e:
                worker.log("control channel: %s" % e)
                msg, fds = None, []
            if isinstance(msg, protocol.Invalid):
                if msg.seq is not None:
                    reply(ch, {"op": "error", "seq": msg.seq, "error": msg.reason})
                continue
            try:
                self.handle(msg, fds)
            except Exception:
                worker.log("handling %r failed:\n%s" % (
                    msg.get("op") if msg else "end of file", traceback.format_exc().rstrip()))
            if msg is None:
                return


def answer_worker_op(channel, msg, fds):
    """What a worker that is not the template answers: stdio is applied; spawn, pause, resume and
    unknown ops get spawn_failed or error (when they have a seq)."""
    op, seq = msg["op"], msg.get("seq")
    if op == "stdio":
        apply_stdio(msg, fds)
        return
    for fd in fds:
        _close_quietly(fd)
    if seq is None or op in ("error", "welcome"):
        return
    if op == "spawn":
        reply(channel, {"op": "spawn_failed", "seq": seq, "error": "this worker is not the template"})
    elif op in protocol.OPS:
        reply(channel, {"op": "error", "seq": seq, "error": "unexpected op %r" % op})
    else:
        reply(channel, {"op": "error", "seq": seq, "error": "unknown op %r" % op})


class Template:
    """Worker 0's side of spawn, pause and resume.

    quiesce() (the caller's) asks the server to end its serving period as soon as no request is in
    flight; it runs in the reader's thread and must be thread-safe. spawn(msg, fd) (the caller's)
    forks one worker between two periods: it returns the PID or raises an Exception whose text
    becomes the spawn_failed reason, and raises Forked in the new worker (double_fork does).
    """

    def __init__(self, channel, quiesce, spawn):
        self.channel = channel
        self.quiesce = quiesce
        self.spawn = spawn
        self.ops = collections.deque()
        self.lock = threading.Lock()
        self.paused = False
        self.gone = False  # end of file: the master is gone

    def wants_quiet(self):
        """True when the next serving period must not start (or the current one must end)."""
        with self.lock:
            return self.paused or self.gone or any(
                m["op"] in ("spawn", "pause") for m, _ in self.ops)

    # --- while serving: in the reader's thread ------------------------------------------------

    def take(self, msg, fds):
        """The reader's handle: queue what needs a quiet template, answer the rest."""
        if msg is None:
            with self.lock:
                self.gone = True
            self.quiesce()
            return
        op = msg["op"]
        if op in ("spawn", "pause"):
            with self.lock:
                self.ops.append((msg, fds))
            self.quiesce()
            return
        if op == "resume":
            with self.lock:
                if self.ops or self.paused:
                    self.ops.append((msg, fds))
                    return
            self._close(fds)
            reply(self.channel, {"op": "resumed", "seq": msg.get("seq")})  # not paused: nothing to do
            return
        answer_worker_op(self.channel, msg, fds)

    @staticmethod
    def _close(fds):
        for fd in fds:
            _close_quietly(fd)

    # --- between serving periods: on the main thread ------------------------------------------

    def quiet(self, stop_requested, wake_fd):
        """Fork what is queued, answer pause and resume, send heartbeats, until serving may
        resume ("serve") or the worker must stop ("stop": a stop signal, stop_requested(), or the
        master gone). wake_fd is readable when a signal arrived (signal.set_wakeup_fd)."""
        while True:
            worker.beat()
            while True:
                with self.lock:
                    if not self.ops:
                        break
                    msg, fds = self.ops.popleft()
                self._handle(msg, fds)
            if self.gone or stop_requested():
                return "stop"
            if not self.paused:
                thaw_heap()
                return "serve"
            try:
                r, _, _ = select.select([self.channel.fileno(), wake_fd], [], [],
                                        worker.beat_interval())
            except InterruptedError:
                continue
            if wake_fd in r:
                try:
                    os.read(wake_fd, 512)
                except OSError:
                    pass
            if self.channel.fileno() in r:
                self._receive()

    def _receive(self):
        try:
            msg, fds = self.channel.recv()
        except OSError as e:
            worker.log("control channel: %s" % e)
            msg, fds = None, []
        if msg is None:
            self.gone = True
        elif isinstance(msg, protocol.Invalid):
            if msg.seq is not None:
                reply(self.channel, {"op": "error", "seq": msg.seq, "error": msg.reason})
        elif msg["op"] in ("spawn", "pause", "resume"):
            with self.lock:
                self.ops.append((msg, fds))
        else:
            self.take(msg, fds)

    def _handle(self, msg, fds):
        op, seq = msg["op"], msg.get("seq")
        if op == "spawn":
            self._spawn(msg, fds)
            return
        self._close(fds)
        if op == "pause":
            if not self.paused:
                self.paused = True
                hooks.run_before_refork()
            reply(self.channel, {"op": "paused", "seq": seq})
        elif op == "resume":
            if self.paused:
                self.paused = False
                hooks.run_after_refork()
            reply(self.channel, {"op": "resumed", "seq": seq})

    def _spawn(self, msg, fds):
        seq = msg.get("seq")
        # The Go master leaves out zero-valued fields ("worker": 0); a missing index means 0.
        index, gen = msg.get("worker", 0), msg.get("generation")
        if seq is None:
            self._close(fds)
            return
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (index, gen)):
            self._close(fds)
            reply(self.channel, {"op": "error", "seq": seq,
                                 "error": "spawn needs integer worker and generation"})
            return
        if len(fds) != 1:
            self._close(fds)
            reply(self.channel, {"op": "spawn_failed", "seq": seq, "error":
                                 "spawn carried %d descriptors, want 1: the new worker's channel"
                                 % len(fds)})
            return
        try:
            pid = self.spawn(msg, fds[0])
        except Forked:
            # In the new worker: the other queued spawns' channels are its siblings'.
            with self.lock:
                for _, other in self.ops:
                    self._close(other)
                self.ops.clear()
            raise
        except Exception as e:
            _close_quietly(fds[0])
            reply(self.channel, {"op": "spawn_failed", "seq": seq, "error": str(e) or repr(e)})
            return
        _close_quietly(fds[0])
        # Forking took time that no heartbeat covered: send one now, on schedule or not.
        worker.beat(force=True)
        reply(self.channel, {"op": "spawned", "seq": seq, "pid": pid})


def double_fork(msg, channel_fd):
    """Fork the worker of spawn msg through a short-lived intermediate child, so that it is
    re-parented to the master (a subreaper). In the template, returns the new worker's PID, or
    raises RuntimeError with the reason; the before_fork hooks run first (an exception there fails
    the spawn), the after_fork_parent hooks after. In the new worker, which leads a process group
    of its own (so that forkd stopping its group never reaches worker 0 or a sibling), it says
    hello on channel_fd and raises Forked; the caller runs the child hooks (see become_forked)."""
    try:
        hooks.run_prepare(strict=True)
    except Exception as e:
        worker.log("before_fork hook failed:\n%s" % traceback.format_exc().rstrip())
        raise RuntimeError("before_fork hook failed: %s" % e) from None
    _freeze_heap()
    r, w = os.pipe()
    hooks._sdk_forking = True
    try:
        pid = os.fork()
    except OSError as e:
        hooks._sdk_forking = False
        os.close(r)
        os.close(w)
        hooks.run_parent()
        raise RuntimeError("fork: %s" % e) from None
    if pid == 0:
        _intermediate(r, w, msg, channel_fd)
    hooks._sdk_forking = False
    os.close(w)
    data = b""
    try:
        while True:
            chunk = os.read(r, 64)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    hooks.run_parent()
    try:
        wpid = int(data)
    except ValueError:
        wpid = 0
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and wpid > 0:
        return wpid
    if os.WIFSIGNALED(status):
        raise RuntimeError("the intermediate child was killed by signal %d" % os.WTERMSIG(status))
    raise RuntimeError("the intermediate child could not fork (status %d)" % os.WEXITSTATUS(status))


_gc_freeze = True


def set_gc_freeze(on):
    """Whether the template runs gc.collect() and gc.freeze() before it forks (True, the
    default; see _freeze_heap). Call it at import, in the app or in gunicorn.conf.py."""
    global _gc_freeze
    if not isinstance(on, bool):
        raise TypeError("forkd.set_gc_freeze takes True or False, not %r" % (on,))
    _gc_freeze = on


def _freeze_heap():
    """Ready the template's heap for a fork: collect the garbage (so that no freed hole in a shared
    page is filled in a child), then freeze what survives, so that no child's collector ever
    writes to the headers of the objects it inherits: a collection would otherwise dirty, and so
    copy, every page that holds one. The full collection runs once per quiet period (the first
    fork of a refork, or a respawn): nothing but the spawns' own objects is made between two
    forks of one period."""
    if not _gc_freeze:
        return
    if not gc.get_freeze_count():
        gc.collect()
    gc.freeze()


def thaw_heap():
    """When the template serves again: its own collector covers all of its heap again, so that
    what it drops later is freed (each forked worker keeps what it inherited frozen)."""
    if _gc_freeze and gc.get_freeze_count():
        gc.unfreeze()


def _own_process_group(pid):
    """Make the new worker (pid, or 0 for this process) lead a process group of its own, as an
    exec'd worker does: forkd signals a worker's whole group, which must not be the template's.
    The intermediate child and the worker both call it, so the group exists before either goes
    on; a failure leaves the worker in the template's group, which forkd then signals alone."""
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass


def _intermediate(r, w, msg, channel_fd):
    try:
        os.close(r)
        pid = os.fork()
    except BaseException:
        os._exit(1)
    if pid != 0:
        _own_process_group(pid)
        try:
            os.write(w, b"%d" % pid)
        except BaseException:
            os._exit(1)
        os._exit(0)
    _own_process_group(0)
    _close_quietly(w)
    # Hello first: the master's answer travels while this process sheds the template's state.
    raise Forked(msg, channel_fd, worker.send_forked_hello(channel_fd))


def become_forked(forked):
    """In the new worker: make this process worker forked.msg["worker"] (environment, SDK state,
    random generator), then run the after_fork_child hooks; a hook that raises makes the worker
    exit with status 1. The caller has closed what it held of the template's (descriptors,
    signal wakeup fd)."""
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    worker.become_forked_worker(forked.msg.get("worker", 0), forked.msg["generation"], forked.fd,
                                forked.hello_sent)
    try:
        hooks.run_child(strict=True)
    except Exception:
        worker.die("after_fork_child hook failed:\n%s" % traceback.format_exc().rstrip())
    finally:
        hooks._sdk_forking = False
