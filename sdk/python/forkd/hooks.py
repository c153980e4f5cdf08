"""Fork hooks, with pthread_atfork(3) semantics, plus forkd's refork and boot hooks.

- ``before_fork(fn)``: *prepare*, run in the forking process just before a fork, in reverse order of
  registration (the last registered runs first);
- ``after_fork_parent(fn)``: run in the forking process after the fork, in registration order;
- ``after_fork_child(fn)``: run in the new process after the fork, in registration order;
- ``before_refork(fn)`` / ``after_refork(fn)``: run in the template around a refork (forkd's
  ``pause`` ... ``resume``), before_refork once no request is in flight;
- ``after_worker_boot(fn)``: run in each worker once it is a worker: in an exec'd worker (worker 0)
  at boot, in each forked worker after the fork and forkd's welcome, before READY=1.

Each returns fn, so they work as decorators. The fork hooks sit on top of os.register_at_fork, so
they also run around forks that libraries make with os.fork() (multiprocessing, for one).

For the SDK's own double fork (template -> short-lived intermediate -> worker), the hooks run
exactly once per process they belong to: prepare and parent hooks once in the template, child hooks
once in the new worker, none in the intermediate. A module-level flag, set around the SDK's forks,
keeps the os.register_at_fork dispatch out of it; the SDK runs the hooks itself at the right points.
"""

import os
import sys
import traceback

__all__ = [
    "before_fork", "after_fork_parent", "after_fork_child",
    "before_refork", "after_refork", "after_worker_boot",
]

_prepare = []
_parent = []
_child = []
_before_refork = []
_after_refork = []
_after_boot = []
_after_mold = []

# True while the SDK forks on its own (see sdk_forking): the os.register_at_fork dispatchers then
# leave the user's hooks alone. Inherited by the intermediate child and the new worker, which
# clears it once it has run its child hooks.
_sdk_forking = False


def _register(registry, fn):
    if not callable(fn):
        raise TypeError("a forkd hook must be callable, not %r" % (fn,))
    registry.append(fn)
    return fn


def before_fork(fn):
    """Run fn() before every fork (prepare), in reverse order of registration. Returns fn."""
    return _register(_prepare, fn)


def after_fork_parent(fn):
    """Run fn() in the parent after every fork, in registration order. Returns fn."""
    return _register(_parent, fn)


def after_fork_child(fn):
    """Run fn() in the child after every fork, in registration order. Returns fn."""
    return _register(_child, fn)


def before_refork(fn):
    """Run fn() in the template when a refork begins (quiescent, before it forks). Returns fn."""
    return _register(_before_refork, fn)


def after_refork(fn):
    """Run fn() in the template when a refork ends (before it serves again). Returns fn."""
    return _register(_after_refork, fn)


def after_worker_boot(fn):
    """Run fn() in each worker once it is one (at boot, or after the fork). Returns fn."""
    return _register(_after_boot, fn)


def after_mold(fn):
    """Run fn() in each template that does not serve, once it is one (a mold after its fork, child
    hooks and welcome; mold mode's worker 0 after its welcome), before it readies its heap and
    says READY=1. Returns fn."""
    return _register(_after_mold, fn)


def _report(kind, fn):
    sys.stderr.write("forkd: %s hook %r failed:\n%s" % (kind, fn, traceback.format_exc()))
    sys.stderr.flush()


def _run(kind, fns, strict):
    for fn in fns:
        if strict:
            fn()
            continue
        try:
            fn()
        except Exception:
            _report(kind, fn)


def run_prepare(strict=False):
    """Run the before_fork hooks, last registered first. strict: let an exception through."""
    _run("before_fork", list(reversed(_prepare)), strict)


def run_parent():
    _run("after_fork_parent", list(_parent), False)


def run_child(strict=False):
    _run("after_fork_child", list(_child), strict)


def run_before_refork():
    _run("before_refork", list(_before_refork), False)


def run_after_refork():
    _run("after_refork", list(_after_refork), False)


def run_after_boot(strict=True):
    _run("after_worker_boot", list(_after_boot), strict)


def run_after_mold(strict=True):
    _run("after_mold", list(_after_mold), strict)


class sdk_forking:
    """Context manager around the SDK's own forks: os.register_at_fork dispatch skips user hooks."""

    def __enter__(self):
        global _sdk_forking
        _sdk_forking = True
        return self

    def __exit__(self, *exc):
        global _sdk_forking
        _sdk_forking = False
        return False


def _dispatch_before():
    if not _sdk_forking:
        # Exceptions raised in an os.register_at_fork callback are reported and ignored by
        # Python; report them our way with the hook's name.
        run_prepare()


def _dispatch_parent():
    if not _sdk_forking:
        run_parent()


def _dispatch_child():
    if not _sdk_forking:
        run_child()


os.register_at_fork(
    before=_dispatch_before, after_in_parent=_dispatch_parent, after_in_child=_dispatch_child)
