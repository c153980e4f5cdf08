"""Molds (docs/protocol.md) in forkd.gunicorn against a fake master: a serving worker asked for a
mold forks it at once, from its control-channel thread, with a request in flight; the mold drops
the connections and the gunicorn worker it inherited, says hello as a mold, readies itself as a
template and forks workers that serve. And mold mode's worker 0, told not to serve. Needs
gunicorn for the interpreter running the tests (/usr/bin/python3 on Debian 12)."""

import gc
import os
import select
import signal
import socket
import unittest

from .helpers import Notifications, ppid_of, wait_until, waitpid_timeout
from .test_gunicorn import GTHREAD, SYNC, Client, GunicornTestCase, events, fork_ready, get

from forkd import protocol, runtime


def socket_inodes(pid):
    out = set()
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            link = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[len("socket:["):-1])
    return out


def connections_held(pid, port):
    """How many established TCP connections to port pid holds a descriptor of."""
    inodes = socket_inodes(pid)
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port and f[9] in inodes:
                n += 1
    return n


def eventpolls(pid):
    n = 0
    for name in os.listdir("/proc/%d/fd" % pid):
        try:
            n += os.readlink("/proc/%d/fd/%s" % (pid, name)) == "anon_inode:[eventpoll]"
        except OSError:
            pass
    return n


def refute_served(test, port):
    """A request nobody answers for a while (nobody accepts); the socket, to read later."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /nobody HTTP/1.1\r\nHost: x\r\n\r\n")
    r, _, _ = select.select([s], [], [], 0.5)
    test.assertEqual(r, [], "something served")
    return s


def read_response(s):
    s.settimeout(10)
    data = b""
    while b"path=" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode()


def ask_mold(m, w, generation, notify_socket=""):
    """Send mold to w; returns (the molded reply, the master's end of the mold's channel)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    seq = m.next_seq()
    w.send({"op": "mold", "seq": seq, "generation": generation, "notify_socket": notify_socket},
           [theirs.fileno()])
    theirs.close()
    reply = w.expect("molded")
    m.test.assertEqual(reply["seq"], seq)
    ch = protocol.Channel(ours)
    m.channels.append(ch)
    return reply, ch


def fork_from(m, template, index, generation, notify):
    seq, ch = m.spawn(template, index=index, generation=generation)
    w = m.adopt(template.expect("spawned")["pid"], ch)
    m.welcome(w, index=index, generation=generation)
    notify.wait_for(w.pid, "READY=1")
    return w


class DropConnectionsTest(unittest.TestCase):
    def test_only_connections_accepted_on_a_listener_are_closed_through_their_objects(self):
        listener = socket.create_server(("127.0.0.1", 0))
        other = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        self.addCleanup(other.close)
        client = socket.create_connection(listener.getsockname())
        outgoing = socket.create_connection(other.getsockname())  # the app's, say a database's
        conn, _ = listener.accept()
        served, _ = other.accept()
        for s in (client, outgoing, served):
            self.addCleanup(s.close)
        number = conn.fileno()
        self.assertEqual(runtime.drop_connections([listener]), 1)
        # Detached, so that its finalizer does not close the number again once it is reused.
        self.assertEqual(conn.fileno(), -1)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        self.assertIn(number, (r, w))
        del conn
        gc.collect()
        os.write(w, b"x")
        self.assertEqual(os.read(r, 1), b"x")
        # The listener and the connections that are not the listener's are left alone; the
        # client's end of the dropped one is still open (close(2), not shutdown(2), which this
        # process was the last to hold: end of file).
        self.assertEqual(client.recv(1), b"")
        outgoing.sendall(b"y")
        self.assertEqual(served.recv(1), b"y")
        self.assertGreaterEqual(listener.fileno(), 0)


class MoldTest(GunicornTestCase):
    def serving_source(self, m, args):
        """A worker forked from worker 0, serving alone (worker 0 stopped)."""
        t = m.boot(args)
        source = fork_ready(m, t, index=1)
        os.kill(t.pid, signal.SIGTERM)
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(t.pid)), 0)
        return source

    def test_a_serving_worker_forks_a_mold_with_a_request_in_flight(self):
        m = self.master(watchdog_usec=2000000)
        source = self.serving_source(m, GTHREAD)
        idle = Client(m.port)
        resp, body = idle.get("/")
        self.assertIn("pid=%d" % source.pid, body.decode())
        release = os.path.join(m.dir, "release")
        in_flight = Client(m.port).get_in_thread("/wait?file=" + release)
        wait_until(lambda: "waiting" in events(m.hooks(), source.pid), what="the request in flight")
        self.assertEqual(connections_held(source.pid, m.port), 2)

        sink = Notifications()
        self.addCleanup(sink.close)
        molded, ch = ask_mold(m, source, 2, notify_socket=sink.address)
        mold = m.adopt(molded["pid"], ch)
        # No quiesce: the request is still in flight, waiting for the file.
        self.assertTrue(in_flight.thread.is_alive(), "the mold waited for the request in flight")
        self.assertNotEqual(mold.pid, source.pid)
        self.assertEqual(ppid_of(mold.pid), os.getpid(), "the mold is the master's child")
        self.assertEqual(os.getpgid(mold.pid), mold.pid)
        hello = mold.expect("hello")
        self.assertEqual({k: hello.get(k) for k in ("pid", "fork", "mold")},
                         {"pid": mold.pid, "fork": True, "mold": True})
        mold.send({"op": "welcome", "worker": 0, "generation": 2, "serve": False})
        # Its notifications go to the socket the mold message named, on its own heartbeats.
        sink.wait_for(mold.pid, "READY=1")
        sink.wait_for(mold.pid, "WATCHDOG=1", timeout=3)
        self.assertNotIn("READY=1", m.notify.lines(mold.pid))

        # It closed (close(2), not shutdown(2)) the connections and the poller it inherited.
        os.system("ls -l /proc/%d/fd /proc/%d/fd" % (mold.pid, source.pid)); self.assertEqual(connections_held(mold.pid, m.port), 0)
        self.assertLess(eventpolls(mold.pid), eventpolls(source.pid))
        self.assertEqual(connections_held(source.pid, m.port), 2)
        with open(release, "w"):
            pass
        status, data = in_flight.join()
        self.assertEqual(status, 200)
        self.assertIn("pid=%d" % source.pid, data.decode())
        resp, body = idle.get("/")
        self.assertIn("pid=%d" % source.pid, body.decode(),
                      "the keep-alive connection of the source still works")

        # The fork's hooks in the source (which went on serving); in the mold, the child hooks,
        # after_mold and before_refork, once; no after_worker_boot, no gunicorn hook yet.
        hooks = m.hooks()
        self.assertEqual(events(hooks, source.pid)[-5:],
                         ["waiting", "prepare2", "prepare1", "parent1", "parent2"])
        self.assertEqual(events(hooks, mold.pid), ["child1", "child2", "after_mold", "before_refork"])
        after = [d for p, e, d in hooks if p == mold.pid and e == "after_mold"][0]
        self.assertEqual(after["env"], {
            "LISTEN_PID": str(mold.pid), "FORKD_WORKER": "0", "FORKD_GENERATION": "2",
            "NOTIFY_SOCKET": sink.address, "WATCHDOG_PID": str(mold.pid)})
        self.assertEqual([after[k] for k in ("template", "mold", "serving", "index", "generation",
                                             "listeners")], [True, True, False, 0, 2, 1])

        # pause and resume are answered at once, and run no refork hook again.
        m.request("pause", mold, "paused")
        m.request("resume", mold, "resumed")
        idle.close()
        in_flight.close()
        os.kill(source.pid, signal.SIGTERM)
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(source.pid)), 0)
        # The mold never accepts.
        waiting = refute_served(self, m.port)
        self.addCleanup(waiting.close)

        # A worker forked from the mold: a fresh gunicorn worker, its own heartbeats, the heap it
        # inherited frozen by the mold's readying.
        w = fork_from(m, mold, 1, 2, sink)
        hooks = m.hooks()
        self.assertEqual(events(hooks, w.pid), [
            "child1", "child2", "boot", "g.post_fork", "g.post_worker_init"])
        child1 = [d for p, e, d in hooks if p == w.pid and e == "child1"][0]
        self.assertGreater(child1["frozen"], 0)
        self.assertEqual(ppid_of(w.pid), os.getpid())
        sink.wait_for(w.pid, "WATCHDOG=1", timeout=3)
        self.assertIn("pid=%d worker=1 generation=2 path=/nobody" % w.pid, read_response(waiting))
        self.assertIn("pid=%d" % w.pid, get(m.port)[1])
        self.assertEqual(events(hooks, mold.pid), [
            "child1", "child2", "after_mold", "before_refork",
            "g.pre_fork", "prepare2", "prepare1", "parent1", "parent2"])
        # Stops: the worker forked from the mold, then the mold, each with status 0.
        w.channel.close()
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(w.pid)), 0)
        os.kill(mold.pid, signal.SIGTERM)
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(mold.pid)), 0)
        sink.wait_for(mold.pid, "STOPPING=1")

    def test_a_sync_worker_forks_a_mold(self):
        m = self.master()
        source = self.serving_source(m, SYNC)
        idle = Client(m.port)
        self.assertEqual(idle.get("/")[0].status, 200)
        molded, ch = ask_mold(m, source, 2)
        mold = m.adopt(molded["pid"], ch)
        self.assertIs(mold.expect("hello")["mold"], True)
        mold.send({"op": "welcome", "worker": 0, "generation": 2, "serve": False})
        m.notify.wait_for(mold.pid, "READY=1")
        os.system("ls -l /proc/%d/fd /proc/%d/fd" % (mold.pid, source.pid)); self.assertEqual(connections_held(mold.pid, m.port), 0)
        self.assertEqual(idle.get("/")[0].status, 200)
        idle.close()
        os.kill(source.pid, signal.SIGTERM)
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(source.pid)), 0)
        w = fork_from(m, mold, 1, 2, m.notify)
        self.assertIn("pid=%d worker=1 generation=2" % w.pid, get(m.port)[1])

    def test_a_serving_worker_0_forks_a_mold_and_serves_on(self):
        # Template mode's worker 0 serves too: its reader hands the mold to the same fork.
        m = self.master()
        t = m.boot(GTHREAD)
        molded, ch = ask_mold(m, t, 2)
        mold = m.adopt(molded["pid"], ch)
        self.assertIs(mold.expect("hello")["mold"], True)
        mold.send({"op": "welcome", "worker": 0, "generation": 2, "serve": False})
        m.notify.wait_for(mold.pid, "READY=1")
        self.assertIn("pid=%d worker=0" % t.pid, get(m.port)[1])
        self.assertEqual(events(m.hooks(), mold.pid), ["child1", "child2", "after_mold", "before_refork"])
        # Worker 0 still forks as the template of its own generation.
        fork_ready(m, t, index=1)
        os.kill(t.pid, signal.SIGTERM)
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(t.pid)), 0)
        w = fork_from(m, mold, 2, 2, m.notify)
        wait_until(lambda: "pid=%d" % w.pid in get(m.port)[1] or None, what="the mold's worker")

    def test_worker_0_welcomed_not_to_serve_is_a_template_that_never_accepts(self):
        m = self.master()
        t = m.start(GTHREAD)
        t.expect("hello")
        t.send({"op": "welcome", "worker": 0, "generation": 1, "serve": False})
        m.notify.wait_for(t.pid, "READY=1")
        waiting = refute_served(self, m.port)
        self.addCleanup(waiting.close)
        self.assertEqual(events(m.hooks(), t.pid),
                         ["g.on_starting", "g.when_ready", "after_mold", "before_refork"])
        m.request("pause", t, "paused")
        w = fork_ready(m, t, index=1)
        m.request("resume", t, "resumed")
        self.assertIn("pid=%d worker=1" % w.pid, read_response(waiting))
        self.assertEqual(events(m.hooks(), t.pid), [
            "g.on_starting", "g.when_ready", "after_mold", "before_refork",
            "g.pre_fork", "prepare2", "prepare1", "parent1", "parent2"])
        t.channel.close()
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(t.pid)), 0)
        self.assertEqual(events(m.hooks(), t.pid)[-1], "g.on_exit")

    def test_a_mold_request_that_cannot_be_met_is_answered(self):
        m = self.master()
        t = m.boot(GTHREAD)
        seq = m.next_seq()
        t.send({"op": "mold", "seq": seq, "generation": 2})  # no descriptor
        reply = t.expect("mold_failed")
        self.assertEqual(reply["seq"], seq)
        self.assertIn("descriptors", reply["error"])
        for fields in ({"generation": "two"}, {"generation": 2, "notify_socket": "relative/path"}):
            seq = m.next_seq()
            t.send(dict({"op": "mold", "seq": seq}, **fields))
            self.assertEqual(t.expect("error")["seq"], seq)
        self.assertEqual(get(m.port)[0], 200, "the worker serves on")
