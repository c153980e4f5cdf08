"""The WSGI app of forkd's memory benchmark (test/bench/fork_test.go), under forkd.gunicorn.

It builds half of its memory when it is imported and the other half lazily, on the first /warm
request each process serves, as an app that fills caches on its first requests does. Forked
workers share the first half with worker 0 copy-on-write, but each builds its own second half;
after a refork from a warmed-up worker 0 they share both.

GET /            "pid=<pid> worker=<FORKD_WORKER> warm=<0|1> built=0"
GET /warm?ms=N   build the lazy half if this process has not, hold the request N milliseconds
                 (so that concurrent requests spread over the workers), then answer as /, with
                 built=1 when this request built the lazy half

Environment:
  BENCHAPP_IMPORT_MB  MiB built (and touched) at import
  BENCHAPP_LAZY_MB    MiB built (and touched) by the first /warm of each process
"""
import os
import threading
import time
import urllib.parse

import forkd  # noqa: F401  (the SDK's fork hooks; forkd.gunicorn imports it anyway)

PAGE = 4096


def build(mib):
    buf = bytearray(mib * 1024 * 1024)
    for i in range(0, len(buf), PAGE):
        buf[i] = 1  # touch every page: resident, then shared copy-on-write by forks
    return buf


IMPORTED = build(int(os.environ.get("BENCHAPP_IMPORT_MB", "0")))
LAZY_MB = int(os.environ.get("BENCHAPP_LAZY_MB", "0"))
lazy = None
lazy_lock = threading.Lock()


def app(environ, start_response):
    global lazy
    path = environ.get("PATH_INFO", "/")
    built = False
    if path == "/warm":
        with lazy_lock:
            if lazy is None:
                lazy = build(LAZY_MB)
                built = True
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        time.sleep(int(query.get("ms", ["0"])[0]) / 1000)
    body = "pid=%d worker=%s warm=%d built=%d\n" % (
        os.getpid(), os.environ.get("FORKD_WORKER"), lazy is not None, built)
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
