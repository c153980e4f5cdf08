"""The WSGI app the fork-worker integration tests run under forkd, through the Python SDK.

GET /        "worker=<FORKD_WORKER> pid=<pid> generation=<FORKD_GENERATION> token=<token>"
GET /slow?ms=N   the same after N milliseconds
GET /token   the token made when the app was imported: forked workers share worker 0's
GET /warm    "pid=<pid> warm=<mark>": each process counts the requests it serves, and on its
             TESTAPP_WARM_AFTER-th (default 20) marks its heap, "pid-<its pid>"; a process forked
             from it (a mold, and the workers forked from the mold) inherits the mark ("none"
             before)
GET /dirty?mb=N  write N MiB more of the ballast (TESTAPP_ALLOC_MB) than this process wrote
                 before, so that copy-on-write copies them: its private memory grows by N MiB
                 (until it has written the whole ballast)

Environment knobs:
  TESTAPP_ALLOC_MB      allocate (and touch) this many MiB at import, to measure sharing
  TESTAPP_HANG_FORK     seconds the template's before-fork hook sleeps, to make forks time out
  TESTAPP_HOOK_LOG      a file each process appends its hook calls to
  TESTAPP_NO_MOLD       a serving worker answers the master's mold request with error, as an SDK
                        without molds does
"""
import os
import threading
import time
import urllib.parse
import uuid

import forkd

TOKEN = uuid.uuid4().hex
BALLAST = bytearray(int(os.environ.get("TESTAPP_ALLOC_MB", "0")) * 1024 * 1024)
for i in range(0, len(BALLAST), 4096):
    BALLAST[i] = 1  # touch every page, so it is resident and then shared copy-on-write

# dirtied is how far this process has written the ballast since it was forked.
dirtied = 0

if os.environ.get("TESTAPP_NO_MOLD"):
    from forkd import runtime

    def _refuse_mold(channel, msg, fds, stopping=False):
        for fd in fds:
            os.close(fd)
        runtime.reply(channel, {"op": "error", "seq": msg.get("seq"), "error": "unknown op 'mold'"})

    # The SDK answers mold with runtime.fork_mold, looked up at each request.
    runtime.fork_mold = _refuse_mold

HANG = float(os.environ.get("TESTAPP_HANG_FORK", "0"))
WARM_AFTER = int(os.environ.get("TESTAPP_WARM_AFTER", "20"))
served_lock = threading.Lock()
served = 0
warm = "none"
HOOK_LOG = os.environ.get("TESTAPP_HOOK_LOG")


def record(what):
    if HOOK_LOG:
        with open(HOOK_LOG, "a") as f:
            f.write(f"{os.getpid()} {what}\n")


@forkd.before_fork
def _before_fork():
    record("before_fork")
    if HANG:
        time.sleep(HANG)


@forkd.after_fork_child
def _after_fork_child():
    global dirtied, served_lock
    dirtied = 0
    # A request thread may have held it when a serving worker forked a mold: the copy would stay
    # locked in the mold and in every worker forked from it (docs/fork-safety.md).
    served_lock = threading.Lock()
    record("after_fork_child")


def dirty(mb):
    """Write one byte in each of the next mb MiB of the ballast's pages."""
    global dirtied
    end = min(dirtied + mb * 1024 * 1024, len(BALLAST))
    for i in range(dirtied, end, 4096):
        BALLAST[i] = 2
    dirtied = end


def serve_one():
    global served, warm
    with served_lock:
        served += 1
        if served == WARM_AFTER:
            warm = "pid-%d" % os.getpid()


def app(environ, start_response):
    serve_one()
    path = environ.get("PATH_INFO", "/")
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if path == "/slow":
        time.sleep(int(query.get("ms", ["0"])[0]) / 1000)
    if path == "/dirty":
        dirty(int(query.get("mb", ["1"])[0]))
    if path == "/token":
        body = TOKEN + "\n"
    elif path == "/warm":
        body = "pid=%d warm=%s\n" % (os.getpid(), warm)
    else:
        body = "worker=%s pid=%d generation=%s token=%s\n" % (
            os.environ.get("FORKD_WORKER"), os.getpid(), os.environ.get("FORKD_GENERATION"), TOKEN)
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
