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

A serving worker (a forked one, or worker 0 while it serves) asked for a *mold* forks it at once,
from the reader's thread, while the server goes on serving in the main thread: no quiesce
(:func:`fork_mold`). In the mold, only that thread exists; it drops what it inherited of the
server (:func:`drop_connections`, and the runner's own state), becomes a template that never
serves and spends the rest of its life on that thread.

Heartbeats are the process's, not a thread's (forkd.worker.beat): whoever runs (the server's
loop, the reader while a period drains, the template between forks) keeps to one schedule, so a
template that forks often never misses one.
"""

import collections
import gc
import os
import select
import signal
import socket
import sys
import threading
import traceback

from . import hooks
from . import protocol
from . import worker

__all__ = ["Forked", "Reader", "Template", "double_fork", "fork_mold", "drop_connections",
           "apply_stdio", "reply", "set_gc_freeze", "ready_heap", "thaw_heap"]


class Forked(BaseException):
    """Raised in the new worker of a spawn (the template's grandchild) to unwind to the caller's
    top level, which goes on as worker ``msg["worker"]`` with the channel at ``fd``. A
    BaseException, so that no ``except Exception`` on the way catches it."""

    def __init__(self, msg, fd, hello_sent, mold=False):
        super().__init__()
        self.msg = msg
        self.fd = fd
        self.hello_sent = hello_sent
        self.mold = mold  # this process is a mold (the grandchild of a mold request)


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

    def abandon(self):
        """In a mold forked from this reader's thread: release the pipe without a word (the
        serving process's reader reads the same pipe) and forget the thread."""
        self.thread = None
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

    def __init__(self, channel, quiesce, spawn, serves=True, mold=None):
        self.channel = channel
        self.quiesce = quiesce
        self.spawn = spawn
        # False in a template that does not serve (a mold, mold mode's worker 0): quiet() never
        # returns "serve", and pause/resume run no refork hook (the mold ran before_refork when it
        # readied itself).
        self.serves = serves
        # mold(msg, fds), the caller's: answer a mold request (fork_mold), from either thread.
        self.mold = mold
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
        if op == "mold" and self.mold is not None:
            self.mold(msg, fds)
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
            if not self.paused and self.serves:
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
                if self.serves:
                    hooks.run_before_refork()
            reply(self.channel, {"op": "paused", "seq": seq})
        elif op == "resume":
            if self.paused:
                self.paused = False
                if self.serves:
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


def double_fork(msg, channel_fd, mold=False):
    """Fork the worker of spawn msg (or the mold of mold msg) through a short-lived intermediate
    child, so that it is re-parented to the master (a subreaper). In the forking process, returns
    the new process's PID, or raises RuntimeError with the reason; the before_fork hooks run first
    (an exception there fails the fork), the after_fork_parent hooks after. In the new process,
    which leads a process group of its own (so that forkd stopping its group never reaches worker 0
    or a sibling), it says hello on channel_fd and raises Forked; the caller runs the child hooks
    (see become_forked). A template's heap is frozen first; a serving worker's, for a mold, is
    not (it goes on serving: the mold readies its own heap)."""
    try:
        hooks.run_prepare(strict=True)
    except Exception as e:
        worker.log("before_fork hook failed:\n%s" % traceback.format_exc().rstrip())
        raise RuntimeError("before_fork hook failed: %s" % e) from None
    if not mold:
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
        _intermediate(r, w, msg, channel_fd, mold)
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


def ready_heap():
    """A template that does not serve readies its heap once, before READY=1: collect, freeze."""
    _freeze_heap()


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


def _intermediate(r, w, msg, channel_fd, mold):
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
    # Hello first: the master's answer travels while this process sheds the forking one's state.
    raise Forked(msg, channel_fd, worker.send_forked_hello(channel_fd, mold), mold)


def become_forked(forked):
    """In the new worker: make this process worker forked.msg["worker"] (environment, SDK state,
    random generator), then run the after_fork_child hooks; a hook that raises makes the worker
    exit with status 1. The caller has closed what it held of the template's (descriptors,
    signal wakeup fd)."""
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass
    if forked.mold:
        worker.become_forked_worker(0, forked.msg["generation"], forked.fd, forked.hello_sent,
                                    mold=True, notify_socket=forked.msg.get("notify_socket"))
    else:
        worker.become_forked_worker(forked.msg.get("worker", 0), forked.msg["generation"],
                                    forked.fd, forked.hello_sent)
    try:
        hooks.run_child(strict=True)
    except Exception:
        worker.die("after_fork_child hook failed:\n%s" % traceback.format_exc().rstrip())
    finally:
        hooks._sdk_forking = False


def _bad_mold(msg):
    """Why mold msg cannot even be tried (answered with error), or None."""
    gen, notify_socket = msg.get("generation"), msg.get("notify_socket")
    if not isinstance(gen, int) or isinstance(gen, bool) or gen < 0:
        return "mold needs an integer generation"
    if notify_socket is not None and not isinstance(notify_socket, str):
        return "mold's notify_socket must be a string"
    if notify_socket:
        from . import sdnotify
        try:
            sdnotify.notify_address(notify_socket)
        except OSError as e:
            return str(e)
    return None


def fork_mold(channel, msg, fds, stopping=False):
    """Answer the master's mold: fork the mold at once, from this thread, without quiescing (the
    server goes on serving in its own threads), with the same double fork as a spawn, and reply
    molded with its PID or mold_failed with the reason. The stop signals stay blocked in the new
    process until it has handlers of its own. In the mold, raises Forked (mold=True)."""
    seq = msg.get("seq")
    if seq is None:
        for fd in fds:
            _close_quietly(fd)
        return
    bad = _bad_mold(msg)
    if bad is None and (len(fds) != 1 or stopping):
        failed = ("this worker is stopping" if stopping else
                  "mold carried %d descriptors, want 1: the mold's channel" % len(fds))
    else:
        failed = None
    if bad is not None or failed is not None:
        for fd in fds:
            _close_quietly(fd)
        if bad is not None:
            reply(channel, {"op": "error", "seq": seq, "error": bad})
        else:
            reply(channel, {"op": "mold_failed", "seq": seq, "error": failed})
        return
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        pid = double_fork(msg, fds[0], mold=True)
    except Forked:
        raise
    except Exception as e:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        _close_quietly(fds[0])
        reply(channel, {"op": "mold_failed", "seq": seq, "error": str(e) or repr(e)})
        return
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    _close_quietly(fds[0])
    reply(channel, {"op": "molded", "seq": seq, "pid": pid})


#: The signals that stop a worker, blocked in a mold until it has handlers of its own.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

#: A listener on one of these accepts connections to every address of the host.
_ANY_ADDRESSES = ("0.0.0.0", "::")


def _endpoint(sock):
    try:
        return sock.family, sock.getsockname()
    except OSError:
        return None


def _accepted_on(sock, endpoints):
    """Whether sock is a stream connection accepted on a listener at one of endpoints (its local
    address is the listener's: the same port on the listener's address or any, the same path)."""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) != socket.SOCK_STREAM:
            return False
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False
        family, name = sock.family, sock.getsockname()
    except OSError:
        return False
    for lfamily, lname in endpoints:
        if family != lfamily:
            continue
        if family in (socket.AF_INET, socket.AF_INET6):
            if name[1] == lname[1] and (lname[0] in _ANY_ADDRESSES or lname[0] == name[0]):
                return True
        elif family == socket.AF_UNIX and lname and name == lname:
            return True
    return False


def drop_connections(listeners, keep=()):
    """In a mold: close every connection this process inherited that was accepted on one of the
    listeners. close(2) only: the serving process holds the same connections, and shutdown(2)
    would cut them there too; and a connection left open here would keep the client's connection
    alive after the serving process closed it (a "Connection: close" client would wait for an end
    of file that never comes). Each Python socket object that owns such a descriptor is detached
    first, so that no finalizer closes the number later, when it may name another file (sockets
    that only the server's dead threads referenced are never freed, but a socket kept elsewhere
    may be). keep: descriptors to leave alone (the mold's channel). Returns how many it closed."""
    endpoints = [e for e in (_endpoint(s) for s in listeners) if e is not None]
    kept = {0, 1, 2} | set(keep)
    for s in listeners:
        try:
            kept.add(s.fileno())
        except (OSError, ValueError):
            pass
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in kept:
            continue
        try:
            if not os.readlink("/proc/self/fd/%d" % fd).startswith("socket:"):
                continue
            probe = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if _accepted_on(probe, endpoints):
                found.append(fd)
        finally:
            probe.detach()
    if not found:
        return 0
    wanted = set(found)
    for obj in gc.get_objects():
        if isinstance(obj, socket.socket):
            try:
                if obj.fileno() in wanted:
                    obj.detach()
            except (OSError, ValueError):
                pass
    for fd in found:
        _close_quietly(fd)
    return len(found)
