"""forkd.gunicorn: gunicorn's workers under forkd, which takes the place of gunicorn's arbiter.

    python3 -m forkd.gunicorn [GUNICORN OPTIONS] module:app        (or: forkd-gunicorn ...)

A gunicorn command line and config file work as they are (``-c gunicorn.conf.py``,
``GUNICORN_CMD_ARGS``, ``-k sync|gthread|uvicorn.workers.UvicornWorker``, ``--threads``,
``--timeout``, ``--graceful-timeout``, ``--keep-alive``, the access log, ``--forwarded-allow-ips``,
``--limit-request-*``, ``--max-requests``/``--max-requests-jitter``, the server hooks, ...): gunicorn
reads them, with its own code. Each forkd worker process runs one gunicorn worker of the
configured class on forkd's listening sockets (LISTEN_FDS): HTTP is gunicorn's; starting,
supervising, replacing and forking workers is forkd's. What would make gunicorn's arbiter do
forkd's job is refused, naming the forkd option to use instead: ``-w/--workers``, ``-b/--bind``,
``--reload``, ``-D/--daemon``, ``-p/--pid`` (exit status 2).

Liveness: gunicorn's worker tells its arbiter it is alive from its main loop (Worker.notify). Here
that sends forkd's heartbeat (WATCHDOG=1) and the request count (X_FORKD_REQUESTS, which drives
refork_after). A worker whose loop hangs (a sync worker stuck in a request) stops beating and forkd
kills and replaces it, as gunicorn's arbiter does after ``--timeout``. forkd's ``timeouts.worker``
sets that deadline; without it, gunicorn's ``--timeout`` (default 30 s, 0: none) does: the worker
tells forkd with WATCHDOG_USEC= when it says READY=1.

``--max-requests N`` (with ``--max-requests-jitter``): the worker finishes the request that
reaches the count (gunicorn answers it with Connection: close), drains, says STOPPING=1 and exits
with status 0; forkd starts its replacement (forks it from the template in fork-worker mode).

Fork-worker mode (a ``fork_worker`` block in forkd.hcl), for the sync and threaded (gthread)
workers: worker 0 imports the app once, as gunicorn's ``--preload`` does, and is the template;
every other worker is forked from it and shares its memory copy-on-write. The template serves in
periods, one gunicorn worker per period: to fork, it ends the current period the way gunicorn ends
a worker's loop on a graceful stop (no new connection; requests in flight finish; each idle
keep-alive connection gets its next request answered with Connection: close, until
``--keep-alive`` runs out), forks while nothing is open (after ``gc.collect()`` and
``gc.freeze()``, so that the workers' collectors leave the shared heap alone;
``forkd.set_gc_freeze(False)`` in gunicorn.conf.py turns that off), then serves again with a new
gunicorn worker. A stop signal sent to a new worker before gunicorn's worker installs its
handlers waits for them: the template blocks SIGTERM, SIGINT and SIGQUIT across the fork, and the
new worker keeps them blocked until then (its after_fork_child hooks and post_fork run so). Other
worker classes (uvicorn's, gevent, ...) run in exec mode: worker 0 says it cannot be the
template, and forkd execs every worker.

Mold mode (the refork from the warmest worker, docs/protocol.md): a serving sync or gthread
worker asked for a mold forks it at once from its control-channel thread, while gunicorn's worker
serves on in the main thread. The mold, on that thread, drops the gunicorn worker and the
connections it inherited (close(2), never shutdown(2)), and is a template that never serves:
after_fork_child, after_mold, before_refork, gc.collect() and gc.freeze(), READY=1, then spawns.
Worker 0 welcomed with "serve": false is such a template from boot. sdk/python/README.md has the
details.

Server hooks (gunicorn.conf.py), and where they run:

- ``on_starting(server)``, ``when_ready(server)``: once in each process that plays the arbiter's
  part: every worker in exec mode, worker 0 (the template) in fork-worker mode; not in a mold.
- ``pre_fork(server, worker)``: in the template before it forks each worker; in exec mode in the
  worker itself, just before post_fork.
- ``post_fork(server, worker)``: in each worker, before it serves (after the fork in fork-worker
  mode).
- ``post_worker_init(worker)``, ``worker_int``, ``worker_abort``, ``pre_request``,
  ``post_request``: as gunicorn runs them (gunicorn's worker calls them); post_worker_init once
  per process, also in the template that serves in several periods.
- ``worker_exit(server, worker)``: in each worker as it exits; ``on_exit(server)`` after it, in the
  processes that ran on_starting.
- ``on_reload``, ``child_exit``, ``nworkers_changed``, ``pre_exec``: only gunicorn's arbiter calls
  them; a warning says so when they are set.

``server`` stands in for gunicorn's Arbiter: it has ``cfg``, ``app``, ``log``, ``pid`` (the
process playing the arbiter: the template, or the exec'd worker itself), ``LISTENERS``,
``proc_name``, ``timeout`` and ``worker_class``. forkd's own hooks (forkd.before_fork,
after_fork_child, after_worker_boot, before_refork, after_refork) run too, at their usual points.

gunicorn 20.1 (Debian 12's python3-gunicorn) to 26.1: the tests run against 20.1, 23.0 and 26.1
(sdk/python/README.md). This module is the only part of the forkd package that needs gunicorn;
the rest is the standard library.
"""

import os
import signal
import sys
import time
import traceback

from .. import hooks
from .. import runtime
from .. import worker as core

__all__ = ["main", "cli", "Runner", "Server"]


class Server:
    """What gunicorn's server hooks get as ``server`` (gunicorn passes its Arbiter)."""

    def __init__(self, runner):
        self.app = runner.app
        self.cfg = runner.cfg
        self.log = runner.log
        self.pid = os.getpid()
        self.LISTENERS = runner.listeners
        self.proc_name = runner.cfg.proc_name
        self.timeout = runner.cfg.timeout
        self.worker_class = runner.worker_class

    def __repr__(self):
        return "<forkd.gunicorn.Server pid=%d>" % self.pid


class _LaterPeriodConfig:
    """The config that the template's later serving periods see: gunicorn's, except that
    post_worker_init ran in the first period already (it runs once per process)."""

    def __init__(self, cfg):
        self._cfg = cfg

    def __getattr__(self, name):
        return getattr(self._cfg, name)

    @staticmethod
    def post_worker_init(worker):
        pass


class Runner:
    """One forkd worker process running gunicorn workers: exec'd (exec mode, or worker 0), the
    template (fork-worker mode), or forked from the template (see run_forked)."""

    def __init__(self, app, log):
        from . import workers
        self.workers = workers
        self.app = app
        self.cfg = app.cfg
        self.log = log
        self.listeners = []
        self.stop_requested = False
        self.ready_sent = False
        self.age = 0
        self.current = None      # the gunicorn worker of the serving period, if one runs
        self.quiescing = False   # the template asked the current period to end, to fork
        self.reader = None
        self.template = None
        self.wake_r = self.wake_w = -1
        self.watchdog_usec = None  # WATCHDOG_USEC to send with READY=1 (gunicorn's --timeout)
        self.unsafe_to_fork = None
        self.later = _LaterPeriodConfig(self.cfg)
        self.worker_class = None
        self.cls = None
        self.master_pid = 0

    # --- boot -------------------------------------------------------------------------------

    def run(self):
        """The exec'd process: returns its exit status; raises runtime.Forked in a forked one."""
        cfg, log = self.cfg, self.log
        for k, v in (cfg.env or {}).items():
            os.environ[k] = v
        self.app.add_pythonpath()
        try:
            self.listeners = core.listeners()
        except core.Error as e:
            log.error("forkd.gunicorn: %s", e)
            return 1
        if not self.listeners:
            log.error("forkd.gunicorn: no listening sockets (LISTEN_FDS): run it under forkd, "
                      "e.g. forkd --listen tcp://127.0.0.1:8000 -- %s -m forkd.gunicorn APP; "
                      "outside forkd, run gunicorn itself", sys.executable)
            return 1
        try:
            self.worker_class = cfg.worker_class
        except Exception as e:
            log.error("forkd.gunicorn: cannot load worker class %s: %s",
                      cfg.worker_class_str, e)
            return 1
        self.cls = self.workers.worker_class_for(self.worker_class, self)
        if hasattr(self.worker_class, "check_config"):
            self.worker_class.check_config(cfg, log)
        st = core.state()
        self.master_pid = st.master_pid
        self._map_timeout(st)
        fork = self.workers.can_fork(self.worker_class)
        if st.channel is not None or st.channel_error is not None:
            try:
                core.handshake(fork)
            except core.Error as e:
                log.error("forkd.gunicorn: %s", e)
                return 1
        template = core.is_template()
        if template or cfg.preload_app:
            code = self._load_app()
            if code:
                return code
        self.server = Server(self)
        cfg.on_starting(self.server)
        cfg.when_ready(self.server)
        serving = core.is_serving()
        if serving:
            try:
                hooks.run_after_boot(strict=True)
            except Exception:
                log.error("forkd.gunicorn: after_worker_boot hook failed:\n%s",
                          traceback.format_exc().rstrip())
                return 1
        core.take_heartbeats()
        log.info("forkd.gunicorn: worker %d (pid %d, generation %d): gunicorn %s, %s%s",
                 st.index, os.getpid(), st.generation, _gunicorn_version(),
                 cfg.worker_class_str, ", the template" + ("" if serving else " (not serving)")
                 if template else "")
        if template and not serving:
            code = self._run_idle_template()  # raises runtime.Forked in a forked worker
            self._exit(None, worker_hooks=False, server_hooks=True)
            return code
        if template:
            return self._run_template()
        w = self._new_worker()
        return self._run_worker(w, exec_hooks=True)

    def _map_timeout(self, st):
        # forkd's timeouts.worker (WATCHDOG_USEC) is the operator's; without it, gunicorn's
        # --timeout becomes the heartbeat deadline, as under gunicorn's arbiter. Only under forkd:
        # WATCHDOG_USEC= to systemd would change the service's own watchdog.
        if st.watchdog or st.index < 0 or self.cfg.timeout <= 0:
            return
        st.watchdog = float(self.cfg.timeout)
        self.watchdog_usec = int(self.cfg.timeout * 1000000)

    def _load_app(self):
        try:
            self.app.wsgi()
        except Exception:
            self.log.error("forkd.gunicorn: cannot load %s:\n%s", self.app.app_uri,
                           traceback.format_exc().rstrip())
            return 4  # gunicorn's APP_LOAD_ERROR
        return 0

    def _new_worker(self, later=False):
        self.age += 1
        cfg = self.later if later else self.cfg
        # ppid: the master, whose death gunicorn's worker watches for (a forked worker's too: it
        # is re-parented to the master).
        w = self.cls(self.age, os.getppid(),
                     self.workers.period_listeners(self.listeners, self.cfg, self.log),
                     self.app, core.beat_interval(), cfg, self.log)
        w._forkd_counted = w.nr
        return w

    # --- the serving loop's heartbeat ---------------------------------------------------------

    def alive(self, w):
        """gunicorn's worker is in its loop (its notify())."""
        if not self.ready_sent:
            self.ready_sent = True
            text = "READY=1"
            if self.watchdog_usec:
                text += "\nWATCHDOG_USEC=%d" % self.watchdog_usec
            self._notify(text)
        self._count(w)
        busy = self.workers.busy_threads(w)
        if busy is not None:
            core.set_busy(busy)
        core.beat()

    def _count(self, w):
        n = w.nr
        if n != w._forkd_counted:
            core.add_requests(n - w._forkd_counted)
            w._forkd_counted = n

    def _notify(self, text):
        try:
            core.notify(text)
        except ConnectionRefusedError:
            pass  # the master is gone: nobody to tell
        except OSError as e:
            self.log.warning("forkd.gunicorn: cannot notify %s: %s", text.split("=")[0], e)

    # --- a worker that serves until it stops ----------------------------------------------------

    def _stop_self(self):
        """Stop gracefully, as forkd's SIGTERM would: gunicorn's (or uvicorn's) own handler."""
        self.stop_requested = True
        os.kill(os.getpid(), signal.SIGTERM)

    def _watch(self):
        st = core.state()
        if st.channel is not None:
            def handle(msg, fds):
                if msg is None:
                    self._stop_self()
                elif msg["op"] == "mold" and self.workers.can_fork(self.worker_class):
                    self._mold(msg, fds)
                else:
                    runtime.answer_worker_op(st.channel, msg, fds)
            self.reader = runtime.Reader(st.channel, handle)
            if not self.reader.start():
                self.reader = None
        elif st.index >= 0:
            core._master_gone_callbacks.append(self._stop_self)
            if core.master_gone().is_set():
                self._stop_self()

    def _run_worker(self, w, exec_hooks):
        """Serve with w until the worker stops; the process's exit status."""
        code = 0
        try:
            if exec_hooks:
                self.cfg.pre_fork(self.server, w)
            # As in gunicorn's forked worker: post_fork sees the worker's own PID.
            w.pid = os.getpid()
            self.cfg.post_fork(self.server, w)
            self._watch()
            if not self.stop_requested:
                self._serve(w)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:
            code = self._failed(w, e)
        self._exit(w, worker_hooks=True, server_hooks=exec_hooks)
        return code

    def _failed(self, w, e):
        from gunicorn.errors import AppImportError
        if isinstance(e, AppImportError):
            self.log.error("forkd.gunicorn: cannot load %s: %s", self.app.app_uri, e)
            return 4
        self.log.exception("forkd.gunicorn: exception in worker process")
        return 3 if not w.booted else 1

    def _serve(self, w):
        """One serving period: gunicorn's init_process, which runs the worker's loop."""
        w.pid = os.getpid()
        self.current = w
        if self.quiescing:
            # The reader asked for quiet before the period started (it saw no current worker).
            self.workers.interrupt(w)
        try:
            w.init_process()
        finally:
            self.current = None
            self._count(w)

    def _exit(self, w, worker_hooks, server_hooks):
        if self.reader is not None:
            self.reader.stop()
            self.reader = None
        if self.ready_sent:
            core.beat(force=True)  # the last request count
            self._notify("STOPPING=1")
        if worker_hooks:
            try:
                self.cfg.worker_exit(self.server, w)
            except Exception:
                self.log.warning("forkd.gunicorn: exception in worker_exit hook:\n%s",
                                 traceback.format_exc().rstrip())
        if server_hooks:
            try:
                self.cfg.on_exit(self.server)
            except Exception:
                self.log.warning("forkd.gunicorn: exception in on_exit hook:\n%s",
                                 traceback.format_exc().rstrip())

    # --- the template -----------------------------------------------------------------------------

    def _quiesce(self):
        """From the reader's thread: end the current serving period to fork (or stop)."""
        self.quiescing = True
        w = self.current
        if w is not None:
            self.workers.interrupt(w)
        if self.reader is not None:
            # The period's loop no longer beats once it drains: the reader does meanwhile.
            self.reader.ticking(core.beat_interval())

    def _run_template(self):
        st = core.state()
        self.template = runtime.Template(st.channel, self._quiesce, self._spawn, mold=self._mold)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        w = self._new_worker()
        exec_hooks = True
        code = 0
        while True:
            try:
                if exec_hooks:
                    self.cfg.pre_fork(self.server, w)
                    w.pid = os.getpid()
                    self.cfg.post_fork(self.server, w)
                    exec_hooks = False
                self.quiescing = self.template.wants_quiet()
                self.reader = runtime.Reader(st.channel, self.template.take, tick=core.beat)
                if not self.reader.start():
                    self.log.error("forkd.gunicorn: the template cannot read its control "
                                   "channel: stopping")
                    self.reader = None
                    break
                if not self.quiescing and not self.stop_requested:
                    self._serve(w)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                break
            except Exception as e:
                code = self._failed(w, e)
                break
            self.reader.stop()
            self.reader = None
            self._between_periods()
            self.workers.close_period(w)
            self.unsafe_to_fork = None
            if self.workers.in_flight(w):
                self.unsafe_to_fork = ("%d requests still in flight after the graceful timeout"
                                       % self.workers.in_flight(w))
            if not self.quiescing or self.stop_requested or w.nr >= w.max_requests:
                break
            # May raise runtime.Forked: in the new worker, main() catches it.
            if self.template.quiet(lambda: self.stop_requested, self.wake_r) == "stop":
                break
            # A stop signal from now on is the next period's: blocked until its gunicorn worker's
            # handlers are in (ForkdWorker.init_signals), since the template's (on_stop) would
            # only remember it, and gunicorn's worker would serve on.
            signal.pthread_sigmask(signal.SIG_BLOCK, self.workers.STOP_SIGNALS)
            nr, max_requests = w.nr, w.max_requests
            w = self._new_worker(later=True)
            # One process, one count: gunicorn's --max-requests counts across periods.
            w.nr = w._forkd_counted = nr
            w.max_requests = max_requests
        self._exit(w, worker_hooks=True, server_hooks=True)
        return code

    def _between_periods(self):
        """Signals while no gunicorn worker runs: a stop is remembered and wakes quiet()."""
        def on_stop(signum, frame):
            self.stop_requested = True
        for sig in self.workers.STOP_SIGNALS:
            signal.signal(sig, on_stop)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)

    def _spawn(self, msg, fd):
        """Template.spawn: fork the worker of spawn msg between two serving periods."""
        if self.unsafe_to_fork:
            raise RuntimeError(self.unsafe_to_fork)
        if self.stop_requested:
            raise RuntimeError("the template is stopping")
        w = self._new_worker()
        try:
            self.cfg.pre_fork(self.server, w)
        except Exception as e:
            self.workers.close_period(w)
            self.log.error("forkd.gunicorn: pre_fork hook failed:\n%s",
                           traceback.format_exc().rstrip())
            raise RuntimeError("pre_fork hook failed: %s" % e) from None
        # A stop signal for the new worker must reach its gunicorn worker's handlers, not the
        # template's that it inherits: blocked until those are in (ForkdWorker.init_signals).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.workers.STOP_SIGNALS)
        try:
            pid = runtime.double_fork(msg, fd)
        except runtime.Forked as forked:
            forked.gunicorn_worker = w
            raise
        except Exception:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            self.workers.close_period(w)
            raise
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        w.pid = pid
        self.workers.close_period(w)
        return pid

    # --- molds ---------------------------------------------------------------------------------

    def _mold(self, msg, fds):
        """The master's mold, in a serving worker (the reader's thread; the template's main
        thread between two periods): fork the mold at once. In the mold, never returns."""
        try:
            runtime.fork_mold(core.state().channel, msg, fds, stopping=self.stop_requested)
        except runtime.Forked as forked:
            self._live_as_mold(forked)

    def _live_as_mold(self, forked):
        """The mold's whole life, on the thread that forked it (the only one it has: the rest of
        the serving process's stack is not ours to return to), then its exit. A worker forked from
        the mold lives and exits here too."""
        code = 1
        try:
            try:
                code = self._become_mold(forked)
            except runtime.Forked as child:
                code = self.run_forked(child)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            self.log.error("forkd.gunicorn: the mold failed:\n%s", traceback.format_exc().rstrip())
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    def _become_mold(self, forked):
        """In the mold: drop the serving process's server (its gunicorn worker, reader, pipes,
        connections), become worker 0 of the mold's generation, then run as a template that
        never serves. Raises runtime.Forked in a worker forked from it."""
        w, self.current = self.current, None
        if self.reader is not None:
            self.reader.abandon()
            self.reader = None
        for fd in (self.wake_r, self.wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.wake_r = self.wake_w = -1
        if w is not None:
            self.workers.abandon_period(w)
        runtime.drop_connections(self.listeners, keep=[forked.fd])
        runtime.become_forked(forked)
        self.server = Server(self)
        self.age = 0
        self.ready_sent = False
        self.stop_requested = False
        self.quiescing = False
        self.unsafe_to_fork = None
        try:
            core.handshake(True)
        except core.Error as e:
            self.log.error("forkd.gunicorn: %s", e)
            return 1
        st = core.state()
        self._map_timeout(st)
        self.log.info("forkd.gunicorn: worker 0 (pid %d, generation %d): a mold, the template",
                      os.getpid(), st.generation)
        code = self._run_idle_template()  # raises runtime.Forked in a forked worker
        self._exit(None, worker_hooks=False, server_hooks=False)
        return code

    def _run_idle_template(self):
        """A template that does not serve (a mold, mold mode's worker 0): after_mold,
        before_refork, the readying, READY=1, then spawns until it must stop. Its exit status."""
        try:
            hooks.run_after_mold(strict=True)
        except Exception:
            core.die("after_mold hook failed:\n%s" % traceback.format_exc().rstrip())
        hooks.run_before_refork()
        runtime.ready_heap()
        st = core.state()
        self.template = runtime.Template(st.channel, self._quiesce, self._spawn, serves=False,
                                         mold=self._mold)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._between_periods()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.workers.STOP_SIGNALS)
        core.take_heartbeats()
        self.ready_sent = True
        text = "READY=1"
        if self.watchdog_usec:
            text += "\nWATCHDOG_USEC=%d" % self.watchdog_usec
        self._notify(text)
        self.template.quiet(lambda: self.stop_requested, self.wake_r)
        return 0

    # --- a forked worker ----------------------------------------------------------------------

    def run_forked(self, forked):
        """In the new worker of a spawn: become that worker, then serve until it stops."""
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.wake_r = self.wake_w = -1
        # Not core.state(): in this new process it would read the environment anew, and take the
        # intermediate child, if it has not exited yet, for the master.
        master = self.master_pid
        runtime.become_forked(forked)
        self._map_timeout(core.state())
        w = forked.gunicorn_worker
        w.pid = os.getpid()
        self.age = 0
        self.ready_sent = False
        self.stop_requested = False
        self.quiescing = False
        self.unsafe_to_fork = None
        self.template = None
        st = core.state()
        try:
            core.handshake(False)
        except core.Error as e:
            self.log.error("forkd.gunicorn: %s", e)
            return 1
        # The intermediate child exits at once; until then it, not the master, is the parent,
        # and gunicorn's worker would take that for its arbiter's death.
        deadline = time.monotonic() + 5
        while os.getppid() != master and time.monotonic() < deadline:
            time.sleep(0.001)
        w.ppid = master
        try:
            hooks.run_after_boot(strict=True)
        except Exception:
            core.die("after_worker_boot hook failed:\n%s" % traceback.format_exc().rstrip())
        core.take_heartbeats()
        self.log.info("forkd.gunicorn: worker %d (pid %d, generation %d): forked from the template",
                      st.index, os.getpid(), st.generation)
        return self._run_worker(w, exec_hooks=False)


def _gunicorn_version():
    import gunicorn
    return gunicorn.__version__


def main():
    """The command line: python3 -m forkd.gunicorn [GUNICORN OPTIONS] module:app."""
    from .config import Application
    app = Application()
    cfg = app.cfg
    if cfg.print_config:
        print(cfg)
    if cfg.print_config or cfg.check_config:
        app.add_pythonpath()
        try:
            app.wsgi()
        except Exception:
            sys.stderr.write("\nError while loading the application:\n\n")
            traceback.print_exc()
            sys.stderr.flush()
            return 1
        return 0
    if cfg.spew:
        from gunicorn import debug
        debug.spew()
    log = cfg.logger_class(cfg)
    for warning in app.warnings:
        log.warning("forkd.gunicorn: %s", warning)
    runner = Runner(app, log)
    try:
        return runner.run()
    except runtime.Forked as forked:
        return runner.run_forked(forked)


def cli():
    """The forkd-gunicorn console script."""
    sys.exit(main())
