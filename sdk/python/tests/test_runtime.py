"""The runtime (forkd.serve through the WSGI runner) against a fake master: handshake, spawn,
pause/resume, hooks, graceful stop, master gone, versions."""

import http.client
import os
import signal
import socket
import threading
import time

from .helpers import (MasterTestCase, alive, ppid_of, wait_until, waitpid_timeout)

WSGI = ["-m", "forkd.wsgi", "--threads", "4", "hookapp:app"]


class Client:
    """An HTTP/1.1 keep-alive client, run in a thread when asked."""

    def __init__(self, port, timeout=10):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.results = []
        self.started_at = None
        self.done_at = None
        self.thread = None

    def get(self, path, method="GET", body=None, headers=None):
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        return resp, data

    def get_in_thread(self, path):
        self.started_at = time.monotonic()

        def run():
            try:
                resp, data = self.get(path)
                self.results.append((resp.status, data))
            except Exception as e:  # reported by the test's assertions
                self.results.append((None, repr(e)))
            self.done_at = time.monotonic()
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def join(self, timeout=10):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "request did not finish"
        return self.results[0]

    def close(self):
        self.conn.close()


def get(port, path="/"):
    c = Client(port)
    try:
        resp, data = c.get(path)
        return resp.status, data.decode()
    finally:
        c.close()


def events(hooks, pid):
    return [e for p, e, _ in hooks if p == pid]


class HandshakeTest(MasterTestCase):
    def test_hello_then_ready_only_after_welcome(self):
        m = self.master()
        w = m.start(WSGI)
        hello = w.expect("hello")
        self.assertEqual(hello["v"], 1)
        self.assertEqual(hello["pid"], w.pid)
        self.assertIs(hello["fork"], True)
        self.assertTrue(hello["sdk"].startswith("forkd-python/"))
        time.sleep(0.3)
        self.assertNotIn("READY=1", m.notify.lines(w.pid))
        w.send({"op": "welcome", "worker": 0, "generation": 3})
        m.notify.wait_for(w.pid, "READY=1")
        status, body = get(m.port)
        self.assertEqual(status, 200)
        self.assertIn("pid=%d worker=0 generation=3" % w.pid, body)
        boot = [d for p, e, d in m.hooks() if e == "boot"]
        self.assertEqual(len(boot), 1)
        self.assertIs(boot[0]["template"], True)
        self.assertEqual(boot[0]["env"]["LISTEN_PID"], str(w.pid))
        self.assertEqual(boot[0]["listeners"], 1)

    def test_refuse_exits_1_with_the_reason(self):
        m = self.master()
        w = m.start(WSGI)
        w.expect("hello")
        w.send({"op": "refuse", "error": "this master speaks protocol 7"})
        w.channel.close()
        status = waitpid_timeout(w.pid)
        self.assertEqual(os.WEXITSTATUS(status), 1)
        self.assertIn("this master speaks protocol 7", w.read_log())
        self.assertNotIn("READY=1", m.notify.lines(w.pid))

    def test_protocol_version_mismatch(self):
        m = self.master()
        w = m.start(WSGI, protocol_version="2")
        status = waitpid_timeout(w.pid)
        self.assertTrue(os.WIFEXITED(status))
        self.assertEqual(os.WEXITSTATUS(status), 1)
        self.assertIn("forkd-python speaks protocol 1, this forkd master speaks 2: upgrade the SDK",
                      w.read_log())

    def test_eof_on_the_channel_stops_the_worker(self):
        m = self.master()
        w = m.boot(WSGI)
        w.channel.close()
        status = waitpid_timeout(w.pid)
        self.assertEqual(os.WEXITSTATUS(status), 0, w.read_log())
        m.notify.wait_for(w.pid, "STOPPING=1")

    def test_malformed_messages_are_answered_not_fatal(self):
        m = self.master()
        w = m.boot(WSGI)
        w.channel.sock.send(b"\xff not json")
        w.channel.sock.send(b"[1, 2]")
        w.channel.sock.send(b'{"v": 1, "seq": 41}')
        reply = w.expect("error")
        self.assertEqual(reply["seq"], 41)
        w.channel.sock.send(b'{"v": 1, "op": "teleport", "seq": 42}')
        reply = w.expect("error")
        self.assertEqual(reply["seq"], 42)
        w.channel.sock.send(b'{"v": 1, "op": "spawn", "seq": 43, "worker": "x"}')
        reply = w.expect("error")
        self.assertEqual(reply["seq"], 43)
        # Still alive and answering.
        m.request("pause", w, "paused")
        m.request("resume", w, "resumed")
        self.assertEqual(get(m.port)[0], 200)


class SpawnTest(MasterTestCase):
    def test_spawn_makes_a_worker_reparented_to_the_master(self):
        m = self.master(watchdog_usec=2000000)
        t = m.boot(WSGI)
        seq, ch = m.spawn(t, index=1, generation=1)
        spawned = t.expect("spawned")
        self.assertEqual(spawned["seq"], seq)
        pid = spawned["pid"]
        w = m.adopt(pid, ch)
        self.assertNotEqual(pid, t.pid)
        # The grandchild is re-parented to the (subreaper) master, not the template.
        self.assertEqual(ppid_of(pid), os.getpid())
        hello = w.expect("hello")
        self.assertEqual(hello["pid"], pid)
        self.assertIs(hello["fork"], False)
        time.sleep(0.2)
        self.assertNotIn("READY=1", m.notify.lines(pid))
        w.send({"op": "welcome", "worker": 1, "generation": 1})
        m.notify.wait_for(pid, "READY=1")
        m.notify.wait_for(pid, "WATCHDOG=1", timeout=3)

        hooks = m.hooks()
        boot = {p: d for p, e, d in hooks if e == "boot"}
        self.assertEqual(boot[pid]["env"], {
            "LISTEN_PID": str(pid), "FORKD_WORKER": "1", "FORKD_GENERATION": "1",
            "FORKD_CONTROL_FD": boot[pid]["env"]["FORKD_CONTROL_FD"], "WATCHDOG_PID": str(pid)})
        self.assertNotEqual(boot[pid]["env"]["FORKD_CONTROL_FD"], "4")
        self.assertIs(boot[pid]["template"], False)
        self.assertEqual(boot[pid]["index"], 1)
        self.assertEqual(boot[pid]["listeners"], 1)
        # Hook order: prepare in reverse, parent in order, in the template; child hooks and boot
        # once in the worker; nothing in the intermediate child.
        self.assertEqual(events(hooks, t.pid), ["boot", "prepare2", "prepare1", "parent1", "parent2"])
        self.assertEqual(events(hooks, pid), ["child1", "child2", "boot"])
        self.assertEqual({p for p, _, _ in hooks}, {t.pid, pid})
        child1 = [d for p, e, d in hooks if e == "child1"][0]
        self.assertEqual(child1["listen_pid"], str(pid))

        # The new worker serves on its own once the template is gone.
        os.kill(t.pid, signal.SIGTERM)
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(t.pid)), 0)
        status, body = get(m.port)
        self.assertEqual(status, 200)
        self.assertIn("pid=%d worker=1" % pid, body)

    def test_spawn_waits_for_the_request_in_flight(self):
        m = self.master()
        t = m.boot(WSGI)
        slow = Client(m.port).get_in_thread("/slow?ms=700")
        time.sleep(0.25)
        seq, ch = m.spawn(t, index=1)
        spawned = t.expect("spawned")
        got_at = time.monotonic()
        self.assertEqual(spawned["seq"], seq)
        m.adopt(spawned["pid"], ch)
        self.assertEqual(slow.join()[0], 200)
        # The request takes 700 ms in the server: spawned came after it ended.
        self.assertGreaterEqual(got_at - slow.started_at, 0.7)
        slow.close()
        # The template serves again (it paused for this spawn alone).
        self.assertEqual(get(m.port)[0], 200)

    def test_spawn_failure_is_reported(self):
        m = self.master()
        t = m.boot(WSGI)
        seq = m.next_seq()
        t.send({"op": "spawn", "seq": seq, "worker": 1, "generation": 1})  # no descriptor
        reply = t.expect("spawn_failed")
        self.assertEqual(reply["seq"], seq)
        self.assertIn("descriptors", reply["error"])

    def test_library_fork_runs_the_hooks(self):
        m = self.master()
        t = m.boot(WSGI)
        self.assertEqual(get(m.port, "/fork")[0], 200)
        hooks = m.hooks()
        self.assertEqual(events(hooks, t.pid), ["boot", "prepare2", "prepare1", "parent1", "parent2"])
        others = {p for p, _, _ in hooks} - {t.pid}
        self.assertEqual(len(others), 1)
        child = others.pop()
        self.assertEqual(events(hooks, child), ["child1", "child2", "library-child"])


class PauseTest(MasterTestCase):
    def test_pause_waits_for_in_flight_and_closes_idle_connections(self):
        m = self.master()
        t = m.boot(WSGI)
        idle = Client(m.port)
        resp, _ = idle.get("/")
        self.assertEqual(resp.status, 200)
        slow = Client(m.port).get_in_thread("/slow?ms=700")
        time.sleep(0.25)
        m.request("pause", t, "paused")
        paused_at = time.monotonic()
        self.assertEqual(slow.join()[0], 200)
        self.assertGreaterEqual(paused_at - slow.started_at, 0.7)
        # The idle keep-alive connection was closed by the server.
        idle.conn.sock.settimeout(2)
        self.assertEqual(idle.conn.sock.recv(1), b"")
        self.assertEqual(events(m.hooks(), t.pid), ["boot", "before_refork"])

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
        self.assertEqual(events(m.hooks(), t.pid), ["boot", "before_refork", "after_refork"])
        idle.close()
        slow.close()

    def test_refork_pause_spawns_resume(self):
        m = self.master()
        t = m.boot(WSGI)
        m.request("pause", t, "paused")
        # Both spawns at once: the second is queued in the template while it forks the first.
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
        self.assertEqual(events(hooks, t.pid), [
            "boot", "before_refork",
            "prepare2", "prepare1", "parent1", "parent2",
            "prepare2", "prepare1", "parent1", "parent2",
            "after_refork"])
        for w in workers:
            self.assertEqual(events(hooks, w.pid), ["child1", "child2", "boot"])
            self.assertEqual(ppid_of(w.pid), os.getpid())
        self.assertEqual(get(m.port)[0], 200)
        # Nobody else holds a copy of a worker's end of its channel (not the template, not a
        # sibling forked while that spawn was queued, not a forked worker the template's): once
        # the worker dies, the master sees EOF.
        os.kill(t.pid, signal.SIGKILL)
        waitpid_timeout(t.pid)
        self.assertEqual(t.recv(timeout=5), (None, []))
        for w in reversed(workers):
            os.kill(w.pid, signal.SIGKILL)
            waitpid_timeout(w.pid)
            self.assertEqual(w.recv(timeout=5), (None, []))


class StopTest(MasterTestCase):
    def test_sigterm_finishes_the_request_in_flight(self):
        m = self.master()
        t = m.boot(WSGI)
        slow = Client(m.port).get_in_thread("/slow?ms=700")
        time.sleep(0.25)
        os.kill(t.pid, signal.SIGTERM)
        m.notify.wait_for(t.pid, "STOPPING=1")
        os.kill(t.pid, signal.SIGTERM)  # absorbed
        status, body = slow.join()
        self.assertEqual(status, 200, body)
        self.assertIn(b"path=/slow", body)
        st = waitpid_timeout(t.pid)
        self.assertTrue(os.WIFEXITED(st), st)
        self.assertEqual(os.WEXITSTATUS(st), 0, t.read_log())
        slow.close()

    def test_sigterm_closes_idle_keepalive_connections(self):
        m = self.master()
        t = m.boot(WSGI)
        idle = Client(m.port)
        self.assertEqual(idle.get("/")[0].status, 200)
        os.kill(t.pid, signal.SIGTERM)
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(t.pid, 5)), 0)
        idle.conn.sock.settimeout(2)
        self.assertEqual(idle.conn.sock.recv(1), b"")
        idle.close()

    def test_forked_worker_stops_on_eof(self):
        m = self.master()
        t = m.boot(WSGI)
        seq, ch = m.spawn(t, index=1)
        pid = t.expect("spawned")["pid"]
        w = m.adopt(pid, ch)
        w.expect("hello")
        w.send({"op": "welcome", "worker": 1, "generation": 1})
        m.notify.wait_for(pid, "READY=1")
        ch.close()
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(pid)), 0)
        self.assertTrue(alive(t.pid))


class ExecModeTest(MasterTestCase):
    def test_exec_mode_ready_and_master_gone(self):
        """No FORKD_CONTROL_FD: READY=1 without handshake; the worker exits when its parent (the
        master) does, seen through a pidfd."""
        m = self.master()
        # A stand-in master: a process that starts the worker and then sleeps.
        launcher = m.start(["-c", (
            "import os, sys, time\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.environ['LISTEN_PID'] = str(os.getpid())\n"
            "    os.execv(sys.executable, [sys.executable] + %r)\n"
            "with open(os.environ['HOOK_LOG'] + '.tmp', 'w') as f: f.write(str(pid))\n"
            "os.rename(os.environ['HOOK_LOG'] + '.tmp', os.environ['HOOK_LOG'] + '.pid')\n"
            "time.sleep(60)\n") % (WSGI,)], control=False)
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
        self.assertEqual(ppid_of(pid), launcher.pid)
        os.kill(launcher.pid, signal.SIGKILL)
        waitpid_timeout(launcher.pid)
        m.notify.wait_for(pid, "STOPPING=1")
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(pid)), 0)


class PlainAPITest(MasterTestCase):
    SCRIPT = (
        "import forkd, sys\n"
        "ls = forkd.listeners()\n"
        "assert len(ls) == 1 and forkd.listeners_by_name().keys() == {'http'}, ls\n"
        "assert forkd.ready() is True\n"
        "assert not forkd.is_template()\n"
        "forkd.add_requests(5)\n"
        "gone = forkd.master_gone().wait(10)\n"
        "sys.exit(0 if gone else 3)\n")

    def test_plain_api_in_fork_mode_says_hello_without_fork(self):
        m = self.master()
        w = m.start(["-c", self.SCRIPT])
        hello = w.expect("hello")
        self.assertIs(hello["fork"], False)
        time.sleep(0.2)
        self.assertNotIn("READY=1", m.notify.lines(w.pid))
        w.send({"op": "welcome", "worker": 0, "generation": 1})
        m.notify.wait_for(w.pid, "READY=1")
        m.notify.wait_for(w.pid, "X_FORKD_REQUESTS=5")
        seq = m.next_seq()
        w.send({"op": "pause", "seq": seq})
        self.assertEqual(w.expect("error")["seq"], seq)
        w.channel.close()
        self.assertEqual(os.WEXITSTATUS(waitpid_timeout(w.pid)), 0, w.read_log())
