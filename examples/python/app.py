"""The Python demo app for forkd's fork-worker mode: a small WSGI app.

    GET /            hello from worker I (pid P, generation G)
    GET /slow?ms=N   the same, after N milliseconds (try it during a reload or refork)

At import it allocates DEMO_ALLOC_MB megabytes (default 50) and fills them, standing in for a big
app's loaded code and data. Worker 0 imports it once; forkd forks every other worker from worker 0,
so they share those pages copy-on-write: compare Rss with Pss in /proc/PID/smaps_rollup.

Run it under forkd with `forkd --config examples/python/forkd.hcl` (`make run`), or with gunicorn
alone for development:

    /usr/bin/python3 -m gunicorn app:app   # http://127.0.0.1:8000/
"""

import os
import time
import urllib.parse

import forkd

# Filled, so the pages are really there (a zeroed allocation may be left unmapped by the kernel).
BALLAST = b"\x01" * (int(os.environ.get("DEMO_ALLOC_MB", "50")) * 1024 * 1024)


def hello():
    return "hello from worker %d (pid %d, generation %d)\n" % (
        forkd.worker_index(), os.getpid(), forkd.generation())


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/slow":
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        try:
            ms = int(query.get("ms", ["1000"])[0])
        except ValueError:
            ms = -1
        if not 0 <= ms <= 600000:
            return respond(start_response, "400 Bad Request", "ms must be 0..600000\n")
        time.sleep(ms / 1000)
    elif path != "/":
        return respond(start_response, "404 Not Found", "not found: %s\n" % path)
    return respond(start_response, "200 OK", hello())


def respond(start_response, status, text):
    body = text.encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(body)))])
    return [body]
