"""A gunicorn config file whose server hooks record themselves in $HOOK_LOG, as hookapp does:
"PID EVENT JSON"."""

import json
import os
import signal
import time

import forkd

keepalive = int(os.environ.get("TEST_KEEPALIVE", "2"))


def _record(event, **data):
    with open(os.environ.get("HOOK_LOG", os.devnull), "a") as f:
        f.write("%d %s %s\n" % (os.getpid(), event, json.dumps(data)))


def on_starting(server):
    _record("g.on_starting", server_pid=server.pid, listeners=len(server.LISTENERS))


def when_ready(server):
    _record("g.when_ready", server_pid=server.pid)


def pre_fork(server, worker):
    _record("g.pre_fork", server_pid=server.pid)
    # A test holds the template here, between the new worker's setup and its fork, while the
    # file $TEST_PRE_FORK_HOLD exists.
    hold = os.environ.get("TEST_PRE_FORK_HOLD")
    deadline = time.monotonic() + 60
    while hold and os.path.exists(hold) and time.monotonic() < deadline:
        time.sleep(0.01)


def post_fork(server, worker):
    _record("g.post_fork", server_pid=server.pid, worker_pid=worker.pid)


def post_worker_init(worker):
    _record("g.post_worker_init", worker_pid=worker.pid)


def worker_exit(server, worker):
    _record("g.worker_exit", worker_pid=worker.pid)


def on_exit(server):
    _record("g.on_exit", server_pid=server.pid)


def child_exit(server, worker):  # only gunicorn's arbiter calls it: forkd.gunicorn warns
    _record("g.child_exit")


# A stop signal that a forked worker gets before gunicorn's handlers are in (TEST_SIGTERM_IN):
# in forkd's after_fork_child hooks, or after forkd.gunicorn's last look at stop signals, as
# gunicorn's init_signals begins.
if os.environ.get("TEST_SIGTERM_IN") == "after_fork_child":
    forkd.after_fork_child(lambda: os.kill(os.getpid(), signal.SIGTERM))
elif os.environ.get("TEST_SIGTERM_IN") == "init_signals":
    from gunicorn.workers.base import Worker

    def _sigterm_first(init_signals):
        def sigterm_then_init_signals(worker):
            if not forkd.is_template():
                os.kill(os.getpid(), signal.SIGTERM)
            init_signals(worker)
        return sigterm_then_init_signals

    Worker.init_signals = _sigterm_first(Worker.init_signals)
elif os.environ.get("TEST_SIGTERM_IN") == "template_init_signals":
    # In the template's second serving period (after a spawn), as gunicorn's init_signals begins.
    from gunicorn.workers.base import Worker

    def _template_sigterm_first(init_signals):
        def sigterm_then_init_signals(worker):
            if forkd.is_template() and worker.age > 1:
                os.kill(os.getpid(), signal.SIGTERM)
            init_signals(worker)
        return sigterm_then_init_signals

    Worker.init_signals = _template_sigterm_first(Worker.init_signals)
