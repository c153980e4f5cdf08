"""forkd.gunicorn against a fake master: gunicorn's workers in real processes, the handshake,
spawn, pause/resume, gunicorn's and forkd's hooks, draining, stopping, the heartbeat, refused
options. Needs gunicorn for the interpreter running the tests (/usr/bin/python3 on Debian 12)."""

import fcntl
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
import unittest

from .helpers import (APPS, EXTRA_PATH, PY, SDK_DIR, MasterTestCase, alive, have, ppid_of,
                      wait_until, waitpid_timeout)

HAVE_GUNICORN = have("gunicorn")
HAVE_UVICORN = HAVE_GUNICORN and have("uvicorn.workers")

CONF = ["-c", os.path.join(APPS, "gunicorn_hooks.py")]
GTHREAD = ["-m", "forkd.gunicorn"] + CONF + ["-k", "gthread", "--threads", "4", "hookapp:app"]
SYNC = ["-m", "forkd.gunicorn"] + CONF + ["-k", "sync", "hookapp:app"]


class Client:
    """An HTTP/1.1 keep-alive client, run in a thread when asked."""

    def __init__(self, port, timeout=10):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.results = []
        self.response = None  # the threaded request's, for its headers
        self.started_at = None
        self.thread = None

    def get(self, path):
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        return resp, resp.read()

    def get_in_thread(self, path):
        self.started_at = time.monotonic()

        def run():
            try:
                resp, data = self.get(path)
                self.response = resp
                self.results.append((resp.status, data))
            except Exception as e:  # reported by the test's assertions
                self.results.append((None, repr(e)))
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def join(self, timeout=10):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "request did not finish"
        return self.results[0]

    def closed_by_server(self, timeout=5):
        """True once the server has closed this (idle) connection: end of file."""
        self.conn.sock.settimeout(timeout)
        try:
            return self.conn.sock.recv(1) == b""
        except ConnectionResetError:
            return False

    def close(self):
        self.conn.close()


def get(port, path="/"):
    c = Client(port)
    try:
        resp, data = c.get(path)
        return resp.status, data.decode()
    finally:
        c.close()


def answering(m, pids):
    """Send requests one after another until each of pids has answered one, or for TIMEOUT
    seconds: the PIDs that answered. Which worker accepts a connection is the kernel's and the
    scheduler's choice: on a busy machine one worker may take a hundred in a row."""
    seen = set()

    def all_answered():
        seen.add(int(get(m.port)[1].split()[0].split("=")[1]))
        return pids <= seen
    try:
        wait_until(all_answered, interval=0, what="an answer from each of %s" % sorted(pids))
    except AssertionError:
        pass  # the caller's assertion says who did not answer
    return seen


def _epoll_sets(pid):
    """For each of pid's epoll instances, the inodes of the files it watches (/proc/PID/fdinfo:
    "tfd: ... ino:HEX"). A file stays watched while any descriptor of its open file description
    is open, even once the registered descriptor is closed: a listener's duplicate closed while
    forkd's fd 3 stays open is watched until it is unregistered or the epoll instance closed."""
    sets = []
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, name)) != "anon_inode:[eventpoll]":
                continue
            with open("/proc/%d/fdinfo/%s" % (pid, name)) as f:
                info = f.read()
        except OSError:
            continue
        sets.append({int(line.split(" ino:")[1].split()[0], 16) for line in info.splitlines()
                     if line.startswith("tfd:") and " ino:" in line})
    return sets


def waits_in_a_poller(pid, inode):
    """Whether pid's socket inode waits for its next bytes in a poller with other connections
    (gunicorn's, or forkd's drain's), not in a thread of its own (gunicorn 26 first gives a new
    connection a thread that waits 5 s for its first request, on an epoll of that one socket)."""
    return any(inode in s and len(s) > 1 for s in _epoll_sets(pid))


def _server_side_inode(client):
    """The inode of the server's socket of client's (a Client's) TCP connection over 127.0.0.1,
    from /proc/net/tcp: the entry from the client's peer address to its own."""
    want = ["0100007F:%04X" % addr[1]
            for addr in (client.conn.sock.getpeername(), client.conn.sock.getsockname())]
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1:3] == want:
                return int(fields[9])
    return None


def polls_listener(m, pid):
    """Whether pid's gunicorn threaded loop is accepting: its poller watches its duplicate of
    the fake master's listener. Once the loop has ended (its drain answers what comes from then
    on), no poller does: gunicorn up to 23 closes its poller, gunicorn 24 and later unregister
    the listeners before their own drain."""
    inode = os.fstat(m.listener.fileno()).st_ino
    return any(inode in s for s in _epoll_sets(pid))


def stop_and_wait_for_the_loop_to_end(m, pid, stop):
    """Call stop() (a signal, a pause), then wait until pid's gunicorn loop has ended: its drain
    answers what comes from now on. (Not the listener's duplicate being closed: gunicorn 24 and
    later close it only once their drain is over.)"""
    wait_until(lambda: polls_listener(m, pid), what="pid %d to poll the listener" % pid)
    stop()
    wait_until(lambda: not polls_listener(m, pid), what="the gunicorn loop of pid %d to end" % pid)


def events(hooks, pid):
    return [e for p, e, _ in hooks if p == pid]


def hook_data(hooks, pid, event):
    """The data of the first event hook that ran in pid."""
    return [d for p, e, d in hooks if p == pid and e == event][0]


def fork_ready(m, template, index=1, generation=1):
    """Have the template fork worker index, welcome it and wait for its READY=1."""
    seq, ch = m.spawn(template, index=index, generation=generation)
    w = m.adopt(template.expect("spawned")["pid"], ch)
    m.welcome(w, index=index, generation=generation)
    m.notify.wait_for(w.pid, "READY=1")
    return w


@unittest.skipUnless(HAVE_GUNICORN, "gunicorn is missing: apt-get install python3-gunicorn "
                                    "(run the tests with /usr/bin/python3)")
class GunicornTestCase(MasterTestCase):
    pass


class HandshakeTest(GunicornTestCase):
    def test_template_hello_then_ready_only_after_welcome(self):
        m = self.master()
        w = m.start(GTHREAD)
        hello = w.expect("hello")
        self.assertEqual(hello["pid"], w.pid)
        self.assertIs(hello["fork"], True)
        self.assertTrue(hello["sdk"].startswith("forkd-python/"))
        time.sleep(0.3)
        self.assertNotIn("READY=1", m.notify.lines(w.pid))
        w.send({"op": "welcome", "worker": 0, "generation": 3})
        ready = m.notify.wait_for(w.pid, "READY=1")
        # No timeouts.worker from forkd (no WATCHDOG_USEC): gunicorn's --timeout (30 s) is the
        # heartbeat deadline, said with READY=1.
        self.assertIn("WATCHDOG_USEC=30000000", ready[1].split("\n"))
        status, body = get(m.port)
        self.assertEqual(status, 200)
        self.assertIn("pid=%d worker=0 generation=3" % w.pid, body)
        m.notify.wait_for(w.pid, "X_FORKD_REQUESTS=1")
        # gunicorn's server hooks, then forkd's boot hook, in the template.
        self.assertEqual(events(m.hooks(), w.pid), [
            "g.on_starting", "g.when_ready", "boot", "g.pre_fork", "g.post_fork",
            "g.post_worker_init"])
        boot = [d for p, e, d in m.hooks() if e == "boot"][0]
        self.assertIs(boot["template"], True)
        # post_fork sees the worker's own PID, as in a worker gunicorn's arbiter forked.
        self.assertEqual(hook_data(m.hooks(), w.pid, "g.post_fork"),
                         {"server_pid": w.pid, "worker_pid": w.pid})
        self.assertEqual(boot["env"]["LISTEN_PID"], str(w.pid))
        self.assertIn("the child_exit hook never runs under forkd", w.read_log())

    def test_refuse_exits_1_with_the_reason(self):
        m = self.master()
        w = m.start(GTHREAD)
        w.expect("hello")
        w.send({"op": "refuse", "error": "this master speaks protocol 7"})
        w.channel.close()
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(w.pid)), 1)
        self.assertIn("this master speaks protocol 7", w.read_log())
        self.assertNotIn("READY=1", m.notify.lines(w.pid))

    def test_protocol_version_mismatch(self):
        m = self.master()
        w = m.start(GTHREAD, protocol_version="2")
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(w.pid)), 1)
        self.assertIn("forkd-python speaks protocol 1, this forkd master speaks 2: upgrade the SDK",
                      w.read_log())

    def test_eof_on_the_channel_stops_the_worker(self):
        m = self.master()
        w = m.boot(GTHREAD)
        w.channel.close()
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(w.pid)), 0, w.read_log())
        m.notify.wait_for(w.pid, "STOPPING=1")
        self.assertEqual(events(m.hooks(), w.pid)[-2:], ["g.worker_exit", "g.on_exit"])

    def test_malformed_messages_are_answered_not_fatal(self):
        m = self.master()
        w = m.boot(GTHREAD)
        w.channel.sock.send(b"\xff not json")
        w.channel.sock.send(b'{"v": 1, "seq": 41}')
        self.assertEqual(w.expect("error")["seq"], 41)
        w.channel.sock.send(b'{"v": 1, "op": "teleport", "seq": 42}')
        self.assertEqual(w.expect("error")["seq"], 42)
        w.channel.sock.send(b'{"v": 1, "op": "spawn", "seq": 43, "worker": "x"}')
        self.assertEqual(w.expect("error")["seq"], 43)
        m.request("pause", w, "paused")
        m.request("resume", w, "resumed")
        self.assertEqual(get(m.port)[0], 200)

    @unittest.skipUnless(HAVE_UVICORN, "uvicorn is missing: apt-get install python3-uvicorn")
    def test_a_worker_class_that_cannot_fork_says_so(self):
        m = self.master()
        w = m.start(["-m", "forkd.gunicorn", "-k", "uvicorn.workers.UvicornWorker", "asgiapp:app"])
        self.assertIs(w.expect("hello")["fork"], False)
        w.send({"op": "welcome", "worker": 0, "generation": 1})
        m.notify.wait_for(w.pid, "READY=1")
        seq = m.next_seq()
        w.send({"op": "pause", "seq": seq})
        self.assertEqual(w.expect("error")["seq"], seq)
        status, body = get(m.port, "/asgi")
        self.assertEqual(status, 200)
        self.assertIn("asgi pid=%d worker=0 path=/asgi" % w.pid, body)
        m.notify.wait_for(w.pid, "X_FORKD_REQUESTS=1")
        w.channel.close()
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(w.pid)), 0, w.read_log())


class SpawnTest(GunicornTestCase):
    def test_spawn_makes_a_worker_reparented_to_the_master(self):
        m = self.master(watchdog_usec=2000000)
        t = m.boot(GTHREAD)
        seq, ch = m.spawn(t, index=1, generation=1)
        spawned = t.expect("spawned")
        self.assertEqual(spawned["seq"], seq)
        pid = spawned["pid"]
        w = m.adopt(pid, ch)
        self.assertEqual(ppid_of(pid), os.getpid())
        self.assertEqual(os.getpgid(pid), pid, "a forked worker leads a process group of its own")
        hello = w.expect("hello")
        self.assertEqual(hello["pid"], pid)
        self.assertIs(hello["fork"], False)
        time.sleep(0.2)
        self.assertNotIn("READY=1", m.notify.lines(pid))
        w.send({"op": "welcome", "worker": 1, "generation": 1})
        ready = m.notify.wait_for(pid, "READY=1")
        # forkd's timeouts.worker applies (WATCHDOG_USEC is set): gunicorn's does not.
        self.assertFalse(any(ln.startswith("WATCHDOG_USEC=") for ln in ready[1].split("\n")))
        m.notify.wait_for(pid, "WATCHDOG=1", timeout=3)

        hooks = m.hooks()
        boot = {p: d for p, e, d in hooks if e == "boot"}
        self.assertEqual(boot[pid]["env"]["LISTEN_PID"], str(pid))
        self.assertEqual(boot[pid]["env"]["WATCHDOG_PID"], str(pid))
        self.assertEqual(boot[pid]["env"]["FORKD_WORKER"], "1")
        self.assertNotEqual(boot[pid]["env"]["FORKD_CONTROL_FD"], "4")
        self.assertIs(boot[pid]["template"], False)
        # In the template: forkd's prepare hooks in reverse, gunicorn's pre_fork before them,
        # forkd's parent hooks after. In the worker: forkd's child hooks, gunicorn's post_fork
        # and post_worker_init. Nothing in the intermediate child.
        self.assertEqual(events(hooks, t.pid), [
            "g.on_starting", "g.when_ready", "boot", "g.pre_fork", "g.post_fork",
            "g.post_worker_init",
            "g.pre_fork", "prepare2", "prepare1", "parent1", "parent2"])
        self.assertEqual(events(hooks, pid), [
            "child1", "child2", "boot", "g.post_fork", "g.post_worker_init"])
        self.assertEqual({p for p, _, _ in hooks}, {t.pid, pid})
        self.assertEqual(hook_data(hooks, pid, "g.post_fork"), {"server_pid": t.pid, "worker_pid": pid})

        # The new worker serves on its own once the template is gone.
        os.kill(t.pid, signal.SIGTERM)
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(t.pid)), 0)
        status, body = get(m.port)
        self.assertEqual(status, 200)
        self.assertIn("pid=%d worker=1" % pid, body)
        w.channel.close()
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(pid)), 0)
        self.assertEqual(events(m.hooks(), pid)[-1], "g.worker_exit")

    def test_the_template_freezes_its_heap_for_the_forked_worker(self):
        # gc.collect() + gc.freeze() right before the fork: the new worker's collector never
        # visits what it inherited; the template's collects all of its heap again once it serves.
        m = self.master()
        t = m.boot(GTHREAD)
        w = fork_ready(m, t)
        self.assertGreater(hook_data(m.hooks(), w.pid, "child1")["frozen"], 1000)
        self.assertGreater(hook_data(m.hooks(), t.pid, "parent1")["frozen"], 1000)
        w.channel.close()
        waitpid_timeout(w.pid)
        self.assertEqual(get(m.port, "/gc"), (200, "pid=%d frozen=0\n" % t.pid))

    def test_gc_freeze_off(self):
        m = self.master()
        t = m.boot(GTHREAD, env={"TEST_GC_FREEZE": "off"})
        w = fork_ready(m, t)
        self.assertEqual(hook_data(m.hooks(), w.pid, "child1")["frozen"], 0)

    def test_spawn_waits_for_the_request_in_flight(self):
        m = self.master()
        t = m.boot(GTHREAD)
        slow = Client(m.port).get_in_thread("/slow?ms=700")
        m.wait_began("/slow")
        seq, ch = m.spawn(t, index=1)
        spawned = t.expect("spawned")
        got_at = time.monotonic()
        m.adopt(spawned["pid"], ch)
        status, body = slow.join()
        self.assertEqual(status, 200, body)
        self.assertGreaterEqual(got_at - slow.started_at, 0.7)
        slow.close()
        self.assertEqual(get(m.port)[0], 200)  # the template serves again

    def test_spawn_does_not_wait_for_a_connection_that_sent_nothing(self):
        # HTTP clients dial ahead and park the connection in their pool (Go's net/http does). The
        # template's drain gives it until its keep-alive timeout, as an idle keep-alive connection,
        # not the graceful timeout; closed before the fork, it is closed for the client too.
        m = self.master()
        t = m.boot(GTHREAD[:-1] + ["--graceful-timeout", "60", GTHREAD[-1]])
        silent = Client(m.port)
        silent.conn.connect()
        self.assertEqual(get(m.port)[0], 200)  # accepted after the silent one: the template has it
        seq, ch = m.spawn(t, index=1)
        m.adopt(t.expect("spawned")["pid"], ch)
        self.assertTrue(silent.closed_by_server(), "the silent connection is still open")
        silent.close()
        self.assertEqual(get(m.port)[0], 200)  # the template serves again

    def test_spawn_failure_is_reported(self):
        m = self.master()
        t = m.boot(GTHREAD)
        seq = m.next_seq()
        t.send({"op": "spawn", "seq": seq, "worker": 1, "generation": 1})  # no descriptor
        reply = t.expect("spawn_failed")
        self.assertEqual(reply["seq"], seq)
        self.assertIn("descriptors", reply["error"])
        self.assertEqual(get(m.port)[0], 200)

    def test_library_fork_runs_the_hooks(self):
        m = self.master()
        t = m.boot(GTHREAD)
        self.assertEqual(get(m.port, "/fork")[0], 200)
        hooks = m.hooks()
        self.assertEqual(events(hooks, t.pid)[-4:], ["prepare2", "prepare1", "parent1", "parent2"])
        others = {p for p, _, _ in hooks} - {t.pid}
        self.assertEqual(len(others), 1)
        self.assertEqual(events(hooks, others.pop()), ["child1", "child2", "library-child"])

    def test_sync_worker_template(self):
        m = self.master()
        t = m.boot(SYNC)
        pid = fork_ready(m, t).pid
        self.assertEqual(answering(m, {t.pid, pid}), {t.pid, pid})

    def test_forking_leaves_the_shared_listener_non_blocking(self):
        # Every worker accepts on one open file description of forkd's listener (m.listener's
        # here), so its O_NONBLOCK is everyone's. A sync worker calls accept() at every turn of
        # its loop: on a blocking listener it waits there for the next connection, and sends no
        # heartbeat meanwhile. The template, between the new worker's setup and its fork, must
        # leave the flag alone.
        m = self.master(watchdog_usec=2000000)
        hold = os.path.join(m.dir, "hold")
        t = m.boot(SYNC, env={"TEST_PRE_FORK_HOLD": hold})
        w1 = fork_ready(m, t)
        open(hold, "w").close()
        seq, ch = m.spawn(t, index=2)
        wait_until(lambda: events(m.hooks(), t.pid).count("g.pre_fork") == 3,
                   what="the template in pre_fork")
        self.assertTrue(fcntl.fcntl(m.listener.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK,
                        "the shared listener is blocking while the template forks")
        beats = m.notify.lines(w1.pid).count("WATCHDOG=1")
        wait_until(lambda: m.notify.lines(w1.pid).count("WATCHDOG=1") >= beats + 3,
                   what="worker 1's heartbeats while the template forks")
        os.remove(hold)
        w2 = m.adopt(t.expect("spawned")["pid"], ch)
        m.welcome(w2, index=2, generation=1)
        m.notify.wait_for(w2.pid, "READY=1")
        self.assertEqual(answering(m, {t.pid, w1.pid, w2.pid}), {t.pid, w1.pid, w2.pid})
        self.assertTrue(fcntl.fcntl(m.listener.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)


@unittest.skipUnless(HAVE_GUNICORN, "gunicorn is missing")
class SharedListenerTest(unittest.TestCase):
    def test_a_blocking_mode_is_the_objects_own(self):
        from forkd.gunicorn.workers import SharedListener
        shared = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(shared.close)
        s = SharedListener(fileno=os.dup(shared.fileno()))
        self.addCleanup(s.close)
        s.setblocking(True)  # as gevent's worker does, or socket.dup() with settimeout(None)
        self.assertTrue(fcntl.fcntl(shared.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)
        self.assertIsNone(s.gettimeout())
        got = []
        accepting = threading.Thread(target=lambda: got.append(s.accept()), daemon=True)
        accepting.start()
        client = socket.create_connection(s.getsockname())
        self.addCleanup(client.close)
        accepting.join(10)
        self.assertEqual(len(got), 1, "the blocking accept() did not return the connection")
        got[0][0].close()
        s.settimeout(0.05)
        self.assertRaises(socket.timeout, s.accept)
        s.setblocking(False)
        self.assertRaises(BlockingIOError, s.accept)
        self.assertTrue(fcntl.fcntl(shared.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)


@unittest.skipUnless(HAVE_GUNICORN, "gunicorn is missing")
class FinishRequestTest(unittest.TestCase):
    """gunicorn's threaded worker, in this process: the step after a request answered
    keep-alive, when a stop lands in the middle of it."""

    def test_a_stop_during_finish_request_keeps_the_connection(self):
        import selectors
        from concurrent import futures
        from gunicorn.config import Config
        from gunicorn.glogging import Logger
        from gunicorn.workers.gthread import TConn, ThreadWorker
        from forkd.gunicorn import workers

        cfg = Config()
        cls = workers.worker_class_for(ThreadWorker, runner=None)
        w = cls(0, os.getpid(), [], None, 30, cfg, Logger(cfg))
        self.addCleanup(w.tmp.close)
        legacy = workers._legacy_threaded(w)
        w._lock = threading.RLock()
        sel = selectors.DefaultSelector()
        self.addCleanup(sel.close)
        w.poller = workers._LoopPoller(sel) if legacy else sel
        server, client = socket.socketpair()
        self.addCleanup(client.close)
        conn = TConn(cfg, server, ("127.0.0.1", 1), ("127.0.0.1", 2))
        self.addCleanup(conn.close)

        class StopLandsMeanwhile(futures.Future):
            # forkd's finish_request has seen alive; gunicorn's reads it again after this.
            def result(self, timeout=None):
                w.alive = False
                return super().result(timeout)

        fs = StopLandsMeanwhile()
        if legacy:
            fs.set_result((True, conn))
            w.finish_request(fs)
            kept = w._keep
        else:
            fs.set_result(True)
            w.finish_request(conn, fs)
            kept = w.keepalived_conns
        self.assertFalse(w.alive)
        self.assertIn(conn, kept, "the connection answered keep-alive is not kept for the drain")
        self.assertNotEqual(server.fileno(), -1)
        client.setblocking(False)
        with self.assertRaises(BlockingIOError, msg="the server closed the connection"):
            client.recv(1)


class PauseTest(GunicornTestCase):
    def test_pause_waits_for_in_flight_and_drains_idle_connections(self):
        m = self.master()
        t = m.boot(GTHREAD)
        talker, silent = Client(m.port), Client(m.port)
        for c in (talker, silent):
            self.assertEqual(c.get("/")[0].status, 200)
        slow = Client(m.port).get_in_thread("/slow?ms=700")
        m.wait_began("/slow")
        seq = m.next_seq()
        stop_and_wait_for_the_loop_to_end(m, t.pid, lambda: t.send({"op": "pause", "seq": seq}))
        # A keep-alive connection that sends its next request while the template drains gets an
        # answer, with Connection: close.
        resp, data = talker.get("/again")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Connection"), "close")
        self.assertIn(b"path=/again", data)
        # The silent one is closed once its keep-alive timeout (2 s) is over; then paused.
        self.assertTrue(silent.closed_by_server())
        self.assertEqual(t.expect("paused")["seq"], seq)
        paused_at = time.monotonic()
        self.assertEqual(slow.join()[0], 200)
        self.assertGreaterEqual(paused_at - slow.started_at, 0.7)
        self.assertEqual(events(m.hooks(), t.pid)[-1], "before_refork")

        # While paused nothing is served; resume serves what waited.
        waiting = socket.create_connection(("127.0.0.1", m.port), timeout=5)
        waiting.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        waiting.settimeout(0.4)
        with self.assertRaises(socket.timeout):
            waiting.recv(1)
        waiting.settimeout(5)
        m.request("resume", t, "resumed")
        data = b""
        while True:
            chunk = waiting.recv(4096)
            if not chunk:
                break
            data += chunk
        waiting.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"), data)
        self.assertIn(b"path=/late", data)
        self.assertEqual(events(m.hooks(), t.pid)[-2:], ["before_refork", "after_refork"])
        # post_worker_init ran once, not again in the second serving period.
        self.assertEqual(events(m.hooks(), t.pid).count("g.post_worker_init"), 1)
        for c in (talker, silent, slow):
            c.close()

    def test_refork_pause_spawns_resume(self):
        m = self.master()
        t = m.boot(GTHREAD)
        m.request("pause", t, "paused")
        spawns = [m.spawn(t, index=i, generation=2) for i in (1, 2)]
        workers = []
        for i, (seq, ch) in zip((1, 2), spawns):
            spawned = t.expect("spawned")
            self.assertEqual(spawned["seq"], seq)
            w = m.adopt(spawned["pid"], ch)
            self.assertEqual(w.expect("hello")["pid"], w.pid)
            w.send({"op": "welcome", "worker": i, "generation": 2})
            m.notify.wait_for(w.pid, "READY=1")
            workers.append(w)
        m.request("resume", t, "resumed")
        hooks = m.hooks()
        self.assertEqual(events(hooks, t.pid)[-12:], [
            "before_refork",
            "g.pre_fork", "prepare2", "prepare1", "parent1", "parent2",
            "g.pre_fork", "prepare2", "prepare1", "parent1", "parent2",
            "after_refork"])
        for w in workers:
            self.assertEqual(events(hooks, w.pid), [
                "child1", "child2", "boot", "g.post_fork", "g.post_worker_init"])
            self.assertEqual(ppid_of(w.pid), os.getpid())
        self.assertEqual(get(m.port)[0], 200)
        # Nobody else holds a copy of a worker's end of its channel: once it dies, EOF.
        os.kill(t.pid, signal.SIGKILL)
        waitpid_timeout(t.pid)
        self.assertEqual(t.recv(timeout=5), (None, []))
        for w in reversed(workers):
            os.kill(w.pid, signal.SIGKILL)
            waitpid_timeout(w.pid)
            self.assertEqual(w.recv(timeout=5), (None, []))


class StopTest(GunicornTestCase):
    def test_sigterm_finishes_the_request_in_flight(self):
        m = self.master()
        t = m.boot(GTHREAD)
        slow = Client(m.port).get_in_thread("/slow?ms=700")
        m.wait_began("/slow")
        os.kill(t.pid, signal.SIGTERM)
        status, body = slow.join()
        self.assertEqual(status, 200, body)
        st = waitpid_timeout(t.pid)
        self.assertEqual(os.WEXITSTATUS(st), 0, t.read_log())
        m.notify.wait_for(t.pid, "STOPPING=1")
        slow.close()

    def test_sigterm_answers_the_next_request_on_an_idle_connection(self):
        for args in (GTHREAD, SYNC):
            with self.subTest(worker="sync" if args is SYNC else "gthread"):
                m = self.master()
                t = m.boot(args)
                idle = Client(m.port)
                resp, _ = idle.get("/")
                self.assertEqual(resp.status, 200)
                if args is SYNC:
                    # gunicorn's sync worker never keeps a connection open.
                    self.assertEqual(resp.getheader("Connection"), "close")
                    os.kill(t.pid, signal.SIGTERM)
                else:
                    # A request in flight keeps the worker draining after its loop has ended;
                    # the idle connection's next request comes then, and gets its answer.
                    release = os.path.join(m.dir, "release")
                    slow = Client(m.port).get_in_thread("/wait?file=" + release)
                    wait_until(lambda: "waiting" in events(m.hooks(), t.pid),
                               what="the request in flight")
                    stop_and_wait_for_the_loop_to_end(
                        m, t.pid, lambda: os.kill(t.pid, signal.SIGTERM))
                    nxt = idle.get_in_thread("/next")
                    with open(release, "w"):
                        pass
                    self.assertEqual(slow.join()[0], 200)
                    self.assertEqual(nxt.join()[0], 200)
                    self.assertEqual(nxt.response.getheader("Connection"), "close")
                    slow.close()
                self.assertEqual(os.WEXITSTATUS(waitpid_timeout(t.pid, 10)), 0)
                idle.close()

    def test_sigterm_answers_idle_connections_while_a_request_is_in_flight(self):
        # gthread: the next request of an idle keep-alive connection, sent once the loop has ended
        # while a request is still in flight, is answered at once, not after that request (which
        # may outlast the keep-alive timeout: the connection was then closed unanswered, and wrk
        # counted a read error, or, once it was answered late, a timeout).
        m = self.master()
        t = m.boot(GTHREAD, env={"TEST_KEEPALIVE": "1"})
        idle = Client(m.port)
        self.assertEqual(idle.get("/")[0].status, 200)
        release = os.path.join(m.dir, "release")
        slow = Client(m.port).get_in_thread("/wait?file=" + release)
        wait_until(lambda: "waiting" in events(m.hooks(), t.pid), what="the request in flight")
        # The request comes once the loop has ended.
        stop_and_wait_for_the_loop_to_end(m, t.pid, lambda: os.kill(t.pid, signal.SIGTERM))
        status, data = idle.get_in_thread("/next").join()
        self.assertEqual(status, 200, data)
        self.assertTrue(slow.thread.is_alive(), "the slow request ended first")
        with open(release, "w"):
            pass
        self.assertEqual(slow.join()[0], 200)
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(t.pid, 10)), 0)
        idle.close()
        slow.close()

    def test_sigterm_with_a_connection_that_sent_nothing(self):
        # The forked worker of the report: a client had a connection open on it that carried no
        # request yet (a connection its HTTP client dialed ahead and parked). After SIGTERM, the
        # requests sent on the worker's idle keep-alive connections went unanswered for the
        # whole graceful timeout, and the worker stayed up until that connection was closed.
        m = self.master()
        t = m.boot(GTHREAD[:-1] + ["--graceful-timeout", "60", "--keep-alive", "30",
                                   GTHREAD[-1]])
        seq, ch = m.spawn(t, index=1)
        pid = t.expect("spawned")["pid"]
        w = m.adopt(pid, ch)
        m.welcome(w, index=1)
        m.notify.wait_for(pid, "READY=1")
        m.request("pause", t, "paused")  # the forked worker alone serves
        idle = Client(m.port)
        resp, body = idle.get("/")
        self.assertIn(b"pid=%d " % pid, body)
        silent = Client(m.port)
        silent.conn.connect()
        self.assertEqual(get(m.port)[0], 200)  # accepted after the silent one: the worker has it
        inode = _server_side_inode(silent)
        self.assertTrue(inode, "the worker has not accepted the silent connection")
        stop_and_wait_for_the_loop_to_end(m, pid, lambda: os.kill(pid, signal.SIGTERM))
        # The drain keeps the silent connection waiting for its first request in a poller, with
        # the idle one, holding no thread: forkd's drain's (gunicorn 21 to 23 forgot it in the
        # poller it closed, which closed it unanswered), or gunicorn's own once a thread has
        # waited 5 s for its first bytes (gunicorn 26, which closed it then while draining). Its
        # request comes after that.
        wait_until(lambda: waits_in_a_poller(pid, inode),
                   what="the silent connection to wait in the worker's poller")
        resp, _ = idle.get("/next")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Connection"), "close")
        resp, _ = silent.get("/first")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Connection"), "close")
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(pid)), 0, t.read_log())
        idle.close()
        silent.close()

    def test_sigterm_before_gunicorn_handlers_stops_a_forked_worker(self):
        # Until gunicorn's init_signals, a new worker has the template's handlers: a stop they
        # took was lost, and the worker served on until forkd's shutdown timeout killed it.
        for where in ("after_fork_child", "init_signals"):
            with self.subTest(where):
                m = self.master()
                t = m.boot(GTHREAD, env={"TEST_SIGTERM_IN": where})
                seq, ch = m.spawn(t, index=1)
                w = m.adopt(t.expect("spawned")["pid"], ch)
                m.welcome(w, index=1)
                self.assertEqual(os.WEXITSTATUS(waitpid_timeout(w.pid)), 0)
                self.assertEqual(events(m.hooks(), w.pid)[-1], "g.worker_exit")
                self.assertEqual(get(m.port)[0], 200)  # the template serves on

    def test_sigterm_before_gunicorn_handlers_stops_the_template_after_a_spawn(self):
        # After a spawn the template serves again with a new gunicorn worker; a stop signal that
        # came before that worker's handlers were in went to the template's own (which only
        # remember it), and the template served on until forkd's shutdown timeout killed it.
        for args in (GTHREAD, SYNC):
            with self.subTest(args[-2]):
                m = self.master()
                t = m.boot(args, env={"TEST_SIGTERM_IN": "template_init_signals"})
                seq, ch = m.spawn(t, index=1)
                m.adopt(t.expect("spawned")["pid"], ch)
                self.assertEqual(os.WEXITSTATUS(waitpid_timeout(t.pid)), 0, t.read_log())
                self.assertEqual(events(m.hooks(), t.pid)[-2:], ["g.worker_exit", "g.on_exit"])

    def test_forked_worker_stops_on_eof(self):
        m = self.master()
        t = m.boot(GTHREAD)
        w = fork_ready(m, t)
        w.channel.close()
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(w.pid)), 0)
        self.assertTrue(alive(t.pid))

    def test_max_requests_ends_the_worker_cleanly(self):
        m = self.master()
        w = m.boot(["-m", "forkd.gunicorn", "-k", "gthread", "--max-requests", "3",
                    "hookapp:app"])
        c = Client(m.port)
        for i in range(3):
            resp, _ = c.get("/")
            self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Connection"), "close")
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(w.pid)), 0)
        m.notify.wait_for(w.pid, "STOPPING=1")
        m.notify.wait_for(w.pid, "X_FORKD_REQUESTS=3")
        c.close()


class ExecModeTest(GunicornTestCase):
    def test_exec_mode_ready_and_master_gone(self):
        """No FORKD_CONTROL_FD: READY=1 without handshake; the worker exits when its parent (the
        master) does."""
        m = self.master()
        launcher = m.start(["-c", (
            "import os, sys, time\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.environ['LISTEN_PID'] = str(os.getpid())\n"
            "    os.execv(sys.executable, [sys.executable] + %r)\n"
            "with open(os.environ['HOOK_LOG'] + '.tmp', 'w') as f: f.write(str(pid))\n"
            "os.rename(os.environ['HOOK_LOG'] + '.tmp', os.environ['HOOK_LOG'] + '.pid')\n"
            "time.sleep(60)\n") % (GTHREAD,)], control=False)
        pidfile = m.hook_log + ".pid"

        def read_pid():
            try:
                with open(pidfile) as f:
                    return int(f.read() or 0)
            except (OSError, ValueError):
                return 0
        pid = wait_until(read_pid, what="worker pid")
        m.pids.append(pid)
        m.notify.wait_for(pid, "READY=1")
        self.assertEqual(get(m.port)[0], 200)
        # Exec mode: every gunicorn hook runs in the worker, pre_fork and post_fork included.
        self.assertEqual(events(m.hooks(), pid), [
            "g.on_starting", "g.when_ready", "g.pre_fork", "g.post_fork", "g.post_worker_init"])
        self.assertEqual(hook_data(m.hooks(), pid, "g.post_fork"),
                         {"server_pid": pid, "worker_pid": pid})
        os.kill(launcher.pid, signal.SIGKILL)
        waitpid_timeout(launcher.pid)
        m.notify.wait_for(pid, "STOPPING=1")
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(pid)), 0)


@unittest.skipUnless(HAVE_GUNICORN, "gunicorn is missing")
class CommandLineTest(unittest.TestCase):
    def run_gunicorn(self, args, env=None, cwd=None):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(EXTRA_PATH + [SDK_DIR, APPS]),
                   **(env or {}))
        for k in ("LISTEN_FDS", "LISTEN_PID", "NOTIFY_SOCKET", "FORKD_WORKER", "GUNICORN_CMD_ARGS"):
            if env.get(k) and k not in (env or {}):
                del env[k]
        return subprocess.run([PY, "-m", "forkd.gunicorn"] + args, env=env, cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)

    def test_forkd_options_are_refused_with_what_to_use(self):
        for args, env, want in (
            (["-w", "4", "hookapp:app"], None, "-w/--workers on the command line is forkd's: "
                                               "set workers = N in forkd.hcl"),
            (["--bind", "0.0.0.0:80", "hookapp:app"], None, "-b/--bind on the command line is "
                                                            "forkd's: add a listen block"),
            (["--reload", "hookapp:app"], None, "--reload on the command line is forkd's: run "
                                                "forkctl reload"),
            (["--daemon", "hookapp:app"], None, "-D/--daemon on the command line is forkd's"),
            (["--pid", "/tmp/x.pid", "hookapp:app"], None, "-p/--pid on the command line is forkd's"),
            (["hookapp:app"], {"GUNICORN_CMD_ARGS": "--workers 3"},
             "-w/--workers in GUNICORN_CMD_ARGS is forkd's"),
        ):
            with self.subTest(args=args, env=env):
                proc = self.run_gunicorn(args, env)
                out = proc.stdout.decode()
                self.assertEqual(proc.returncode, 2, out)
                self.assertIn("forkd-gunicorn: " + want, out)

    def test_forkd_settings_in_a_config_file_are_refused(self):
        d = self.enterContext_tmp()
        with open(os.path.join(d, "gunicorn.conf.py"), "w") as f:
            f.write('workers = 4\nbind = ["0.0.0.0:8000"]\nbacklog = 64\nthreads = 2\n')
        proc = self.run_gunicorn(["hookapp:app"], cwd=d)
        out = proc.stdout.decode()
        self.assertEqual(proc.returncode, 2, out)
        self.assertIn("forkd-gunicorn: workers in %s is forkd's" % os.path.join(d, "gunicorn.conf.py"),
                      out)
        self.assertIn("forkd-gunicorn: bind in %s is forkd's" % os.path.join(d, "gunicorn.conf.py"),
                      out)

    def test_check_config_and_no_listeners(self):
        proc = self.run_gunicorn(["--check-config", "hookapp:app"])
        self.assertEqual(proc.returncode, 0, proc.stdout.decode())
        proc = self.run_gunicorn(["--check-config", "nosuchmodule:app"])
        self.assertEqual(proc.returncode, 1, proc.stdout.decode())
        self.assertIn("No module named 'nosuchmodule'", proc.stdout.decode())
        proc = self.run_gunicorn(["hookapp:app"])
        self.assertEqual(proc.returncode, 1, proc.stdout.decode())
        self.assertIn("no listening sockets (LISTEN_FDS): run it under forkd", proc.stdout.decode())

    def enterContext_tmp(self):
        import shutil
        import tempfile
        d = tempfile.mkdtemp(prefix="forkd-gunicorn-")
        self.addCleanup(shutil.rmtree, d, ignore_errors=True)
        return d


if __name__ == "__main__":
    unittest.main()
