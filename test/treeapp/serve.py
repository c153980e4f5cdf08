"""The server of the process-tree tests: it serves HTTP on the first listener forkd hands a worker
(fd 3) with the standard library's http.server, answering "pid=<pid> generation=<generation>".

A shell-script worker runs it as a child, or leaves it behind as an orphan, so that the worker is a
tree of processes and not one. Run it with /usr/bin/python3 (any python3 will do: stdlib only).

  serve.py [--pidfile PATH] [--ignore-term]
"""
import argparse
import http.server
import os
import signal
import socket
import socketserver


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("pid=%d generation=%s\n" % (os.getpid(), os.environ.get("FORKD_GENERATION"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

    def __init__(self, sock):
        super().__init__(sock.getsockname(), Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pidfile")
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = Server(socket.socket(fileno=3))
    if args.pidfile:
        with open(args.pidfile + ".tmp", "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(args.pidfile + ".tmp", args.pidfile)
    server.serve_forever()


main()
