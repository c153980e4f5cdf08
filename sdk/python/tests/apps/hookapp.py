"""The tests' WSGI app: records every forkd hook it sees into $HOOK_LOG, one line per event:
"PID EVENT JSON"."""

import gc
import json
import os
import time
import urllib.parse

import forkd

LOG = os.environ.get("HOOK_LOG", os.devnull)
# REQUEST_LOG: "PID PATH" of each request as it begins, for tests that wait for one in flight.
REQUESTS = os.environ.get("REQUEST_LOG", os.devnull)


def record(event, **data):
    with open(LOG, "a") as f:
        f.write("%d %s %s\n" % (os.getpid(), event, json.dumps(data)))


def began(path):
    with open(REQUESTS, "a") as f:
        f.write("%d %s\n" % (os.getpid(), path))


if os.environ.get("TEST_GC_FREEZE") == "off":
    forkd.set_gc_freeze(False)

forkd.before_fork(lambda: record("prepare1"))
forkd.before_fork(lambda: record("prepare2"))


@forkd.after_fork_parent
def parent1():
    record("parent1", frozen=gc.get_freeze_count())


forkd.after_fork_parent(lambda: record("parent2"))


@forkd.after_fork_child
def child1():
    record("child1", listen_pid=os.environ.get("LISTEN_PID"), frozen=gc.get_freeze_count())


forkd.after_fork_child(lambda: record("child2"))


@forkd.before_refork
def before_refork():
    record("before_refork")


@forkd.after_refork
def after_refork():
    record("after_refork")


@forkd.after_mold
def after_mold():
    record("after_mold", env={k: os.environ.get(k) for k in (
        "LISTEN_PID", "FORKD_WORKER", "FORKD_GENERATION", "NOTIFY_SOCKET", "WATCHDOG_PID")},
        template=forkd.is_template(), mold=forkd.is_mold(), serving=forkd.is_serving(),
        index=forkd.worker_index(), generation=forkd.generation(),
        listeners=len(forkd.listeners()))


@forkd.after_worker_boot
def boot():
    record("boot", env={k: os.environ.get(k) for k in (
        "LISTEN_PID", "FORKD_WORKER", "FORKD_GENERATION", "FORKD_CONTROL_FD", "WATCHDOG_PID")},
        template=forkd.is_template(), index=forkd.worker_index(), generation=forkd.generation(),
        listeners=len(forkd.listeners()))


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = urllib.parse.parse_qs(environ["QUERY_STRING"])
    if path == "/slow":
        began(path)
        time.sleep(int(query.get("ms", ["500"])[0]) / 1000)
    elif path == "/wait":
        # In flight until the test creates the file it names.
        record("waiting")
        deadline = time.monotonic() + 30
        while not os.path.exists(query["file"][0]) and time.monotonic() < deadline:
            time.sleep(0.01)
    elif path == "/hang":
        time.sleep(3600)
    elif path == "/fork":
        # A fork made by library code, not by the SDK.
        pid = os.fork()
        if pid == 0:
            record("library-child")
            os._exit(0)
        os.waitpid(pid, 0)
    elif path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [body]
    elif path == "/gc":
        text = "pid=%d frozen=%d\n" % (os.getpid(), gc.get_freeze_count())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [text.encode()]
    elif path == "/error":
        raise RuntimeError("the app failed on purpose")
    elif path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"part%d\n" % i for i in range(3))
    text = "pid=%d worker=%d generation=%d path=%s\n" % (
        os.getpid(), forkd.worker_index(), forkd.generation(), path)
    data = text.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
