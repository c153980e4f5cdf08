"""A plain app for forkd's quick mode: Python's standard library, no forkd SDK, no sd_notify.

It serves HTTP on the socket forkd hands every worker (sd_listen_fds(3): the first one is fd 3),
which is all forkd needs of an app. Run four workers of it with:

    forkd --workers 4 --listen tcp://127.0.0.1:8080 -- python3 app.py
    curl http://127.0.0.1:8080/        # hello from pid P (worker I)
"""

import http.server
import os
import socket


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from pid %d (worker %s)\n" % (os.getpid(), os.environ.get("FORKD_WORKER", "?"))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


listener = socket.socket(fileno=3)  # the listening socket forkd passed (LISTEN_FDS=1)
server = http.server.ThreadingHTTPServer(listener.getsockname(), Hello, bind_and_activate=False)
server.socket = listener
server.serve_forever()
