"""forkd.serve: the worker runtime that accepts, serves, quiesces, forks and stops.

The main thread runs the loop: a selector over the listeners, the control channel, the master's
pidfd (exec mode) and a self-pipe (signals, and connection threads telling it something changed).
Connections are served by threads, one per open connection, at most ``threads`` of them busy with a
request at once; a connection between two requests (see wait_for_request) is idle and does not
count. The loop accepts only while a request slot is free and the connection limit is not reached,
so a busy worker leaves new connections to the other workers.

Forking happens on the main thread at a quiescent point: listeners out of the selector, no
connection open, no connection thread left. See docs/protocol.md section 3 for what the master
expects, and the forkd package docstring for what the application sees.
"""

import collections
import os
import select
import selectors
import signal
import socket
import sys
import threading
import time
import traceback

from . import hooks
from . import protocol
from . import worker

__all__ = ["serve", "wait_for_request", "draining"]

DEFAULT_THREADS = 5
DEFAULT_MAX_CONNECTIONS = 100

# Unread data at close makes the kernel send RST, which can destroy a response the client has not
# read yet; so a connection with unread data is half-closed and drained this long first.
_LINGER = 1.0
_LINGER_BYTES = 256 * 1024

# An accept that fails for lack of descriptors or memory pauses accepting this long.
_ACCEPT_BACKOFF = 0.5

_tls = threading.local()
_current = None  # the _Runtime of this process, while serve() runs


# _FIRST_REQUEST_WAIT bounds the wait for a new connection's first request: it is served even
# while the worker drains or pauses, since its client cannot know the server gave up on it.
_FIRST_REQUEST_WAIT = 5.0


class _Reborn(BaseException):
    """Raised in the SDK's new worker (the grandchild) to unwind to serve(), which carries on as
    that worker. A BaseException, so that no `except Exception` on the way catches it."""

    def __init__(self, msg, fd):
        super().__init__()
        self.msg = msg
        self.fd = fd


class _Conn:
    __slots__ = ("sock", "addr", "busy", "thread", "fresh")

    def __init__(self, sock, addr):
        self.sock = sock
        self.addr = addr
        self.busy = True
        self.thread = None
        # fresh: no request has come on it yet. A client that just connected is about to send
        # its first request, and one that sees its new connection closed unanswered cannot tell
        # whether to retry; only a keep-alive connection between requests is idle.
        self.fresh = True


_stop_signal = None


def _on_signal(signum, frame):
    # The wakeup fd (the self-pipe) wakes the loop; a second signal changes nothing, since the
    # master escalates to SIGKILL on its own after its shutdown timeout.
    global _stop_signal
    if _stop_signal is None:
        _stop_signal = signum


def _own_process_group(pid):
    """Make the new worker (pid, or 0 for this process) lead a process group of its own, as an
    exec'd worker does: forkd signals a worker's whole group, which must not be the template's.
    The intermediate child and the worker both call it, so the group exists before either goes
    on; a failure leaves the worker in the template's group, which forkd then signals alone."""
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass


def _close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def _close_conn(sock):
    """Close an accepted connection, draining unread input first: FIN, not RST."""
    try:
        pending = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        pending = b""
    if pending:
        try:
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER
            drained = 0
            while drained < _LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass
    try:
        sock.close()
    except OSError:
        pass


class _Runtime:
    def __init__(self, handler, threads, max_connections, listeners, fork, forked=False):
        self.handler = handler
        self.threads = threads
        self.max_connections = max_connections
        self.listeners = listeners
        self.fork = fork          # say "fork": true in hello: this worker can be the template
        self.forked = forked      # made by the SDK's fork (not exec'd)

        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.conns = set()
        self.busy = 0             # connections with a request in flight (holding a slot)
        self.slot_waiters = 0     # idle connections whose next request waits for a slot
        self.exited = []          # connection threads that are ending, to join
        self.draining = False     # stop accepting, close idle connections
        self.stopping = False
        self.paused = False
        self.ops = collections.deque()
        self.accept_backoff_until = 0.0
        self.listening = False
        self.done = False

        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.drain_r, self.drain_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._on_wake)

        st = worker.state()
        if st.channel_error is not None:
            raise st.channel_error
        self.channel = st.channel
        self.pidfd = None
        self.poll_master = 0  # master PID to poll with getppid (no pidfd), or 0
        self.master_cb_added = False

    # --- the loop ---------------------------------------------------------------------------

    def run(self):
        global _current
        _current = self
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        try:
            if not self._boot():
                return
            while True:
                self._step()
                if self.done:
                    return
                timeout = None
                if self.poll_master:
                    timeout = worker.MASTER_POLL_INTERVAL
                if self.accept_backoff_until:
                    left = self.accept_backoff_until - time.monotonic()
                    timeout = max(0.0, min(timeout or 1e9, left))
                for key, _ in self.sel.select(timeout):
                    key.data(key)
                if self.poll_master and os.getppid() != self.poll_master:
                    self._master_is_gone()
        finally:
            if _current is self:
                _current = None

    def _boot(self):
        st = worker.state()
        if self.channel is not None and not st.welcomed:
            if not worker.handshake(self.fork, self.wake_r, self._drain_wake_and_check_stop):
                return False
        elif self.channel is not None:
            # The plain API welcomed this worker already (forkd.ready() before forkd.serve());
            # its reader thread owns the channel, and tells us when the master is gone.
            self.channel = None
        if self.channel is not None:
            self.sel.register(self.channel.fileno(), selectors.EVENT_READ, self._on_control)
        elif st.index >= 0 and st.channel is None:
            self.pidfd = worker.open_master_pidfd(st.master_pid)
            if self.pidfd is not None:
                self.sel.register(self.pidfd, selectors.EVENT_READ, self._on_master_exit)
            elif not worker._master_gone.is_set():
                self.poll_master = st.master_pid
        if st.channel is not None and self.channel is None:
            worker._master_gone_callbacks.append(self._wake)
            self.master_cb_added = True
        try:
            hooks.run_after_boot(strict=True)
        except Exception:
            worker.die("after_worker_boot hook failed:\n%s" % traceback.format_exc().rstrip())
        worker._requests_started = True
        self._step()
        if self.done:
            return False
        self._notify("READY=1")
        # After READY, which it would only delay: its first heartbeat is half WATCHDOG_USEC away.
        worker.reporter.start()
        return True

    def _drain_wake_and_check_stop(self):
        self._read_all(self.wake_r)
        return _stop_signal is not None

    def _step(self):
        """Bring the state up to date: stop, drain or serve, run the ops that can run."""
        while True:
            if _stop_signal is not None:
                self._begin_stop("signal %d" % _stop_signal)
            if worker._master_gone.is_set():
                self._begin_stop("the master is gone")
            head = self.ops[0] if self.ops else None
            want_quiet = self.stopping or self.paused or (
                isinstance(head, dict) and head.get("op") in ("spawn", "pause"))
            if want_quiet:
                self._drain()
            else:
                self._undrain()
            if head is None:
                break
            if want_quiet and head is not None and isinstance(head, dict) \
                    and head.get("op") in ("spawn", "pause") and not self._quiet():
                break
            self.ops.popleft()
            self._handle(head)
        now = time.monotonic()
        if self.accept_backoff_until and now >= self.accept_backoff_until:
            self.accept_backoff_until = 0.0
        with self.lock:
            can = (not self.draining and not self.accept_backoff_until
                   and self.busy + self.slot_waiters < self.threads
                   and len(self.conns) < self.max_connections)
        self._set_listening(can)
        if self.stopping and self._quiet():
            self.done = True

    def _set_listening(self, on):
        if on == self.listening:
            return
        self.listening = on
        for ls in self.listeners:
            if on:
                self.sel.register(ls, selectors.EVENT_READ, self._on_accept)
            else:
                self.sel.unregister(ls)

    def _drain(self):
        with self.lock:
            if self.draining:
                return
            self.draining = True
        os.write(self.drain_w, b"d")

    def _undrain(self):
        with self.lock:
            if not self.draining:
                return
            self.draining = False
        self._read_all(self.drain_r)

    def _quiet(self):
        """True when no connection is open and no connection thread is left."""
        with self.lock:
            if self.conns:
                return False
            ended, self.exited = self.exited, []
        for t in ended:
            t.join()
        return True

    def _begin_stop(self, why):
        if self.stopping:
            return
        self.stopping = True
        self._notify("STOPPING=1")

    def _notify(self, text):
        try:
            worker.notify(text)
        except ConnectionRefusedError:
            pass  # the master is gone: nobody to tell, and the worker is on its way out
        except OSError as e:
            worker.log("cannot notify %s: %s" % (text.split("=")[0], e))

    @staticmethod
    def _read_all(fd):
        try:
            while os.read(fd, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _wake(self):
        try:
            os.write(self.wake_w, b"w")
        except (BlockingIOError, OSError):
            pass

    # --- events -----------------------------------------------------------------------------

    def _on_wake(self, key):
        self._read_all(self.wake_r)
        with self.lock:
            ended, self.exited = self.exited, []
        for t in ended:
            t.join()

    def _on_master_exit(self, key):
        self._master_is_gone()

    def _master_is_gone(self):
        if self.pidfd is not None:
            self.sel.unregister(self.pidfd)
            _close_quietly(self.pidfd)
            self.pidfd = None
        self.poll_master = 0
        worker._set_master_gone()

    def _on_control(self, key):
        try:
            msg, fds = self.channel.recv()
        except OSError as e:
            worker.log("control channel: %s" % e)
            msg, fds = None, []
        if msg is None:
            self.sel.unregister(self.channel.fileno())
            self.channel.close()
            self.channel = None
            worker.state().channel = None
            worker._set_master_gone()
            return
        if isinstance(msg, protocol.Invalid):
            if msg.seq is not None:
                self._reply({"op": "error", "seq": msg.seq, "error": msg.reason})
            return
        msg["_fds"] = fds
        self.ops.append(msg)

    def _on_accept(self, key):
        with self.lock:
            room = (self.busy + self.slot_waiters < self.threads
                    and len(self.conns) < self.max_connections)
        if not self.listening or not room:
            return
        try:
            sock, addr = key.fileobj.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as e:
            worker.log("accept: %s" % e)
            self.accept_backoff_until = time.monotonic() + _ACCEPT_BACKOFF
            return
        sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        c = _Conn(sock, addr)
        with self.lock:
            self.conns.add(c)
            self.busy += 1
        t = threading.Thread(target=self._serve_conn, args=(c,), name="forkd-conn", daemon=True)
        c.thread = t
        try:
            t.start()
        except RuntimeError as e:
            worker.log("cannot start a thread for a connection: %s" % e)
            with self.lock:
                self.conns.discard(c)
                self.busy -= 1
            _close_conn(sock)
            self.accept_backoff_until = time.monotonic() + _ACCEPT_BACKOFF

    # --- connections (in their threads) -----------------------------------------------------

    def _serve_conn(self, c):
        _tls.conn = c
        _tls.runtime = self
        try:
            self.handler(c.sock, c.addr)
        except (ConnectionError, socket.timeout):
            pass
        except Exception:
            worker.log("connection handler failed:\n%s" % traceback.format_exc().rstrip())
        finally:
            _tls.conn = None
            _tls.runtime = None
            _close_conn(c.sock)
            with self.lock:
                self.conns.discard(c)
                if c.busy:
                    c.busy = False
                    self.busy -= 1
                    self.cond.notify()
                self.exited.append(threading.current_thread())
            self._wake()

    def wait(self, c, timeout):
        """wait_for_request for connection c, in its own thread."""
        wake = False
        with self.lock:
            if c.busy:
                c.busy = False
                self.busy -= 1
                self.cond.notify()
                wake = self.busy + self.slot_waiters == self.threads - 1
            draining = self.draining
        if wake:
            self._wake()
        fresh = c.fresh
        if draining and not fresh:
            return False
        if fresh:
            # Bounded, draining or not: a client that connects and says nothing is not waited for.
            timeout = _FIRST_REQUEST_WAIT if timeout is None else min(timeout, _FIRST_REQUEST_WAIT)
        fd = c.sock.fileno()
        p = select.poll()
        p.register(fd, select.POLLIN)
        if not fresh:
            p.register(self.drain_r, select.POLLIN)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None
            if deadline is not None:
                left = max(0, deadline - time.monotonic()) * 1000
            events = p.poll(left)
            if not events:
                return False  # idle too long
            readable = any(efd == fd for efd, _ in events)
            with self.lock:
                if readable:
                    # A request is arriving: serve it, draining or not, once a slot is free.
                    self.slot_waiters += 1
                    while self.busy >= self.threads:
                        self.cond.wait()
                    self.slot_waiters -= 1
                    self.busy += 1
                    c.busy = True
                    c.fresh = False
                    return True
                if self.draining and not fresh:
                    return False

    # --- control ops ------------------------------------------------------------------------

    def _reply(self, msg):
        if self.channel is None:
            return
        try:
            self.channel.send(msg)
        except (OSError, ValueError) as e:
            worker.log("cannot reply %s to the master: %s" % (msg.get("op"), e))

    def _handle(self, msg):
        fds = msg.pop("_fds", [])
        op, seq = msg["op"], msg.get("seq")
        if op == "spawn":
            self._spawn(msg, fds)
            return
        if op == "stdio" and len(fds) == 1:
            # This forked worker's own output (a journal stream under its own identifier), instead
            # of the one it inherited from worker 0.
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os.dup2(fds[0], 1)
            os.dup2(fds[0], 2)
            if msg.get("journal_stream"):
                os.environ["JOURNAL_STREAM"] = msg["journal_stream"]
            else:
                os.environ.pop("JOURNAL_STREAM", None)
        for fd in fds:
            _close_quietly(fd)
        if op == "pause":
            if not self.paused:
                self.paused = True
                hooks.run_before_refork()
            self._reply({"op": "paused", "seq": seq})
        elif op == "resume":
            if self.paused:
                self.paused = False
                hooks.run_after_refork()
            self._reply({"op": "resumed", "seq": seq})
        elif seq is not None and op not in ("error", "welcome"):
            self._reply({"op": "error", "seq": seq,
                         "error": "unknown op %r" % op if op not in protocol.OPS
                         else "unexpected op %r" % op})

    def _spawn(self, msg, fds):
        seq = msg.get("seq")
        # The Go master leaves out zero-valued fields ("worker": 0); a missing index means 0.
        index, gen = msg.get("worker", 0), msg.get("generation")

        def failed(reason):
            for fd in fds:
                _close_quietly(fd)
            self._reply({"op": "spawn_failed", "seq": seq, "error": reason})

        if seq is None:
            for fd in fds:
                _close_quietly(fd)
            return
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (index, gen)):
            for fd in fds:
                _close_quietly(fd)
            self._reply({"op": "error", "seq": seq,
                         "error": "spawn needs integer worker and generation"})
            return
        if len(fds) != 1:
            failed("spawn carried %d descriptors, want 1: the new worker's channel" % len(fds))
            return
        if self.stopping:
            failed("the template is stopping")
            return
        if not worker.is_template():
            failed("this worker is not the template")
            return
        try:
            hooks.run_prepare(strict=True)
        except Exception as e:
            worker.log("before_fork hook failed:\n%s" % traceback.format_exc().rstrip())
            failed("before_fork hook failed: %s" % e)
            return
        chfd = fds[0]
        pid, err = self._double_fork(msg, chfd)
        _close_quietly(chfd)
        worker.reporter.start()
        hooks.run_parent()
        if pid:
            self._reply({"op": "spawned", "seq": seq, "pid": pid})
        else:
            self._reply({"op": "spawn_failed", "seq": seq, "error": err})

    def _double_fork(self, msg, chfd):
        """Fork the worker through a short-lived intermediate child. Returns (pid, None) or
        (0, reason) in the template; raises _Reborn in the new worker."""
        worker.reporter.stop()
        r, w = os.pipe()
        hooks._sdk_forking = True
        try:
            pid = os.fork()
        except OSError as e:
            hooks._sdk_forking = False
            os.close(r)
            os.close(w)
            return 0, "fork: %s" % e
        if pid == 0:
            self._intermediate(r, w, msg, chfd)
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
        try:
            wpid = int(data)
        except ValueError:
            wpid = 0
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and wpid > 0:
            return wpid, None
        if os.WIFSIGNALED(status):
            return 0, "the intermediate child was killed by signal %d" % os.WTERMSIG(status)
        return 0, "the intermediate child could not fork (status %d)" % os.WEXITSTATUS(status)

    def _intermediate(self, r, w, msg, chfd):
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
        raise _Reborn(msg, chfd)

    # --- the new worker ---------------------------------------------------------------------

    def reborn(self, rb):
        """In the SDK's new worker: drop the template's state, become worker rb.msg["worker"]."""
        # Signals must not be written into a descriptor number the template's pipe had.
        # Hello first: the master's answer travels while this process sheds the template's state.
        hello_sent = worker.send_forked_hello(rb.fd)
        signal.set_wakeup_fd(-1)
        # The template's descriptors: its loop, pipes, pidfd, channel, queued spawns' channels.
        self.sel.close()
        for fd in (self.wake_r, self.wake_w, self.drain_r, self.drain_w):
            _close_quietly(fd)
        if self.pidfd is not None:
            _close_quietly(self.pidfd)
        for op in self.ops:
            if isinstance(op, dict):
                for fd in op.get("_fds", []):
                    _close_quietly(fd)
        self.ops.clear()
        worker.become_forked_worker(rb.msg.get("worker", 0), rb.msg["generation"], rb.fd, hello_sent)
        try:
            hooks.run_child(strict=True)
        except Exception:
            worker.die("after_fork_child hook failed:\n%s" % traceback.format_exc().rstrip())
        hooks._sdk_forking = False
        return _Runtime(self.handler, self.threads, self.max_connections, self.listeners,
                        fork=False, forked=True)

    def close(self):
        """After the loop: stop heartbeats, release the loop's descriptors."""
        worker.reporter.stop()
        if self.master_cb_added:
            try:
                worker._master_gone_callbacks.remove(self._wake)
            except ValueError:
                pass
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError):
            pass
        self.sel.close()
        for fd in (self.wake_r, self.wake_w, self.drain_r, self.drain_w):
            _close_quietly(fd)
        if self.pidfd is not None:
            _close_quietly(self.pidfd)


def serve(handle_connection, threads=DEFAULT_THREADS, listeners=None,
          max_connections=DEFAULT_MAX_CONNECTIONS):
    """See the forkd package docstring."""
    global _stop_signal
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("forkd.serve must run on the main thread (it handles signals and forks)")
    if threads < 1 or max_connections < threads:
        raise ValueError("want threads >= 1 and max_connections >= threads")
    if listeners is None:
        listeners = worker.listeners()
    listeners = list(listeners)
    if not listeners:
        raise worker.Error("no listening sockets: not under forkd or socket activation "
                           "(pass listeners= to serve on sockets of your own)")
    for ls in listeners:
        # Every worker shares these sockets and their O_NONBLOCK flag (docs/protocol.md section 1).
        # All workers of a forkd cluster run this same runtime, which needs an accept that never
        # blocks: after poll says "readable", every worker wakes and all but one find nothing.
        ls.setblocking(False)
    _stop_signal = None
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, _on_signal)
    rt = _Runtime(handle_connection, threads, max_connections, listeners, fork=True)
    try:
        while True:
            try:
                rt.run()
                return
            except _Reborn as rb:
                rt = rt.reborn(rb)
    finally:
        rt.close()
        for sig, handler in previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, TypeError):
                pass


def wait_for_request(sock, timeout=None):
    """See the forkd package docstring."""
    c = getattr(_tls, "conn", None)
    rt = getattr(_tls, "runtime", None)
    if c is not None and rt is not None and c.sock is sock:
        return rt.wait(c, timeout)
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    return bool(p.poll(None if timeout is None else timeout * 1000))


def draining():
    """See the forkd package docstring."""
    rt = _current
    return rt is not None and rt.draining
