"""This process's side of the forkd worker contract (docs/protocol.md): the environment it was
started with, its listeners, its notifications, heartbeats and request count, the control
channel's handshake, and whether the master is still there.

The public functions are re-exported by the forkd package, whose docstring documents them.
"""

import os
import random
import select
import socket
import sys
import threading
import time

from . import sdnotify as _notify
from . import protocol

__version__ = "0.1.0"

#: What this SDK calls itself in ``hello``.
SDK = "forkd-python/" + __version__

LISTEN_FDS_START = 3
UNKNOWN_NAME = "unknown"

# How often the request count is reported when no heartbeat carries it.
REQUESTS_INTERVAL = 1.0
# How often the fallback without pidfds checks whether the master is gone.
MASTER_POLL_INTERVAL = 1.0


class Error(Exception):
    """Something forkd or systemd set for this process is unusable: a malformed LISTEN_FDS,
    LISTEN_FDNAMES, WATCHDOG_USEC, WATCHDOG_PID, FORKD_WORKER, FORKD_GENERATION or
    FORKD_CONTROL_FD, or a passed descriptor that is not a listening stream socket. A real
    supervisor never does that."""


def log(msg):
    """Write one line to stderr, which forkd sends to its log."""
    try:
        sys.stderr.write("forkd: %s\n" % msg)
        sys.stderr.flush()
    except Exception:
        pass


def start_thread(target, args, name, consequence):
    """Start a daemon thread; when the system refuses one (RLIMIT_NPROC, memory), log what that
    means and return None instead of raising into the app."""
    t = threading.Thread(target=target, args=args, name=name, daemon=True)
    try:
        t.start()
    except RuntimeError as e:
        log("cannot start the %s thread (%s): %s" % (name, e, consequence))
        return None
    return t


def die(msg, code=1):
    """Log msg and exit at once with code, from any thread."""
    log(msg)
    os._exit(code)


# --- protocol version ---------------------------------------------------------------------------

def check_protocol():
    """Exit with status 1 when FORKD_PROTOCOL names a version this SDK does not speak."""
    theirs = os.environ.get("FORKD_PROTOCOL", "")
    if theirs and theirs != str(protocol.VERSION):
        msg = ("forkd-python speaks protocol %d, this forkd master speaks %s: upgrade the SDK"
               % (protocol.VERSION, theirs))
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
        os._exit(1)


# --- the environment ----------------------------------------------------------------------------

def _int_env(name, unset):
    text = os.environ.get(name, "")
    if text == "":
        return unset
    try:
        return int(text, 10)
    except ValueError:
        raise Error("%s=%r is not an integer" % (name, text)) from None


class _State:
    """What the supervisor passed this process, read from the environment for one PID."""

    def __init__(self):
        self.pid = os.getpid()
        listen_pid = os.environ.get("LISTEN_PID", "")
        # LISTEN_PID names the worker the environment was made for. A process the worker started
        # (or forked without the SDK) inherits the variables but is not that worker: it must not
        # take the listeners, nor the control channel whose number it may have for another file.
        self.mine = True
        if listen_pid:
            try:
                self.mine = int(listen_pid) == self.pid
            except ValueError:
                raise Error("LISTEN_PID=%r is not an integer" % listen_pid) from None
        self.index = _int_env("FORKD_WORKER", -1)
        if self.index < -1:
            raise Error("FORKD_WORKER=%d: want an index >= 0" % self.index)
        self.generation = _int_env("FORKD_GENERATION", 0)
        self.watchdog = self._watchdog()
        self.master_pid = os.getppid() if self.index >= 0 else 0
        self.control_fd = None
        fd = _int_env("FORKD_CONTROL_FD", None)
        if fd is not None and self.mine:
            if fd < 0:
                raise Error("FORKD_CONTROL_FD=%d is not a descriptor" % fd)
            self.control_fd = fd
        self.channel = None
        self.channel_error = None
        if self.control_fd is not None:
            try:
                self.channel = protocol.Channel.from_fd(self.control_fd)
            except (OSError, ValueError) as e:
                self.channel_error = Error("FORKD_CONTROL_FD=%d: %s" % (self.control_fd, e))
        self.hello_sent = False
        self.welcomed = False
        self.template = False
        # A mold: a template forked from a serving worker (docs/protocol.md, molds).
        self.mold = False
        # Whether this worker serves: False in a template the master welcomed with "serve": false
        # (mold mode's worker 0) and in every mold.
        self.serve = True
        self.listeners = None  # made by listeners() on first use
        self.names = None

    def _watchdog(self):
        # sd_watchdog_enabled(3): WATCHDOG_USEC applies when WATCHDOG_PID is unset or is us.
        usec = os.environ.get("WATCHDOG_USEC", "")
        if not usec:
            return 0.0
        try:
            n = int(usec, 10)
        except ValueError:
            raise Error("WATCHDOG_USEC=%r is not an integer" % usec) from None
        if n <= 0:
            raise Error("WATCHDOG_USEC must be a positive number of microseconds")
        pid = _int_env("WATCHDOG_PID", None)
        if pid is not None and pid != self.pid:
            return 0.0
        return n / 1e6


_lock = threading.RLock()
_state = None


def state():
    """The _State of this process, read once per PID (a forked child reads it anew)."""
    global _state
    with _lock:
        if _state is None:
            _opt_in_to_ksm()
        if _state is None or _state.pid != os.getpid():
            _state = _State()
        return _state


#: prctl(2)'s option that opts a whole process in to KSM (Linux 6.4+).
PR_SET_MEMORY_MERGE = 67


def _opt_in_to_ksm():
    """With memory.ksm (FORKD_KSM=1), forkd's shim opts the worker in to the kernel's same-page
    merging before it execs the app; kernels before 6.16 drop the flag at the exec, so the exec'd
    process (the template, or an exec-mode worker) opts in again, and its forks inherit it. A
    kernel without it merges nothing: the master said so once."""
    if os.environ.get("FORKD_KSM") != "1":
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_MEMORY_MERGE, ctypes.c_ulong(1), ctypes.c_ulong(0),
                                                ctypes.c_ulong(0), ctypes.c_ulong(0))
    except (OSError, AttributeError):
        pass


# --- listeners ----------------------------------------------------------------------------------

def _take_listeners(st):
    count_text = os.environ.get("LISTEN_FDS", "")
    if not count_text or not os.environ.get("LISTEN_PID") or not st.mine:
        return [], []
    try:
        count = int(count_text, 10)
    except ValueError:
        raise Error("LISTEN_FDS=%r is not an integer" % count_text) from None
    if count < 0:
        raise Error("LISTEN_FDS=%d: want a count >= 0" % count)
    names_text = os.environ.get("LISTEN_FDNAMES", "")
    if names_text:
        names = names_text.split(":")
        if len(names) != count:
            raise Error("LISTEN_FDNAMES=%r names %d sockets, LISTEN_FDS=%d"
                        % (names_text, len(names), count))
    else:
        names = [UNKNOWN_NAME] * count
    socks = []
    for i in range(count):
        fd = LISTEN_FDS_START + i
        try:
            # socket(fileno=) leaves O_NONBLOCK as it is: the flag lives in the open file
            # description that every worker shares.
            s = socket.socket(fileno=fd)
        except OSError as e:
            for made in socks:
                made.detach()
            raise Error("passed fd %d (%s) is not a socket: %s" % (fd, names[i], e)) from None
        socks.append(s)
        listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if s.type != socket.SOCK_STREAM or not listening:
            for made in socks:
                made.detach()
            raise Error("passed fd %d (%s) is not a listening stream socket" % (fd, names[i]))
    for s in socks:
        # Close-on-exec is per descriptor, not shared: programs the worker runs do not get them.
        s.set_inheritable(False)
    return socks, names


def listeners():
    """See the forkd package docstring."""
    st = state()
    with _lock:
        if st.listeners is None:
            st.listeners, st.names = _take_listeners(st)
        return list(st.listeners)


def listeners_by_name():
    """See the forkd package docstring."""
    socks = listeners()
    st = state()
    byname = {}
    for s, name in zip(socks, st.names):
        byname.setdefault(name, []).append(s)
    return byname


def worker_index():
    return state().index


def generation():
    return state().generation


def is_template():
    return state().template


def is_mold():
    return state().mold


def is_serving():
    return state().serve


# --- request count and heartbeats ---------------------------------------------------------------

_requests_lock = threading.Lock()
_requests = 0


def add_requests(n=1):
    global _requests
    with _requests_lock:
        _requests += n
    if _requests_started is False:
        _start_reporter_lazily()


def requests():
    return _requests


#: The largest X_FORKD_BUSY= forkd takes (docs/protocol.md): a larger one loses the whole datagram.
MAX_BUSY = 1000000

#: The least time between two datagrams that set_busy(send=True) sends.
BUSY_INTERVAL = 0.25

_busy = None  # the runner's threads serving a request now (set_busy); None: it does not say


def set_busy(n, send=False):
    """For a runner: n of this process's threads serve a request now. Reported as X_FORKD_BUSY=
    with the next heartbeat or request count when it changed; with send, at once too, unless a
    datagram went out for it less than BUSY_INTERVAL ago (for a runner whose main loop, which
    beats, does not come by while it serves: gunicorn's sync worker). A value forkd would refuse
    (not an int from 0 to MAX_BUSY) is not reported."""
    global _busy
    if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_BUSY:
        _busy = n
        if send:
            _beats.send_busy()


def beat_interval():
    """How often the heartbeats go out: every WATCHDOG_USEC/4, at most a second apart. A runner
    that beats from its main loop (see beat) must come by at least this often."""
    watchdog = state().watchdog
    return min(REQUESTS_INTERVAL, watchdog / 4) if watchdog else REQUESTS_INTERVAL


class _Beats:
    """When this process last sent WATCHDOG=1 and which request count it last reported.

    It belongs to the process, not to a thread: whatever sends the next heartbeat (the reporter
    thread, a runner's main loop, a template between two forks) keeps to the same schedule, so a
    heartbeat never waits longer because the sender changed.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.last = 0.0       # monotonic time of the last WATCHDOG=1 sent; 0: none yet
        self.next = 0.0       # when beat() sends again
        self.reported = 0
        self.reported_busy = None
        self.busy_sent = 0.0  # monotonic time send_busy() last sent

    def send(self, watchdog, force=False):
        """WATCHDOG=1 when watchdog, and X_FORKD_REQUESTS and X_FORKD_BUSY when they changed.
        Returns whether a datagram went out."""
        total, busy = _requests, _busy
        lines = []
        if watchdog:
            lines.append("WATCHDOG=1")
        if total != self.reported or (force and not lines):
            lines.append("X_FORKD_REQUESTS=%d" % total)
        if busy is not None and busy != self.reported_busy:
            lines.append("X_FORKD_BUSY=%d" % busy)
        if not lines:
            return False
        try:
            sent = _notify.notify("\n".join(lines))
        except OSError:
            # The master judges a worker by the heartbeats that arrive; a master that is gone is
            # master_gone()'s business.
            return False
        if sent:
            self.reported = total
            if busy is not None:
                self.reported_busy = busy
            if watchdog:
                self.last = time.monotonic()
        return sent

    def send_busy(self):
        """The busy count (and the request count, when it changed) at once, unless it is the
        one reported, or send_busy sent less than BUSY_INTERVAL ago."""
        now = time.monotonic()
        with self.lock:
            if _busy == self.reported_busy or now - self.busy_sent < BUSY_INTERVAL:
                return False
            self.busy_sent = now
            return self.send(0)


_beats = _Beats()


def beat(force=False):
    """For a runner that beats from its own main loop (forkd.gunicorn does, from where gunicorn's
    worker tells its arbiter it is alive): WATCHDOG=1 when a heartbeat timeout is set, and the
    request count when it changed, at most every beat_interval() unless force. Cheap enough to
    call on every pass of a request loop: it reads the clock and returns, until the next beat is
    due. Call take_heartbeats() first, so that no reporter thread beats as well."""
    now = time.monotonic()
    if not force and now < _beats.next:
        return False
    with _beats.lock:
        if not force and now < _beats.next:
            return False
        _beats.next = now + beat_interval()
        return _beats.send(state().watchdog, force)


def take_heartbeats():
    """Say that this process's main loop sends the heartbeats (with beat()): ready() and
    add_requests() then start no reporter thread."""
    global _requests_started
    _requests_started = True


class _Reporter:
    """A daemon thread: WATCHDOG=1 every half WATCHDOG_USEC, X_FORKD_REQUESTS when it changed, for
    the plain API (a program with its own server loop that calls ready() and add_requests())."""

    def __init__(self):
        self.thread = None
        self.stop_ev = threading.Event()

    def running(self):
        return self.thread is not None and self.thread.is_alive()

    def start(self):
        st = state()
        if self.running() or _notify.notify_address() is None:
            return
        self.stop_ev = threading.Event()
        # No thread (RLIMIT_NPROC, memory): start_thread says so, and the app goes on; the master
        # judges the heartbeats that do not come.
        self.thread = start_thread(
            self._run, (st.watchdog, self.stop_ev), "forkd-heartbeat",
            "this worker sends no heartbeat nor request count" + (
                ", and forkd will kill it when timeouts.worker runs out" if st.watchdog else ""))

    def stop(self):
        t, self.thread = self.thread, None
        self.stop_ev.set()
        if t is not None and t is not threading.current_thread():
            t.join(5)

    def _run(self, watchdog, stop_ev):
        inf = float("inf")
        hb_every = watchdog / 2 if watchdog else inf
        now = time.monotonic()
        # A restarted reporter keeps the schedule of the last heartbeat this process sent.
        next_hb = (_beats.last or now) + hb_every
        count_every = REQUESTS_INTERVAL if (not watchdog or hb_every > REQUESTS_INTERVAL) else inf
        next_count = now + count_every
        while True:
            wait = min(next_hb, next_count) - time.monotonic()
            if stop_ev.wait(max(wait, 0)):
                return
            now = time.monotonic()
            with _beats.lock:
                if now >= next_hb:
                    _beats.send(watchdog)
                    next_hb = max(next_hb + hb_every, now)
                elif now >= next_count:
                    _beats.send(0)
            if now >= next_count:
                next_count = now + count_every


reporter = _Reporter()
_requests_started = False


def _start_reporter_lazily():
    global _requests_started
    _requests_started = True
    reporter.start()


# --- notifications ------------------------------------------------------------------------------

def notify(state_text):
    """See the forkd package docstring."""
    return _notify.notify(state_text)


def ready():
    """See the forkd package docstring."""
    st = state()
    if st.channel is not None or st.channel_error is not None:
        ensure_welcome(fork=False)
    sent = _notify.notify("READY=1")
    _start_reporter_lazily()
    return sent


def status(text):
    return _notify.notify("STATUS=" + str(text).replace("\n", " "))


def stopping():
    return _notify.notify("STOPPING=1")


# --- the control channel: hello / welcome -------------------------------------------------------

def _reply_error(ch, seq, reason):
    try:
        ch.send({"op": "error", "seq": seq, "error": reason})
    except (OSError, ValueError):
        pass


def handshake(fork, interrupt_fd=None, interrupted=None):
    """Send hello on this worker's channel and wait for welcome.

    Returns True once welcomed; False when interrupt_fd became readable and interrupted() says to
    give up (a stop signal while waiting). Exits with status 1 on refuse, or when the master closes
    the channel first.
    """
    st = state()
    if st.channel_error is not None:
        raise st.channel_error
    ch = st.channel
    if ch is None or st.welcomed:
        return True
    with _lock:
        if not st.hello_sent:
            st.hello_sent = True
            try:
                ch.send(_hello(fork, st.mold))
            except OSError as e:
                die("cannot send hello to the forkd master: %s" % e)
    while True:
        if interrupt_fd is not None:
            r, _, _ = _select([ch.fileno(), interrupt_fd])
            if interrupt_fd in r and interrupted is not None and interrupted():
                return False
            if ch.fileno() not in r:
                continue
        try:
            msg, fds = ch.recv()
        except OSError as e:
            die("control channel: %s" % e)
        for fd in fds:
            os.close(fd)
        if msg is None:
            die("the forkd master closed the control channel before welcoming this worker")
        if isinstance(msg, protocol.Invalid):
            if msg.seq is not None:
                _reply_error(ch, msg.seq, msg.reason)
            continue
        op = msg["op"]
        if op == "welcome":
            with _lock:
                w, g = msg.get("worker"), msg.get("generation")
                if isinstance(w, int) and not isinstance(w, bool) and w >= 0:
                    st.index = w
                if isinstance(g, int) and not isinstance(g, bool):
                    st.generation = g
                st.welcomed = True
                st.template = st.mold or (bool(fork) and st.index == 0)
                # Only a template can be told not to serve: it still forks the workers that do.
                st.serve = not st.mold and not (st.template and msg.get("serve") is False)
            return True
        if op == "refuse":
            die("the forkd master refused this worker: %s" % msg.get("error", "(no reason given)"))
        if msg.get("seq") is not None:
            _reply_error(ch, msg["seq"], "%s before welcome" % op)


def _select(fds):
    while True:
        try:
            return select.select(fds, [], [])
        except InterruptedError:
            continue


def ensure_welcome(fork=False):
    """The plain API's handshake (no forkd.serve): hello, welcome, then a reader thread that answers
    requests with error and notices end of file."""
    st = state()
    if st.channel_error is not None:
        raise st.channel_error
    if st.channel is None:
        return
    with _lock:
        if st.welcomed:
            return
        handshake(fork)
        start_thread(_plain_reader, (st,), "forkd-control",
                     "the master's requests go unanswered and its exit unnoticed")


def _plain_reader(st):
    ch = st.channel
    while True:
        try:
            msg, fds = ch.recv()
        except OSError:
            msg, fds = None, []
        for fd in fds:
            os.close(fd)
        if msg is None:
            _set_master_gone()
            return
        if isinstance(msg, protocol.Invalid):
            if msg.seq is not None:
                _reply_error(ch, msg.seq, msg.reason)
            continue
        seq = msg.get("seq")
        if seq is None:
            continue
        if msg["op"] == "spawn":
            try:
                ch.send({"op": "spawn_failed", "seq": seq,
                         "error": "this worker does not fork (it runs without forkd.serve)"})
            except (OSError, ValueError):
                pass
        else:
            _reply_error(ch, seq, "unexpected op %r" % msg["op"])


# --- the master ---------------------------------------------------------------------------------

_master_gone = threading.Event()
_master_gone_callbacks = []
_master_watch_started = False


def _set_master_gone():
    _master_gone.set()
    for cb in list(_master_gone_callbacks):
        try:
            cb()
        except Exception:
            pass


def master_gone():
    """See the forkd package docstring."""
    global _master_watch_started
    st = state()
    with _lock:
        if not _master_watch_started and st.index >= 0 and st.channel is None:
            _master_watch_started = True
            start_thread(_watch_master, (st.master_pid,), "forkd-master",
                         "master_gone() will not be set when the master exits")
    return _master_gone


def open_master_pidfd(master_pid):
    """A pidfd for the master, or None (no pidfd support); sets master_gone when already gone."""
    if os.getppid() != master_pid:
        _set_master_gone()
        return None
    try:
        fd = os.pidfd_open(master_pid)
    except (AttributeError, OSError):
        return None
    # The master may have exited, and its PID been reused, between getppid and pidfd_open; while
    # it is still our parent, the pidfd is the master's.
    if os.getppid() != master_pid:
        os.close(fd)
        _set_master_gone()
        return None
    os.set_inheritable(fd, False)
    return fd


def _watch_master(master_pid):
    fd = open_master_pidfd(master_pid)
    if _master_gone.is_set():
        return
    if fd is not None:
        try:
            _select([fd])
        finally:
            os.close(fd)
        _set_master_gone()
        return
    while os.getppid() == master_pid:
        time.sleep(MASTER_POLL_INTERVAL)
    _set_master_gone()


# --- after the SDK's fork, in the new worker ----------------------------------------------------

def _hello(fork, mold):
    """This process's hello: "fork" says it can be the template, "mold" that it is a mold."""
    msg = {"op": "hello", "pid": os.getpid(), "fork": bool(fork), "sdk": SDK}
    if mold:
        msg["mold"] = True
    return msg


def send_forked_hello(channel_fd, mold=False):
    """Say hello on a new worker's (or mold's) channel as soon as it is forked, before the process
    is made that worker: the handshake then only waits for what is left of the master's answer.
    Returns False when it could not be sent (the handshake tries again, and says why if it
    fails)."""
    sock = socket.socket(fileno=channel_fd)
    try:
        protocol.Channel(sock).send(_hello(mold, mold))
        return True
    except (OSError, ValueError):
        return False
    finally:
        sock.detach()


def become_forked_worker(index, gen, channel_fd, hello_sent=False, mold=False, notify_socket=None):
    """Make this process (the SDK's grandchild) worker index of generation gen, whose channel is
    channel_fd: the environment, this module's state, the random generator and the request count.
    The caller has closed the forking process's channel; hello_sent says send_forked_hello did its
    part. mold: this process is a mold (worker 0, a template that does not serve), whose
    notifications go to notify_socket when it is given."""
    global _state, _requests, _requests_lock, _master_gone, _master_watch_started, reporter
    global _requests_started, _beats
    pid = str(os.getpid())
    old = _state
    if old is not None and old.channel is not None:
        old.channel.close()
    os.environ["LISTEN_PID"] = pid
    if "WATCHDOG_PID" in os.environ:
        os.environ["WATCHDOG_PID"] = pid
    os.environ["FORKD_WORKER"] = str(index)
    os.environ["FORKD_GENERATION"] = str(gen)
    os.environ["FORKD_CONTROL_FD"] = str(channel_fd)
    if isinstance(notify_socket, str) and notify_socket:
        os.environ["NOTIFY_SOCKET"] = notify_socket
    _requests_lock = threading.Lock()
    _requests = 0
    _requests_started = False
    _beats = _Beats()
    _master_gone = threading.Event()
    _master_watch_started = False
    reporter = _Reporter()
    st = _State()
    st.hello_sent = hello_sent and st.channel is not None
    st.mold = mold
    st.serve = not mold
    if old is not None:
        st.master_pid = old.master_pid
    if old is not None and old.listeners is not None:
        # The same descriptors, now this worker's: LISTEN_PID says so.
        st.listeners, st.names = old.listeners, old.names
    _state = st
    random.seed()


def _after_fork_in_child():
    # Any fork (the SDK's or a library's): locks another thread may have held are new, and the
    # threads of this module are gone.
    global _requests_lock, _lock, reporter, _requests_started
    _requests_lock = threading.Lock()
    _lock = threading.RLock()
    _beats.lock = threading.Lock()
    reporter = _Reporter()
    _requests_started = False
    # The parent's control channel is the parent's: a copy held here would keep it open after the
    # parent is gone. (The SDK's new worker gets its own channel with the spawn.)
    st = _state
    if st is not None and st.channel is not None:
        try:
            st.channel.close()
        except OSError:
            pass


def _before_fork():
    _requests_lock.acquire()


def _after_fork_in_parent():
    _requests_lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)

