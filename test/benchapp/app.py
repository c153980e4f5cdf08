"""The WSGI app of forkd's memory benchmark (test/bench/fork_test.go), under forkd.gunicorn.

It builds half of its memory when it is imported and the other half lazily, on the first /warm
request each process serves, as an app that fills caches on its first requests does. Forked
workers share the first half with worker 0 copy-on-write, but each builds its own second half;
after a refork from a warmed-up worker 0 they share both.

GET /            "pid=<pid> worker=<FORKD_WORKER> warm=<0|1> built=0"
GET /warm?ms=N   build the lazy half if this process has not, hold the request N milliseconds
                 (so that concurrent requests spread over the workers), then answer as /, with
                 built=1 when this request built the lazy half
GET /gc          "pid=<pid> frozen=<gc.get_freeze_count()> full=<full collections so far>"

Environment:
  BENCHAPP_IMPORT_MB  MiB built (and touched) at import
  BENCHAPP_LAZY_MB    MiB built (and touched) by the first /warm of each process
  BENCHAPP_OBJECTS    small objects that the garbage collector tracks, built at import, as a big
                      app's modules, classes and tables are (the gc.freeze benchmark)
  BENCHAPP_KEEP       objects each request adds to a per-process cache of the last 1000 requests'
                      objects, so that they live long enough for the collector's full collections
                      to come, as in an app with caches, while the memory stays the same
  BENCHAPP_GC_FREEZE  "0": forkd.set_gc_freeze(False)
"""
import collections
import gc
import os
import threading
import time
import urllib.parse

import forkd

if os.environ.get("BENCHAPP_GC_FREEZE") == "0":
    forkd.set_gc_freeze(False)

PAGE = 4096


def build(mib):
    buf = bytearray(mib * 1024 * 1024)
    for i in range(0, len(buf), PAGE):
        buf[i] = 1  # touch every page: resident, then shared copy-on-write by forks
    return buf


IMPORTED = build(int(os.environ.get("BENCHAPP_IMPORT_MB", "0")))
# Lists, each with a str: every list is a container the collector tracks and visits.
OBJECTS = [[i, str(i)] for i in range(int(os.environ.get("BENCHAPP_OBJECTS", "0")))]
KEEP = int(os.environ.get("BENCHAPP_KEEP", "0"))
cache = collections.deque(maxlen=1000)
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
    if path == "/gc":
        body = "pid=%d frozen=%d full=%d\n" % (
            os.getpid(), gc.get_freeze_count(), gc.get_stats()[2]["collections"])
        return respond(start_response, body)
    if KEEP:
        cache.append([[j] for j in range(KEEP)])
    body = "pid=%d worker=%s warm=%d built=%d\n" % (
        os.getpid(), os.environ.get("FORKD_WORKER"), lazy is not None, built)
    return respond(start_response, body)


def respond(start_response, body):
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
