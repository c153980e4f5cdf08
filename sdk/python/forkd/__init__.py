"""forkd's SDK for Python workers: the worker side of docs/protocol.md (version 1).

forkd is a preforking process supervisor. Its master never loads the application; it runs N
worker processes that accept directly on listening sockets the master shares with them. A worker
gets, as a systemd service does:

- its listening sockets at fds 3, 4, ... with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID (its own
  PID), as sd_listen_fds(3) describes;
- NOTIFY_SOCKET, the master's datagram socket, for READY=1, STATUS=, WATCHDOG=1, STOPPING=1 and
  forkd's X_FORKD_REQUESTS= (sd_notify(3));
- WATCHDOG_USEC and WATCHDOG_PID when a worker timeout is configured;
- FORKD_PROTOCOL, FORKD_WORKER (its index, 0..n-1), FORKD_GENERATION, and in fork-worker mode
  FORKD_CONTROL_FD, its control channel to the master.

Not running under forkd is an answer, not an error, as in go-systemd: under plain systemd socket
activation the listeners and notifications go to systemd; with no supervisor at all there are no
listeners, worker_index() is -1 and every notification returns False, so the same program runs from
a shell too.

Two ways to use it
------------------

1. ``python3 -m forkd.gunicorn [GUNICORN OPTIONS] module:app`` (see forkd.gunicorn) runs WSGI and
   ASGI apps on gunicorn's own workers (sync, gthread, uvicorn's), with forkd in the place of
   gunicorn's arbiter. It is the way to fork-worker mode (worker 0 imports the app once; every
   other worker is forked from it and shares its memory copy-on-write) and needs gunicorn, the
   only part of this package that does.

2. The plain helpers below (listeners(), ready(), status(), stopping(), add_requests() ...), for a
   program that brings its own server. Such a worker runs forkd's exec mode: the master execs
   every worker (fork-worker mode falls back to it, as docs/protocol.md says for apps without an
   SDK). The package is the standard library only.

Protocol version: importing forkd with FORKD_PROTOCOL set to anything but "1" prints
``forkd-python speaks protocol 1, this forkd master speaks N: upgrade the SDK`` and exits with
status 1.

Listeners
---------

``listeners()`` -> list of socket.socket
    The passed listening sockets, in fd order (fd 3 first: the order of forkd's listen blocks or
    of a .socket unit's Listen= lines). The first call makes the socket objects; every call returns
    the same ones (they are made close-on-exec, so programs the worker starts do not inherit them).
    Outcomes:

    - the passed sockets;
    - ``[]``: nothing was passed to this process (LISTEN_FDS unset, or LISTEN_PID is another
      process: the variables were inherited from a worker this process is a child of);
    - raises forkd.Error: LISTEN_FDS, LISTEN_PID or LISTEN_FDNAMES is malformed, or a passed
      descriptor is not a listening stream socket (a UDP socket or FIFO from a .socket unit).

    The blocking mode is left as it is: it belongs to the open file description that the master
    and every worker share (docs/protocol.md section 1). Poll before accept(), and expect accept()
    to raise BlockingIOError when another worker took the connection first. (gunicorn's workers
    under forkd.gunicorn switch them to non-blocking mode, for every worker: they all want it.)

``listeners_by_name()`` -> dict of name -> list of socket.socket
    listeners() grouped by LISTEN_FDNAMES (forkd's listen block labels, or FileDescriptorName=);
    sockets passed without names are named "unknown". Outcomes as listeners(), ``{}`` for none.

Notifications
-------------

Each returns True when sent, False when there is nobody to notify (NOTIFY_SOCKET unset), and
raises OSError when it could not be sent (NOTIFY_SOCKET malformed: forkd.NotifyError; the master is
gone: ConnectionRefusedError).

``ready()``
    READY=1: the worker serves. In fork-worker mode it first does the control channel's handshake
    (hello with ``"fork": false``, then waits for welcome; exits with status 1 when the master
    refuses the worker), as the protocol requires before READY=1. It starts the heartbeats.
    (forkd.gunicorn sends READY=1 itself.)
``status(text)``
    STATUS=text, shown by ``forkctl status``; newlines become spaces.
``stopping()``
    STOPPING=1: the worker is stopping on its own.
``notify(state)``
    Any ``KEY=VALUE`` lines, as one datagram.
``notify_barrier(timeout=5.0)``
    sd_notify_barrier(3): returns True once forkd has processed every earlier notification of this
    process (for a short-lived helper that notifies and exits at once); raises TimeoutError.

Heartbeats and request counts
-----------------------------

``add_requests(n=1)``
    Adds n to the count of requests this worker has served (cumulative, 0 in a new worker). A
    daemon thread reports the total as X_FORKD_REQUESTS= with the next heartbeat, or on its own at
    most once a second; the busiest worker's count drives forkd's ``refork_after``. Cheap: call it for
    every request.
``requests()``
    The total so far.

Heartbeats (WATCHDOG=1) go out every WATCHDOG_USEC/2 from the same daemon thread when WATCHDOG_USEC
is set and WATCHDOG_PID is unset or this process. The thread starts with ready() (or the first
add_requests) and keeps beating while the worker drains, so a long drain is not taken for a hang.
Without NOTIFY_SOCKET nothing is sent. When the system refuses the thread (RLIMIT_NPROC), a line
on stderr says so and the app goes on without heartbeats: forkd then replaces the worker once
timeouts.worker runs out. (forkd.gunicorn sends them from gunicorn's worker loop instead.)

Where the worker stands
-----------------------

``worker_index()``
    Its index (slot) 0..n-1, or -1 when not under forkd.
``generation()``
    The cluster generation it belongs to, or 0 when not under forkd.
``is_template()``
    True in worker 0 once the master has welcomed it as the template (it runs forkd.gunicorn in
    fork-worker mode), and in a mold; False anywhere else, including every forked worker.
``is_mold()``
    True in a mold: a template forked from a serving worker (refork from the warmest worker),
    which never serves.
``is_serving()``
    False in a template that does not serve: a mold, or worker 0 when the master's welcome says
    ``"serve": false`` (mold mode); True anywhere else.
``master_gone()`` -> threading.Event
    Set once the master is gone: end of file on the control channel (fork-worker mode), or the
    parent, forkd's master, has exited (exec mode: watched with a pidfd, else by checking getppid()
    once a second). Never set when not under forkd. A program with its own loop should stop
    gracefully when it is set (forkd.gunicorn does).

Fork hooks
----------

``before_fork(fn)``, ``after_fork_parent(fn)``, ``after_fork_child(fn)``
    pthread_atfork(3) semantics: prepare hooks run before a fork in reverse order of registration,
    parent and child hooks after it in registration order. They sit on top of os.register_at_fork,
    so they also run for forks that libraries make with os.fork(). For the SDK's own double fork,
    prepare and parent hooks run once in the template, child hooks once in the new worker (after
    the SDK has set its environment, closed the template's channel and reseeded random), and none
    in the short-lived intermediate child. A prepare hook that raises makes that spawn fail (the
    master then execs the worker); a child hook that raises makes the new worker exit with status 1.
``before_refork(fn)``, ``after_refork(fn)``
    In the template around a refork (the master's pause ... resume): before_refork once no request
    is in flight, before the forks, after_refork before serving again. Errors are logged.
``set_gc_freeze(on)``
    Before each fork, after the prepare hooks, the template runs ``gc.collect()`` (once per batch
    of forks) and ``gc.freeze()``, so that the forked workers' collectors leave the inherited heap,
    and the pages that hold it, alone; it unfreezes its own heap when it serves again
    (sdk/python/README.md). ``forkd.set_gc_freeze(False)``, at import (in the app, or in
    gunicorn.conf.py), turns that off; anything but True or False raises TypeError.
``after_worker_boot(fn)``
    In each worker once it is one: in an exec'd worker after the master's welcome, in a forked
    worker after its child hooks and welcome; always before READY=1. Not in a template that does
    not serve (after_mold runs there). Only under forkd.gunicorn. A hook that raises makes the
    worker exit with status 1.
``after_mold(fn)``
    In each template that does not serve, once it is one: a mold after its fork, its child hooks
    and the master's welcome; mold mode's worker 0 after the welcome. Then before_refork, the
    readying (gc.collect, gc.freeze) and READY=1. pitchfork's after_mold_fork: drop here what the
    workers must not inherit from the serving worker the mold was forked from. A hook that raises
    makes the mold exit with status 1 (the refork fails; the old template stays).

Each returns fn, so each works as a decorator: ``@forkd.after_fork_child``.

"""

from . import worker as _worker

_worker.check_protocol()

from .hooks import (  # noqa: E402
    after_fork_child,
    after_fork_parent,
    after_mold,
    after_refork,
    after_worker_boot,
    before_fork,
    before_refork,
)
from .runtime import set_gc_freeze  # noqa: E402
from .sdnotify import NotifyError, notify_barrier  # noqa: E402
from .worker import (  # noqa: E402
    SDK,
    Error,
    __version__,
    add_requests,
    generation,
    is_mold,
    is_serving,
    is_template,
    listeners,
    listeners_by_name,
    master_gone,
    notify,
    ready,
    requests,
    status,
    stopping,
    worker_index,
)

__all__ = [
    "Error", "NotifyError", "SDK", "__version__",
    "listeners", "listeners_by_name",
    "ready", "status", "stopping", "notify", "notify_barrier",
    "add_requests", "requests",
    "worker_index", "generation", "is_template", "is_mold", "is_serving", "master_gone",
    "before_fork", "after_fork_parent", "after_fork_child",
    "before_refork", "after_refork", "after_worker_boot", "after_mold", "set_gc_freeze",
]
