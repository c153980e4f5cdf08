"""The WSGI runner: ``python3 -m forkd.wsgi [options] module:app``.

Serves a WSGI application (PEP 3333) over HTTP/1.1 with keep-alive on the sockets forkd passes
(LISTEN_FDS), with forkd.serve: threaded, fork-worker capable (the exec'd worker 0 is the template
the others are forked from), counting every request (X_FORKD_REQUESTS), graceful on SIGTERM.
Without LISTEN_FDS (a shell, development) it binds --bind itself, 127.0.0.1:8000 by default.

The application is imported once, before serving: under forkd's fork-worker mode every forked
worker shares the imported code and data copy-on-write.

Options:
  --threads N          requests served at once per worker (default 5)
  --max-connections N  open connections per worker, idle keep-alive ones included (default 100)
  --bind HOST:PORT     where to listen without LISTEN_FDS (default 127.0.0.1:8000); also
                       unix:/path
  --keepalive SECONDS  how long an idle connection is kept open (default 5)
  --timeout SECONDS    how long reading a request may stall (default 30)
  --access-log         log every request to stderr

``module:app`` names the module and the WSGI callable in it (a dotted attribute path); with no
``:app``, the callable is ``application``, else ``app``. The current directory is on sys.path.
"""

import argparse
import http.server
import importlib
import os
import socket
import sys
import traceback
import urllib.parse
from wsgiref.util import FileWrapper

from . import server as _server
from . import worker as _worker

__all__ = ["main", "make_handler", "load_app"]

_MAX_LINE = 65536
# The unread rest of a request body is read and dropped, up to this much, so that the connection
# can serve the next request; a larger rest closes the connection instead.
_MAX_DISCARD = 1 << 20
_BUFSIZE = 65536


class _Reader:
    """A buffered reader over a socket that can say whether it holds unread bytes (a pipelined next
    request), which io.BufferedReader cannot."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def buffered(self):
        return len(self.buf)

    def _fill(self):
        if self.eof:
            return False
        data = self.sock.recv(_BUFSIZE)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def readline(self, limit=-1):
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                end = i + 1
                break
            if 0 <= limit <= len(self.buf):
                end = limit
                break
            start = len(self.buf)
            if not self._fill():
                end = len(self.buf)
                break
        if limit >= 0:
            end = min(end, limit)
        out = bytes(self.buf[:end])
        del self.buf[:end]
        return out

    def read(self, n=-1):
        if n is None or n < 0:
            while self._fill():
                pass
            out = bytes(self.buf)
            self.buf.clear()
            return out
        while len(self.buf) < n and self._fill():
            pass
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read1(self, n=-1):
        if not self.buf:
            self._fill()
        if n is None or n < 0:
            n = len(self.buf)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    # http.client.parse_headers reads lines with readline; nothing else is needed from a file.


class BadRequest(ValueError):
    """The request body is malformed (broken chunked encoding)."""


class _Body:
    """wsgi.input: the request body, bounded by Content-Length or decoded from chunked encoding."""

    def __init__(self, reader, length=0, chunked=False):
        self.reader = reader
        self.left = length          # Content-Length bytes not yet taken from the reader
        self.chunked = chunked
        self.chunk_left = 0
        self.done = not chunked and length == 0
        self.pending = bytearray()  # taken from the reader, not yet read by the app

    def _more(self):
        """Move the next piece of the body into pending; False at its end."""
        if self.done:
            return False
        if not self.chunked:
            data = self.reader.read1(min(_BUFSIZE, self.left))
            if not data:
                raise BadRequest("the body ended before Content-Length")
            self.left -= len(data)
            self.done = self.left == 0
            self.pending += data
            return True
        if self.chunk_left == 0:
            line = self.reader.readline(_MAX_LINE)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequest("bad chunk size %r" % line[:40]) from None
            if size < 0:
                raise BadRequest("bad chunk size")
            if size == 0:
                while True:  # trailers, then an empty line
                    line = self.reader.readline(_MAX_LINE)
                    if line in (b"\r\n", b"\n", b""):
                        break
                self.done = True
                return False
            self.chunk_left = size
        data = self.reader.read1(min(_BUFSIZE, self.chunk_left))
        if not data:
            raise BadRequest("the body ended inside a chunk")
        self.chunk_left -= len(data)
        if self.chunk_left == 0 and self.reader.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
            raise BadRequest("no CRLF after a chunk")
        self.pending += data
        return True

    def _take(self, n):
        out = bytes(self.pending[:n])
        del self.pending[:n]
        return out

    def read(self, size=-1):
        if size is None or size < 0:
            while self._more():
                pass
            return self._take(len(self.pending))
        while len(self.pending) < size and self._more():
            pass
        return self._take(size)

    def readline(self, size=-1):
        start = 0
        while True:
            i = self.pending.find(b"\n", start)
            if i >= 0:
                n = i + 1
                break
            if size is not None and 0 <= size <= len(self.pending):
                n = size
                break
            start = len(self.pending)
            if not self._more():
                n = len(self.pending)
                break
        if size is not None and size >= 0:
            n = min(n, size)
        return self._take(n)

    def readlines(self, hint=-1):
        lines, total = [], 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def discard(self, limit):
        """Read and drop the rest; False when more than limit bytes were left."""
        dropped = len(self.pending)
        self.pending.clear()
        while dropped <= limit and self._more():
            dropped += len(self.pending)
            self.pending.clear()
        return dropped <= limit and self.done


class _Writer:
    def __init__(self, sock):
        self.sock = sock

    def write(self, data):
        self.sock.sendall(data)
        return len(data)

    def flush(self):
        pass


class _Options:
    threads = _server.DEFAULT_THREADS
    max_connections = _server.DEFAULT_MAX_CONNECTIONS
    keepalive = 5.0
    timeout = 30.0
    access_log = False


class WSGIRequestHandler(http.server.BaseHTTPRequestHandler):
    """One connection: HTTP/1.1 requests, one after the other, each handed to the WSGI app."""

    protocol_version = "HTTP/1.1"
    server_version = "forkd-python/" + _worker.__version__
    sys_version = ""

    def __init__(self, sock, addr, app, options):
        # BaseHTTPRequestHandler.__init__ would serve at once; serve() does it here instead.
        self.request = self.connection = sock
        self.client_address = addr if isinstance(addr, tuple) else ("", 0)
        self.server = None
        self.app = app
        self.options = options
        self.rfile = _Reader(sock)
        self.wfile = _Writer(sock)
        self.close_connection = True

    def serve(self):
        while True:
            if not self.rfile.buffered():
                wait = self.options.keepalive
                if not _server.wait_for_request(self.connection, wait):
                    return
            self.connection.settimeout(self.options.timeout)
            try:
                served = self.handle_one_request()
            except (ConnectionError, socket.timeout):
                return
            finally:
                self.connection.settimeout(None)
            if served:
                _worker.add_requests(1)
            if self.close_connection:
                return

    def handle_one_request(self):
        """Read and answer one request. Returns True when there was one (to count it)."""
        self.close_connection = True
        self.raw_requestline = self.rfile.readline(_MAX_LINE + 1)
        if not self.raw_requestline:
            return False
        if len(self.raw_requestline) > _MAX_LINE:
            self.requestline = ""
            self.request_version = ""
            self.command = ""
            self.send_error(414)
            return True
        words = str(self.raw_requestline, "iso-8859-1").split()
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            # No HTTP/0.9 here (the error would go without a status line).
            self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
            self.request_version = "HTTP/1.1"
            self.command = ""
            self.send_error(400, "Bad request syntax (%r)" % self.requestline[:80])
            return True
        if not self.parse_request():
            return True
        self.run_wsgi()
        return True

    def version_string(self):
        return self.server_version

    # Logging: errors always, requests with --access-log.
    def log_request(self, code="-", size="-"):
        if self.options.access_log:
            super().log_request(code, size)

    def log_message(self, format, *args):
        sys.stderr.write("%s - - [%s] %s\n" % (
            self.client_address[0] or "-", self.log_date_time_string(), format % args))

    def environ(self, body):
        path, _, query = self.path.partition("?")
        if "://" in path:
            # absolute-form request target (a proxy's): keep the path only.
            path = urllib.parse.urlsplit(path).path or "/"
        try:
            sockname = self.connection.getsockname()
        except OSError:
            sockname = ("", 0)
        if isinstance(sockname, tuple):
            server_name, server_port = sockname[0], str(sockname[1])
        else:
            server_name, server_port = str(sockname or "localhost"), "0"
        env = {
            "REQUEST_METHOD": self.command,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote(path, "latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": self.request_version,
            "SERVER_SOFTWARE": self.server_version,
            "REMOTE_ADDR": str(self.client_address[0]),
            "REMOTE_PORT": str(self.client_address[1]) if len(self.client_address) > 1 else "",
            "REQUEST_URI": self.path,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": body,
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
        }
        ctype = self.headers.get("Content-Type")
        if ctype is not None:
            env["CONTENT_TYPE"] = ctype
        clen = self.headers.get("Content-Length")
        if clen is not None:
            env["CONTENT_LENGTH"] = clen
        for name in self.headers.keys():
            key = name.upper()
            if "_" in key or key in ("CONTENT-TYPE", "CONTENT-LENGTH"):
                # Underscores would make X-A_B and X-A-B the same variable: drop them, as
                # other servers do.
                continue
            key = "HTTP_" + key.replace("-", "_")
            if key in env:
                continue
            values = self.headers.get_all(name)
            env[key] = ",".join(v.strip() for v in values)
        return env

    def _body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if te:
            if te.strip().lower() != "chunked":
                raise BadRequest("unsupported Transfer-Encoding %r" % te)
            return _Body(self.rfile, chunked=True)
        clen = self.headers.get_all("Content-Length") or []
        if not clen:
            return _Body(self.rfile, 0)
        if len(set(v.strip() for v in clen)) != 1 or not clen[0].strip().isdigit():
            raise BadRequest("bad Content-Length")
        return _Body(self.rfile, int(clen[0].strip()))

    def run_wsgi(self):
        try:
            body = self._body()
        except BadRequest as e:
            self.send_error(400, str(e))
            return
        env = self.environ(body)
        head = self.command == "HEAD"
        state = {"status": None, "headers": None, "sent": False, "chunked": False,
                 "length": None, "written": 0}
        out = []  # header bytes waiting for the first body bytes

        def start_response(status, headers, exc_info=None):
            if exc_info is not None:
                try:
                    if state["sent"]:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif state["status"] is not None:
                raise AssertionError("start_response was already called")
            if not isinstance(status, str) or len(status) < 4 or not status[:3].isdigit():
                raise AssertionError("status must be a string like '200 OK': %r" % (status,))
            for item in headers:
                if not (isinstance(item, tuple) and len(item) == 2
                        and isinstance(item[0], str) and isinstance(item[1], str)):
                    raise AssertionError("headers must be (str, str) tuples: %r" % (item,))
            state["status"] = status
            state["headers"] = list(headers)
            return write

        def send_headers(length_hint=None):
            code = int(state["status"][:3])
            reason = state["status"][4:].strip()
            self.send_response(code, reason)
            length = None
            connection_close = False
            for name, value in state["headers"]:
                lname = name.lower()
                if lname == "content-length":
                    length = value.strip()
                elif lname == "connection":
                    if value.strip().lower() == "close":
                        connection_close = True
                    continue
                elif lname in ("transfer-encoding", "keep-alive"):
                    continue  # hop-by-hop: the server's business (PEP 3333)
                self.send_header(name, value)
            no_body = head or code < 200 or code in (204, 304)
            if length is not None:
                self.send_header("Content-Length", length)
                state["length"] = int(length) if length.isdigit() else None
            elif length_hint is not None and not (code < 200 or code in (204, 304)):
                self.send_header("Content-Length", str(length_hint))
                state["length"] = length_hint
            elif no_body:
                pass
            elif self.request_version == "HTTP/1.1":
                self.send_header("Transfer-Encoding", "chunked")
                state["chunked"] = True
            else:
                connection_close = True
            if connection_close or _server.draining():
                self.close_connection = True
            if self.close_connection:
                self.send_header("Connection", "close")
            elif self.request_version == "HTTP/1.0":
                self.send_header("Connection", "keep-alive")
            self._headers_buffer.append(b"\r\n")
            out.append(b"".join(self._headers_buffer))
            self._headers_buffer = []
            state["sent"] = True
            state["no_body"] = no_body

        def write(data):
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError("WSGI response data must be bytes, not %s" % type(data).__name__)
            if state["status"] is None:
                raise AssertionError("write() before start_response()")
            if not state["sent"]:
                send_headers()
            if not data or state.get("no_body"):
                return
            state["written"] += len(data)
            if state["chunked"]:
                out.append(b"%x\r\n" % len(data))
                out.append(bytes(data))
                out.append(b"\r\n")
            else:
                out.append(bytes(data))
            self.wfile.write(b"".join(out))
            out.clear()

        result = None
        try:
            result = self.app(env, start_response)
            length_hint = None
            if isinstance(result, (list, tuple)) and not state["sent"]:
                try:
                    length_hint = sum(len(x) for x in result)
                except TypeError:
                    length_hint = None
            for data in result:
                if data:
                    if not state["sent"]:
                        if state["status"] is None:
                            raise AssertionError("the app returned data before start_response()")
                        send_headers(length_hint)
                    write(data)
            if state["status"] is None:
                raise AssertionError("the app did not call start_response()")
            if not state["sent"]:
                send_headers(0 if length_hint is None else length_hint)
            if state["chunked"]:
                out.append(b"0\r\n\r\n")
            if out:
                self.wfile.write(b"".join(out))
                out.clear()
            if state["length"] is not None and state["written"] != state["length"] \
                    and not state.get("no_body"):
                # The app lied about Content-Length: the connection cannot be reused.
                self.close_connection = True
        except (ConnectionError, socket.timeout):
            self.close_connection = True
            raise
        except Exception:
            self.close_connection = True
            self.log_error("WSGI app failed:\n%s", traceback.format_exc().rstrip())
            if not state["sent"]:
                out.clear()
                self._headers_buffer = []
                msg = b"Internal Server Error\n"
                self.send_response(500)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(msg)))
                self.send_header("Connection", "close")
                self.end_headers()
                if not head:
                    self.wfile.write(msg)
            return
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    self.log_error("closing the WSGI response failed:\n%s",
                                   traceback.format_exc().rstrip())
        if not self.close_connection:
            try:
                if not body.discard(_MAX_DISCARD):
                    self.close_connection = True
            except BadRequest:
                self.close_connection = True


def make_handler(app, keepalive=5.0, timeout=30.0, access_log=False):
    """The handle_connection for forkd.serve that serves app (a WSGI callable)."""
    options = _Options()
    options.keepalive = keepalive
    options.timeout = timeout
    options.access_log = access_log

    def handle_connection(sock, addr):
        WSGIRequestHandler(sock, addr, app, options).serve()

    return handle_connection


def load_app(spec):
    """Import ``module:attr`` (attr may be dotted; default application, then app)."""
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    if attr:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    for name in ("application", "app"):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError("module %r has no 'application' or 'app'; name it: %s:NAME"
                         % (module_name, module_name))


def _bind(spec):
    if spec.startswith("unix:"):
        path = spec[len("unix:"):]
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not path.startswith("\0") and os.path.exists(path):
            os.unlink(path)
        s.bind(path)
    else:
        host, sep, port = spec.rpartition(":")
        if not sep:
            raise ValueError("--bind wants HOST:PORT or unix:/path, not %r" % spec)
        host = host.strip("[]") or "0.0.0.0"
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        s = socket.socket(family, kind, proto)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(addr)
    s.listen(1024)
    return s


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 -m forkd.wsgi",
        description="Serve a WSGI app as a forkd worker (HTTP/1.1, threaded, fork-worker capable).")
    parser.add_argument("app", help="module:callable, e.g. app:app")
    parser.add_argument("--threads", type=int, default=_server.DEFAULT_THREADS,
                        help="requests served at once (default %(default)s)")
    parser.add_argument("--max-connections", type=int, default=_server.DEFAULT_MAX_CONNECTIONS,
                        help="open connections, idle ones included (default %(default)s)")
    parser.add_argument("--bind", default="127.0.0.1:8000",
                        help="HOST:PORT or unix:/path to listen on without LISTEN_FDS "
                             "(default %(default)s)")
    parser.add_argument("--keepalive", type=float, default=5.0,
                        help="seconds an idle connection stays open (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds reading a request may stall (default %(default)s)")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.max_connections < args.threads:
        parser.error("want --threads >= 1 and --max-connections >= --threads")

    try:
        socks = _worker.listeners()
    except _worker.Error as e:
        _worker.log(str(e))
        return 1
    try:
        app = load_app(args.app)
    except Exception:
        _worker.log("cannot load %s:\n%s" % (args.app, traceback.format_exc().rstrip()))
        return 1
    if not socks:
        try:
            socks = [_bind(args.bind)]
        except (OSError, ValueError) as e:
            _worker.log("cannot listen on %s: %s" % (args.bind, e))
            return 1
        name = socks[0].getsockname()
        where = "%s:%s" % name[:2] if isinstance(name, tuple) else "unix:%s" % name
        _worker.log("not under forkd: serving %s on http://%s" % (args.app, where))
    handler = make_handler(app, keepalive=args.keepalive, timeout=args.timeout,
                           access_log=args.access_log)
    try:
        _server.serve(handler, threads=args.threads, listeners=socks,
                      max_connections=args.max_connections)
    except _worker.Error as e:
        _worker.log(str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
