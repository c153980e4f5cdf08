"""gunicorn's worker classes, as forkd runs them: the same class, with forkd where gunicorn's
arbiter was.

worker_class_for(cls, runner) makes a subclass of the configured class (SyncWorker, ThreadWorker,
UvicornWorker, any gunicorn worker) that changes only how the worker talks to its supervisor:

- notify(), which gunicorn's worker calls from its main loop to tell the arbiter it is alive, says
  READY=1 the first time and then sends forkd's heartbeats (WATCHDOG=1) and the request count
  (X_FORKD_REQUESTS). A loop that hangs stops beating, and forkd kills and replaces the worker,
  as gunicorn's arbiter does when a worker misses its timeout.
- stop signals are remembered, so that a worker that ended its serving period to fork knows it
  must stop instead.
- draining (a stop, a max_requests exit, or the template ending a serving period to fork) never
  closes a keep-alive connection under a client that may be sending its next request on it: each
  idle one gets its next request answered, with Connection: close, until its keep-alive timeout.
  gunicorn's threaded worker before 24.0 leaves its idle connections open when its loop ends
  (the process exit closes them); from 24.0 it drains them itself. In both, a request that was in
  flight when the drain began, answered keep-alive, closed its connection at once: here it joins
  the idle ones.
- a new connection waits for its first request in the threaded worker's poller, as gunicorn's
  threaded worker does from 21.0 (gunicorn issue 2917). Before, it went to a thread at once, to
  wait there in a blocking read: a client that opens a connection and sends nothing yet (HTTP
  clients dial ahead and park connections in their pool) kept a thread, and then the drain,
  waiting for the whole graceful timeout, while the requests sent on idle keep-alive connections
  went unanswered; the process could not exit until that client closed the connection. The drain
  treats such a connection as an idle one: its first request is answered, with Connection:
  close, until the keep-alive timeout counted from the drain's start. gunicorn 21 to 23 forget
  it in the poller they close as their loop ends, which closed it unanswered. gunicorn 26 gives
  a new connection a thread that waits up to 5 s for its first bytes (then the poller, as
  pending): that wait is gunicorn's, and the drain waits for it too; while draining, gunicorn
  closes the connection once the 5 s are over, where forkd keeps it in the poller.

The listening sockets are forkd's (LISTEN_FDS). Each serving period gets duplicates wrapped in
gunicorn's socket classes, without gunicorn's set_options: listen() again would override the
backlog of forkd's listen block. TCP_NODELAY is set, as gunicorn sets it. A duplicate shares its
open file description, and so its O_NONBLOCK, with every other worker process (and the
template): that flag is set once and never cleared (see SharedListener).
"""

import functools
import os
import select
import selectors
import signal
import socket
import threading
import time
from concurrent import futures

from gunicorn import sock as gsock
from gunicorn.workers.base import Worker
from gunicorn.workers.sync import SyncWorker

try:  # gunicorn's threaded worker needs concurrent.futures, always there on Python 3
    from gunicorn.workers import gthread as _gthread
    from gunicorn.workers.gthread import ThreadWorker
except ImportError:  # pragma: no cover
    _gthread = ThreadWorker = None

#: gunicorn >= 26's threaded worker: what a request thread returns for a new connection that sent
#: nothing in its first seconds, which then waits for its first request in the poller.
_DEFER = getattr(_gthread, "_DEFER", None)

from .. import worker as core

__all__ = ["worker_class_for", "can_fork", "counts_requests", "period_listeners", "interrupt", "busy_threads"]

#: The signals that stop a worker. The template blocks them across a fork: the new worker
#: inherits the template's handlers, which would take a stop meant for it, and it keeps them
#: blocked until gunicorn's handlers are in (ForkdWorker.init_signals).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

#: Worker classes whose serving period forkd knows how to end while the process goes on, so the
#: template can fork between two periods: gunicorn's sync and threaded workers.
FORKABLE = tuple(c for c in (SyncWorker, ThreadWorker) if c is not None)


def can_fork(cls):
    return issubclass(cls, FORKABLE)


def counts_requests(cls):
    """Whether gunicorn's worker counts requests in worker.nr (sync, threaded, async workers do;
    uvicorn's counts in its own server)."""
    return issubclass(cls, FORKABLE) or any(
        c.__module__.startswith("gunicorn.workers.") and c.__name__ == "AsyncWorker"
        for c in cls.__mro__)


def _legacy_threaded(w):
    """gunicorn's threaded worker before 24.0: futures and a _keep deque, no drain of its own."""
    return ThreadWorker is not None and isinstance(w, ThreadWorker) and hasattr(w, "_keep") \
        and not hasattr(w, "method_queue")


#: The worker whose finish_request runs on this thread, and the alive it saw first.
_FINISHING = threading.local()


class ForkdWorker:
    """The part forkd adds to the configured worker class (see the module docstring)."""

    #: The Runner (forkd.gunicorn) this class was made for.
    forkd = None

    def notify(self):
        self.forkd.alive(self)

    def init_signals(self):
        super().init_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a stop since the fork: now

    def handle_exit(self, sig, frame):
        self.forkd.stop_requested = True
        super().handle_exit(sig, frame)
        if self._forkd_wake_w >= 0:
            try:
                os.write(self._forkd_wake_w, b"!")  # gunicorn < 24 would wait for its 1 s poll
            except OSError:
                pass

    def handle_quit(self, sig, frame):
        self.forkd.stop_requested = True
        super().handle_quit(sig, frame)

    def handle(self, *args):
        # gunicorn's sync worker serves in its main loop, which beats only between two requests:
        # say busy at once (at most every core.BUSY_INTERVAL), and idle, with the next beat, once
        # done. The threaded worker's busy threads are its requests in flight (busy_threads).
        if not isinstance(self, SyncWorker):
            return super().handle(*args)
        self._forkd_busy = 1
        core.set_busy(1, send=True)
        try:
            return super().handle(*args)
        finally:
            self._forkd_busy = 0
            core.set_busy(0)

    # gunicorn's worker sets alive once (True) and its stop sets it to False, from a signal
    # handler or, here, from forkd's threads (interrupt). alive is read through this property so
    # that finish_request can see one value all through (_FINISHING).
    @property
    def alive(self):
        if getattr(_FINISHING, "worker", None) is self:
            return _FINISHING.alive
        return self._forkd_alive

    @alive.setter
    def alive(self, value):
        if self._forkd_alive and not value:
            self._forkd_stopped_at = time.monotonic()
        self._forkd_alive = value

    def finish_request(self, *args):
        # gunicorn's threaded worker closes a connection whose request ends while it drains, even
        # when the answer told the client to keep it open: the client's next request on it would
        # meet a closed connection. Kept instead, it gets its next request answered during the
        # drain (with Connection: close), or is closed at its keep-alive timeout.
        #
        # alive is read once. gunicorn reads it again to choose between keeping the connection
        # and closing it: a stop landing between the two reads (another thread sets alive, or a
        # signal handler runs between two bytecodes) made it close the connection that forkd had
        # just let through as kept, under a client already sending its next request (a reset).
        # With the value pinned for this thread, gunicorn keeps it as it does while serving: in
        # _keep and its poller, where the drain finds it.
        alive = self.alive
        try:
            if not alive:
                try:
                    if _keep_for_drain(self, args):
                        return
                except Exception:
                    pass
            _FINISHING.worker, _FINISHING.alive = self, alive
            try:
                super().finish_request(*args)
            finally:
                _FINISHING.worker = None
        finally:
            if len(args) == 1:  # gunicorn < 24, in a pool thread: see _drain_legacy_keepalive
                with self._lock:
                    self._forkd_finished += 1

    def wait_for_and_dispatch_events(self, timeout):
        # gunicorn >= 24 only. Its drain waits for events up to the whole graceful timeout at a
        # time, and closes the idle connections whose keep-alive timeout ran out only between
        # two waits: wake up often enough to close them in time, and to exit when they are gone.
        if not self.alive:
            timeout = min(timeout, core.beat_interval())
        return super().wait_for_and_dispatch_events(timeout)

    def enqueue_req(self, conn):
        # A new connection (no parser yet) of gunicorn < 21: into the poller until it is readable
        # (see the module docstring); the drain takes it with the idle keep-alive connections.
        if self._forkd_polls_fresh and conn.parser is None:
            with self._lock:
                self.poller.register(conn.sock, selectors.EVENT_READ,
                                     functools.partial(self._forkd_readable, conn))
            return
        super().enqueue_req(conn)

    def _forkd_readable(self, conn, sock):
        with self._lock:
            self.poller.unregister(sock)
        super().enqueue_req(conn)

    def _wrap_future(self, fs, conn):
        # gunicorn < 24 only: every request's future gets finish_request as its done callback.
        with self._lock:
            self._forkd_submitted += 1
        super()._wrap_future(fs, conn)

    def load_wsgi(self):
        super().load_wsgi()
        if not counts_requests(type(self)):
            self.wsgi = _counting_asgi(self.wsgi)

    def run(self):
        legacy = _legacy_threaded(self)
        if legacy:
            self._forkd_polls_fresh = not hasattr(self, "on_client_socket_readable")
            self._forkd_fresh = set()
            self.poller = _LoopPoller(self.poller, on_close=self._forkd_start_drain)
            self._forkd_wake_r, self._forkd_wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self.poller.register(self._forkd_wake_r, selectors.EVENT_READ, _drain_pipe)
        try:
            super().run()
        finally:
            if legacy:
                fds = (self._forkd_wake_r, self._forkd_wake_w)
                self._forkd_wake_r = self._forkd_wake_w = -1
                for fd in fds:
                    os.close(fd)
        if legacy:
            drain = self._forkd_drain
            if drain is None:
                _drain_legacy_keepalive(self)
            else:
                drain.join()

    def _forkd_start_drain(self, polled):
        # gunicorn < 24 closes its poller as its loop ends, then waits for the requests in
        # flight (up to the graceful timeout): the drain serves the idle keep-alive connections
        # meanwhile, so that their next requests do not wait for the slowest request in flight.
        # Without a thread (refused by the system), it runs after that wait.
        #
        # polled: what the poller watched as it closed. The new connections still waiting there
        # for their first request (gunicorn 21 to 23 put them there, forkd.gunicorn on 20.1) are
        # nowhere else: gunicorn forgot them, and the poller's end closed them (nothing else
        # referred to them), under clients that may be sending their first request. The drain
        # takes them.
        with self._lock:
            self._forkd_fresh.update(
                key.data.args[0] for key in polled
                if isinstance(key.data, functools.partial) and key.data.args
                and _is_fresh(key.data.args[0]))
        t = threading.Thread(target=_drain_legacy_keepalive, args=(self,), name="forkd-drain",
                             daemon=True)
        try:
            t.start()
        except RuntimeError:
            return
        self._forkd_drain = t

    _forkd_alive = True  # what alive says (the property above); gunicorn's __init__ sets it too
    _forkd_stopped_at = None  # time.monotonic() when alive became False: the drain's start
    _forkd_busy = 0  # the sync worker: 1 while it serves a request
    _forkd_wake_r = _forkd_wake_w = -1
    _forkd_submitted = _forkd_finished = 0
    _forkd_polls_fresh = False  # gunicorn < 21: forkd puts new connections in the poller
    _forkd_fresh = None  # gunicorn < 24: new connections the drain takes from the closed poller
    _forkd_drain = None  # gunicorn < 24: the drain's thread, once the loop has ended


class _LoopPoller:
    """gunicorn < 24's threaded worker's poller, made safe for its request threads.

    There, a request that ends keep-alive appends its connection to _keep and registers it with
    the poller from the request's thread, while the loop may be closing the poller: the register
    then fails, and gunicorn closes the connection, which stays in _keep, under a client that may
    already be sending its next request (it gets a reset). Once closed, this poller takes
    registrations without complaint: the connection stays open in _keep, for the drain after the
    loop (_drain_legacy_keepalive)."""

    def __init__(self, sel, on_close=None):
        self._sel = sel
        self._lock = threading.Lock()
        self._closed = False
        self._on_close = on_close  # called once closed, on the loop's thread, with its keys

    def register(self, fileobj, events, data=None):
        with self._lock:
            if self._closed:
                return None
            return self._sel.register(fileobj, events, data)

    def unregister(self, fileobj):
        with self._lock:
            if self._closed:
                return None
            return self._sel.unregister(fileobj)

    def select(self, timeout=None):
        return self._sel.select(timeout)

    def close(self):
        with self._lock:
            if self._closed:
                return
            self._closed = True
            polled = list((self._sel.get_map() or {}).values())
            self._sel.close()
        if self._on_close is not None:
            self._on_close(polled)

    def __getattr__(self, name):
        return getattr(self._sel, name)


def _is_fresh(conn):
    """Whether conn is a connection of gunicorn's threaded worker that has not begun its first
    request (its parser comes with it)."""
    return _gthread is not None and isinstance(conn, _gthread.TConn) and conn.parser is None


def _keep_for_drain(w, args):
    """finish_request's case: a keep-alive answer went out while w drains, or (gunicorn >= 26) a
    new connection sent nothing in its thread's first seconds. Puts the connection where gunicorn
    keeps idle keep-alive connections (or connections waiting for their first request); True
    when it did."""
    if len(args) == 2:
        # gunicorn >= 24: finish_request(conn, fs) on the main thread; its drain loop serves the
        # connections in keepalived_conns (and pending_conns) until their timeout.
        conn, fs = args
        if fs.cancelled() or fs.exception() is not None:
            return False
        if _DEFER is not None and fs.result() is _DEFER and hasattr(w, "pending_conns"):
            return _pend_for_drain(w, conn)
        if fs.result() is not True:
            return False
        conn.sock.setblocking(False)
        conn.set_timeout()
        w.keepalived_conns.append(conn)
        w.poller.register(conn.sock, selectors.EVENT_READ,
                          functools.partial(w.on_client_socket_readable, conn))
        return True
    # gunicorn < 24: finish_request(fs) in the thread that ran the request; the drain after its
    # loop (_drain_legacy_keepalive) serves what is in _keep.
    (fs,) = args
    if fs.cancelled() or fs.exception() is not None:
        return False
    keepalive, conn = fs.result()
    if not keepalive:
        return False
    conn.sock.setblocking(False)
    conn.set_timeout()
    with w._lock:
        w._keep.append(conn)
    return True


def _pend_for_drain(w, conn):
    """gunicorn >= 26, draining: a new connection that sent nothing while a thread waited for it
    (up to 5 s), which gunicorn closes then, waits for its first request in the poller, as it
    would while serving, until the keep-alive timeout counted from the drain's start (which no
    idle keep-alive connection outlives either). Its first request is answered with
    Connection: close. False when that timeout is over already: gunicorn closes it."""
    stopped_at = w._forkd_stopped_at if w._forkd_stopped_at is not None else time.monotonic()
    deadline = stopped_at + w.cfg.keepalive
    if deadline <= time.monotonic():
        return False
    conn.sock.setblocking(False)
    conn.timeout = deadline  # gunicorn >= 24 counts in time.monotonic()
    w.pending_conns.append(conn)
    w.poller.register(conn.sock, selectors.EVENT_READ,
                      functools.partial(w.on_pending_socket_readable, conn))
    return True


def _drain_pipe(fd):
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, OSError):
        pass


def worker_class_for(cls, runner):
    """The configured worker class with forkd's part (same name, a subclass)."""
    return type(cls.__name__, (ForkdWorker, cls), {"forkd": runner, "__module__": cls.__module__,
                                                    "__qualname__": cls.__qualname__})


def interrupt(w):
    """End w's serving period as soon as no request is in flight, from any thread: what gunicorn
    does when its worker is told to stop gracefully (alive = False), and a wake-up so that its
    loop sees it now rather than at its next timeout. Only for FORKABLE classes."""
    w.alive = False
    try:
        mq = getattr(w, "method_queue", None)
        if mq is not None and getattr(mq, "_write_fd", None) is not None:
            mq.defer(lambda: None)  # gunicorn >= 24: its own thread-safe wake-up
        elif w._forkd_wake_w >= 0:
            os.write(w._forkd_wake_w, b"!")
        elif isinstance(w.PIPE, tuple) and len(w.PIPE) == 2:
            os.write(w.PIPE[1], b"!")  # the sync worker's select() watches PIPE[0]
    except (OSError, TypeError, ValueError):
        pass  # the loop has not started, or has ended: it sees alive = False when it runs


def busy_threads(w):
    """w's threads serving a request now, for X_FORKD_BUSY=: the threaded worker's requests in
    flight, the sync worker's one request or none; None for a worker class that does not say
    (uvicorn's: its event loop's tasks are not threads)."""
    if ThreadWorker is not None and isinstance(w, ThreadWorker):
        pending = getattr(w, "futures", None)
        return sum(1 for f in list(pending) if not f.done()) if pending is not None else None
    if isinstance(w, SyncWorker):
        return w._forkd_busy
    return None


def in_flight(w):
    """Requests w still serves after its loop returned (the graceful timeout ran out)."""
    pending = getattr(w, "futures", None)
    if pending is not None:
        return sum(1 for f in list(pending) if not f.done())
    if ThreadWorker is not None and isinstance(w, ThreadWorker):
        return max(0, getattr(w, "nr_conns", 0))
    return 0


def _drain_legacy_keepalive(w):
    """gunicorn < 24's threaded worker, once its loop has ended (in a thread of its own, started
    when the loop closes its poller, while the loop's end waits for the requests in flight):
    answer the next request on each idle keep-alive connection (alive is False, so gunicorn
    answers it with Connection: close) until the connection's keep-alive timeout, then close it;
    bounded by the graceful timeout.

    The loop's end waits for the requests in flight, but not for their done callbacks
    (finish_request, which keeps a connection answered keep-alive: see _keep_for_drain): until
    every callback has run, more connections may join _keep. A new connection still waiting for
    its first request gets until its keep-alive timeout from now, as an idle one does."""
    sel = selectors.DefaultSelector()
    pool = None
    started = []
    deadline = time.monotonic() + w.cfg.graceful_timeout

    def take_kept():
        with w._lock:
            kept = list(w._keep)
            w._keep.clear()
            fresh = list(w._forkd_fresh or ())
            if fresh:
                w._forkd_fresh.clear()
        for c in fresh:
            c.set_timeout()
        for c in kept + fresh:
            try:
                sel.register(c.sock, selectors.EVENT_READ, c)
            except (OSError, ValueError, KeyError):
                c.close()  # closed already (fileno -1), or its descriptor taken twice

    try:
        while time.monotonic() < deadline:
            take_kept()
            with w._lock:
                callbacks_due = w._forkd_finished < w._forkd_submitted
            if not sel.get_map() and not callbacks_due:
                break
            now = time.time()  # TConn.timeout is time.time() based before 24.0
            # A connection whose next request is already there is not idle, whatever its
            # keep-alive deadline: its client sent that request while the loop waited for the
            # requests in flight (which may outlast the deadline), and gets its answer.
            waiting = {key.fileobj for key, _ in sel.select(0)} if sel.get_map() else set()
            for key in list(sel.get_map().values()):
                if key.fileobj in waiting:
                    continue
                if key.data.timeout is None or key.data.timeout <= now:
                    sel.unregister(key.fileobj)
                    key.data.close()
            wait = core.beat_interval()
            if sel.get_map():
                wait = min(wait, min(k.data.timeout for k in sel.get_map().values()) - now)
            if callbacks_due:
                wait = min(wait, 0.01)
            for key, _ in sel.select(max(0.0, wait)):
                sel.unregister(key.fileobj)
                if pool is None:
                    pool = futures.ThreadPoolExecutor(max_workers=max(1, w.cfg.threads))
                started.append(pool.submit(_serve_last_request, w, key.data))
    finally:
        take_kept()
        for key in list(sel.get_map().values()):
            key.data.close()
        sel.close()
        if pool is not None:
            futures.wait(started, timeout=max(0.0, deadline - time.monotonic()))
            pool.shutdown(wait=False)
        # In flight past the graceful timeout: in_flight() says so to whoever wants to fork.
        w.futures.extend(f for f in started if not f.done())


def _serve_last_request(w, conn):
    try:
        conn.init()
        w.handle(conn)
    finally:
        conn.close()


def _counting_asgi(app):
    """Count HTTP requests of an ASGI 3 app (uvicorn's worker does not count in worker.nr)."""
    import asyncio
    import inspect
    call = app if inspect.isfunction(app) or inspect.ismethod(app) else getattr(app, "__call__", None)
    if not asyncio.iscoroutinefunction(call):
        return app  # ASGI 2 or WSGI through uvicorn: left as it is, uncounted

    async def counted(scope, receive, send):
        if scope.get("type") == "http":
            core.add_requests(1)
        return await app(scope, receive, send)

    return counted


class SharedListener(socket.socket):
    """A listening socket whose open file description other processes share: forkd's listener,
    on which every worker accepts. The description stays non-blocking: clearing O_NONBLOCK
    (socket.dup() copies a blocking timeout with settimeout(None); gevent's worker calls
    setblocking(True)) would leave another worker's accept() waiting for the next connection
    when its poller said readable and another process took the connection, or, in the sync
    worker that accepts at every turn of its loop, whenever nobody connects; its loop, and so
    its heartbeat, stops meanwhile. The blocking mode a worker class sets is this object's own;
    accept() waits as that mode says, for a connection no other process took first."""

    __slots__ = ("_mode",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._mode = None  # as socket(fileno=) and dup() say: blocking
        socket.socket.settimeout(self, 0.0)

    def settimeout(self, value):
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._mode = value

    def setblocking(self, flag):
        self._mode = None if flag else 0.0

    def gettimeout(self):
        return self._mode

    def getblocking(self):
        return self._mode != 0.0

    @property
    def timeout(self):
        return self._mode

    def accept(self):
        mode = self._mode
        deadline = None if mode is None else time.monotonic() + mode
        poller = None
        while True:
            try:
                return super().accept()
            except BlockingIOError:
                if mode == 0.0:
                    raise
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise socket.timeout("timed out")
            if poller is None:
                poller = select.poll()
                poller.register(self.fileno(), select.POLLIN)
            poller.poll(None if left is None else left * 1000)


def period_listeners(socks, cfg, log):
    """Duplicates of forkd's listeners for one serving period, in gunicorn's socket classes.
    gunicorn's threaded and uvicorn's workers close their sockets when their loop ends; the
    originals stay open for the next period and for forked workers."""
    out = []
    for s in socks:
        dup = SharedListener(s.family, s.type, s.proto, fileno=os.dup(s.fileno()))
        if dup.family == socket.AF_UNIX:
            cls = gsock.UnixSocket
        elif dup.family == socket.AF_INET6:
            cls = gsock.TCP6Socket
        else:
            cls = gsock.TCPSocket
        if dup.family in (socket.AF_INET, socket.AF_INET6):
            try:
                dup.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        wrapped = cls.__new__(cls)
        wrapped.log = log
        wrapped.conf = cfg
        wrapped.cfg_addr = dup.getsockname()
        wrapped.sock = dup
        out.append(wrapped)
    return out


def close_period(w):
    """Release what one serving period of w made: its wake-up pipe, heartbeat file, listener
    duplicates and thread pool. The process goes on (the template between two periods)."""
    pipe = w.PIPE
    if isinstance(pipe, tuple):
        w.PIPE = []
        for fd in pipe:
            try:
                os.close(fd)
            except OSError:
                pass
    try:
        w.tmp.close()
    except (OSError, ValueError, AttributeError):
        pass
    for s in w.sockets:
        try:
            s.close()
        except (OSError, AttributeError):
            pass
    tpool = getattr(w, "tpool", None)
    if tpool is not None:
        tpool.shutdown(wait=not in_flight(w))



def abandon_period(w):
    """In a mold forked while w served (w's threads do not exist here, and what they used is
    shared with the serving process): release what w holds without stopping it or taking any of
    its locks, which a dead thread may hold. close(2) on each descriptor, never a word to anyone:
    its signal pipe, heartbeat file, listener duplicates, its poller (the epoll set lives on in the
    serving process; closing this copy deregisters nothing there), gunicorn >= 24's method queue,
    forkd's wake-up pipe. Its thread pool is left as it is (its threads are gone; shutting it
    down would wait for them). The connections are runtime.drop_connections' business."""
    pipe = w.PIPE
    if isinstance(pipe, tuple):
        w.PIPE = []
        for fd in pipe:
            _close_fd(fd)
    for fd in (w._forkd_wake_r, w._forkd_wake_w):
        if fd >= 0:
            _close_fd(fd)
    w._forkd_wake_r = w._forkd_wake_w = -1
    mq = getattr(w, "method_queue", None)
    for name in ("_read_fd", "_write_fd"):
        fd = getattr(mq, name, None) if mq is not None else None
        if isinstance(fd, int) and fd >= 0:
            _close_fd(fd)
            setattr(mq, name, None)
    poller = getattr(w, "poller", None)
    sel = getattr(poller, "_sel", poller)  # a _LoopPoller's lock may be held: go round it
    inner = getattr(sel, "_selector", None)  # select.epoll, which closes its descriptor once
    if inner is not None and hasattr(inner, "close"):
        try:
            inner.close()
        except (OSError, ValueError):
            pass
    try:
        w.tmp.close()
    except (OSError, ValueError, AttributeError):
        pass
    for s in getattr(w, "sockets", None) or ():
        try:
            s.close()
        except (OSError, AttributeError):
            pass


def _close_fd(fd):
    try:
        os.close(fd)
    except OSError:
        pass
