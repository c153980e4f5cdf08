"""The WSGI runner: real HTTP/1.1 over the passed socket, keep-alive, framing, counting."""

import http.client
import os
import re
import signal
import socket
import time

from .helpers import MasterTestCase, wait_until, waitpid_timeout

WSGI = ["-m", "forkd.wsgi", "--threads", "3", "hookapp:app"]


def recv_until_close(sock, timeout=5):
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


class WSGITest(MasterTestCase):
    def setUp(self):
        self.m = self.master(watchdog_usec=400000)
        self.w = self.m.boot(WSGI)

    def connect(self):
        c = http.client.HTTPConnection("127.0.0.1", self.m.port, timeout=5)
        self.addCleanup(c.close)
        return c

    def test_keepalive_and_request_count(self):
        c = self.connect()
        sock = None
        for i in range(3):
            c.request("GET", "/n%d" % i)
            resp = c.getresponse()
            body = resp.read()
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.getheader("Content-Length"), str(len(body)))
            self.assertIsNone(resp.getheader("Connection"))
            self.assertIn(b"path=/n%d" % i, body)
            if sock is None:
                sock = c.sock
            self.assertIs(c.sock, sock, "the connection was not kept alive")
        self.m.notify.wait_for(self.w.pid, "X_FORKD_REQUESTS=3", timeout=5)
        self.m.notify.wait_for(self.w.pid, "WATCHDOG=1", timeout=5)

    def test_bodies(self):
        c = self.connect()
        payload = os.urandom(300000)
        c.request("POST", "/echo", body=payload)
        resp = c.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.read(), payload)
        # Chunked request body.
        c.request("POST", "/echo", body=iter([b"abc", b"", b"defg"]),
                  headers={"Transfer-Encoding": "chunked"}, encode_chunked=True)
        resp = c.getresponse()
        self.assertEqual(resp.read(), b"abcdefg")
        # A generator response is sent chunked, on the same connection.
        c.request("GET", "/stream")
        resp = c.getresponse()
        self.assertEqual(resp.getheader("Transfer-Encoding"), "chunked")
        self.assertEqual(resp.read(), b"part0\npart1\npart2\n")
        # An unread body is skipped, and the connection serves the next request.
        c.request("POST", "/unread", body=b"x" * 5000)
        self.assertEqual(c.getresponse().read().count(b"path=/unread"), 1)
        c.request("HEAD", "/")
        resp = c.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.read(), b"")
        c.request("GET", "/after")
        self.assertIn(b"path=/after", c.getresponse().read())

    def test_pipelined_requests(self):
        s = socket.create_connection(("127.0.0.1", self.m.port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = recv_until_close(s)
        self.assertEqual(data.count(b"HTTP/1.1 200 OK"), 2, data)
        self.assertLess(data.index(b"path=/one"), data.index(b"path=/two"))

    def test_http10_and_errors(self):
        s = socket.create_connection(("127.0.0.1", self.m.port), timeout=5)
        self.addCleanup(s.close)
        s.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        data = recv_until_close(s)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"), data)
        self.assertIn(b"path=/old", data)

        c = self.connect()
        c.request("GET", "/error")
        resp = c.getresponse()
        self.assertEqual(resp.status, 500)
        resp.read()
        wait_until(lambda: "the app failed on purpose" in self.w.read_log(), what="error log")

        s2 = socket.create_connection(("127.0.0.1", self.m.port), timeout=5)
        self.addCleanup(s2.close)
        s2.sendall(b"BROKEN\r\n\r\n")
        self.assertIn(b" 400 ", recv_until_close(s2).split(b"\r\n")[0])

    def test_connection_close_while_stopping(self):
        c = self.connect()
        c.request("GET", "/slow?ms=600")
        time.sleep(0.2)
        os.kill(self.w.pid, signal.SIGTERM)
        resp = c.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Connection"), "close")
        resp.read()
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(self.w.pid)), 0)


class DevModeTest(MasterTestCase):
    def test_binds_without_listen_fds(self):
        m = self.master()
        w = m.start(WSGI[:-1] + ["--bind", "127.0.0.1:0", "hookapp:app"], control=False,
                    env={"LISTEN_FDS": "", "LISTEN_FDNAMES": "", "FORKD_WORKER": "",
                         "FORKD_GENERATION": "", "FORKD_PROTOCOL": "", "NOTIFY_SOCKET": ""})

        def port():
            found = re.search(r"http://127\.0\.0\.1:(\d+)", w.read_log())
            return found and int(found.group(1))
        p = wait_until(port, what="the bound port")
        c = http.client.HTTPConnection("127.0.0.1", p, timeout=5)
        self.addCleanup(c.close)
        c.request("GET", "/dev")
        body = c.getresponse().read()
        self.assertIn(b"worker=-1 generation=0 path=/dev", body)
        os.kill(w.pid, signal.SIGINT)
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(w.pid)), 0)


class CapacityTest(MasterTestCase):
    def test_idle_connections_hold_no_slot_and_threads_bound_requests(self):
        m = self.master()
        w = m.boot(["-m", "forkd.wsgi", "--threads", "1", "hookapp:app"])
        idle = http.client.HTTPConnection("127.0.0.1", m.port, timeout=5)
        self.addCleanup(idle.close)
        idle.request("GET", "/first")
        idle.getresponse().read()
        # The idle keep-alive connection does not keep a second client waiting.
        start = time.monotonic()
        c = http.client.HTTPConnection("127.0.0.1", m.port, timeout=5)
        self.addCleanup(c.close)
        c.request("GET", "/second")
        self.assertIn(b"path=/second", c.getresponse().read())
        self.assertLess(time.monotonic() - start, 1.0)
        # With one thread, two slow requests run one after the other.
        results = []

        def slow():
            s = http.client.HTTPConnection("127.0.0.1", m.port, timeout=10)
            s.request("GET", "/slow?ms=400")
            results.append(s.getresponse().status)
            s.close()
        import threading
        threads = [threading.Thread(target=slow) for _ in range(2)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        self.assertEqual(results, [200, 200])
        self.assertGreaterEqual(time.monotonic() - start, 0.8)
        # The idle connection still works.
        idle.request("GET", "/third")
        self.assertIn(b"path=/third", idle.getresponse().read())
        self.assertTrue(w.pid)
