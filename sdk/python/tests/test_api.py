"""The plain API in real processes: listeners, the environment, hooks around os.fork()."""

import json
import os
import unittest

from .helpers import MasterTestCase, waitpid_timeout


class PlainAPITest(MasterTestCase):
    def run_script(self, script, env=None, control=False):
        m = self.master()
        w = m.start(["-c", script], control=control, env=env)
        status = waitpid_timeout(w.pid)
        log = w.read_log()
        self.assertTrue(os.WIFEXITED(status), log)
        lines = [ln for ln in log.splitlines() if ln.startswith("{")]
        return os.WEXITSTATUS(status), (json.loads(lines[-1]) if lines else None), log

    def test_ksm_opt_in(self):
        """With FORKD_KSM=1 (memory.ksm) the SDK opts its process in to KSM whole, as kernels
        before 6.16 drop the shim's opt-in at the exec; without it, it leaves the process as is."""
        if not os.path.exists("/proc/self/ksm_stat"):
            self.skipTest("no /proc/self/ksm_stat (Linux 6.1+ with CONFIG_KSM)")
        for value, merge_any in (("1", "yes"), ("", "no")):
            code, out, log = self.run_script(
                "import json, re, forkd\n"
                "forkd.listeners()\n"
                "stat = open('/proc/self/ksm_stat').read()\n"
                "print(json.dumps({'merge_any': re.search(r'ksm_merge_any: ([a-z]+)', stat).group(1)}))\n",
                env={"FORKD_KSM": value})
            self.assertEqual(code, 0, log)
            self.assertEqual(out, {"merge_any": merge_any}, "FORKD_KSM=%r" % value)

    def test_listeners_and_environment(self):
        code, out, log = self.run_script(
            "import fcntl, json, os, forkd\n"
            "before = fcntl.fcntl(3, fcntl.F_GETFL) & os.O_NONBLOCK\n"
            "ls = forkd.listeners()\n"
            "after = fcntl.fcntl(3, fcntl.F_GETFL) & os.O_NONBLOCK\n"
            "print(json.dumps({'n': len(ls), 'fd': ls[0].fileno(), 'same': forkd.listeners()[0] is ls[0],\n"
            "  'names': sorted(forkd.listeners_by_name()), 'nonblock': [before, after],\n"
            "  'inheritable': os.get_inheritable(3), 'index': forkd.worker_index(),\n"
            "  'gen': forkd.generation(), 'template': forkd.is_template(),\n"
            "  'gone': forkd.master_gone().is_set()}))\n",
            env={"FORKD_WORKER": "2", "FORKD_GENERATION": "7"})
        self.assertEqual(code, 0, log)
        self.assertEqual(out, {"n": 1, "fd": 3, "same": True, "names": ["http"], "nonblock": [0, 0],
                               "inheritable": False, "index": 2, "gen": 7, "template": False,
                               "gone": False})

    def test_set_gc_freeze_takes_a_bool(self):
        code, out, log = self.run_script(
            "import json, forkd\n"
            "forkd.set_gc_freeze(False)\n"
            "try:\n"
            "    forkd.set_gc_freeze('off')\n"
            "    err = None\n"
            "except TypeError as e:\n"
            "    err = str(e)\n"
            "print(json.dumps({'err': err}))\n")
        self.assertEqual(code, 0, log)
        self.assertEqual(out, {"err": "forkd.set_gc_freeze takes True or False, not 'off'"})

    def test_listen_pid_of_another_process(self):
        code, out, log = self.run_script(
            "import json, os\n"
            "os.environ['LISTEN_PID'] = '1'\n"
            "import forkd\n"
            "print(json.dumps({'n': len(forkd.listeners()), 'byname': forkd.listeners_by_name()}))\n",
            control=True)
        self.assertEqual(code, 0, log)
        self.assertEqual(out, {"n": 0, "byname": {}})

    def test_not_under_forkd(self):
        code, out, log = self.run_script(
            "import json, os\n"
            "for k in list(os.environ):\n"
            "    if k.startswith(('LISTEN_', 'NOTIFY_', 'FORKD_', 'WATCHDOG_')): del os.environ[k]\n"
            "import forkd\n"
            "print(json.dumps({'ls': len(forkd.listeners()), 'index': forkd.worker_index(),\n"
            "  'gen': forkd.generation(), 'ready': forkd.ready(), 'status': forkd.status('x'),\n"
            "  'stopping': forkd.stopping(), 'barrier': forkd.notify_barrier(),\n"
            "  'gone': forkd.master_gone().is_set()}))\n")
        self.assertEqual(code, 0, log)
        self.assertEqual(out, {"ls": 0, "index": -1, "gen": 0, "ready": False, "status": False,
                               "stopping": False, "barrier": False, "gone": False})

    def test_malformed_environment(self):
        for env in ({"LISTEN_FDNAMES": "a:b"}, {"LISTEN_FDS": "2"}, {"LISTEN_FDS": "x"},
                    {"FORKD_WORKER": "-5"}, {"WATCHDOG_USEC": "0"}):
            with self.subTest(env=env):
                code, out, log = self.run_script(
                    "import json, forkd\n"
                    "try:\n"
                    "    forkd.listeners(); forkd.worker_index()\n"
                    "    print(json.dumps({'error': None}))\n"
                    "except forkd.Error as e:\n"
                    "    print(json.dumps({'error': str(e)}))\n", env=env)
                self.assertEqual(code, 0, log)
                self.assertTrue(out["error"], out)

    def test_fork_hooks_around_os_fork(self):
        code, out, log = self.run_script(
            "import json, os, sys, forkd\n"
            "from forkd import hooks\n"
            "r, w = os.pipe()\n"
            "def rec(s):\n"
            "    os.write(w, ('%d:%s\\n' % (os.getpid(), s)).encode())\n"
            "forkd.before_fork(lambda: rec('prepare-a'))\n"
            "@forkd.before_fork\n"
            "def b(): rec('prepare-b')\n"
            "assert callable(b) and b.__name__ == 'b'\n"
            "forkd.after_fork_parent(lambda: rec('parent-a'))\n"
            "forkd.after_fork_parent(lambda: rec('parent-b'))\n"
            "forkd.after_fork_child(lambda: rec('child-a'))\n"
            "forkd.after_fork_child(lambda: rec('child-b'))\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os._exit(0)\n"
            "os.waitpid(pid, 0)\n"
            "with hooks.sdk_forking():\n"
            "    pid2 = os.fork()\n"
            "    if pid2 == 0:\n"
            "        os._exit(0)\n"
            "os.waitpid(pid2, 0)\n"
            "os.close(w)\n"
            "data = b''\n"
            "while True:\n"
            "    c = os.read(r, 4096)\n"
            "    if not c: break\n"
            "    data += c\n"
            "events = [l.split(':') for l in data.decode().split()]\n"
            "print(json.dumps({'me': os.getpid(), 'child': pid, 'events': events}))\n")
        self.assertEqual(code, 0, log)
        me, child = str(out["me"]), str(out["child"])
        mine = [e for p, e in out["events"] if p == me]
        theirs = [e for p, e in out["events"] if p == child]
        self.assertEqual(mine, ["prepare-b", "prepare-a", "parent-a", "parent-b"])
        self.assertEqual(theirs, ["child-a", "child-b"])
        self.assertEqual(len(out["events"]), 6)  # nothing around the SDK-flagged fork

    @unittest.skipUnless(os.geteuid() == 0, "needs root, to drop to nobody under RLIMIT_NPROC")
    def test_no_thread_for_the_heartbeats(self):
        # RLIMIT_NPROC does not hold for root: as nobody with a limit of 1, the process may not
        # start a single thread. ready() still says READY=1 and says why no heartbeat will come;
        # nothing raises into the app (it raised "cannot join thread before it is started").
        m = self.master(watchdog_usec=2000000)
        w = m.start(["-c",
            "import json, os, resource, forkd\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))\n"
            "sent = forkd.ready()\n"
            "forkd.add_requests(3)\n"
            "forkd.master_gone()\n"
            "forkd.worker.reporter.stop()\n"
            "print(json.dumps({'sent': sent, 'requests': forkd.requests()}))\n"], control=False)
        status = waitpid_timeout(w.pid)
        log = w.read_log()
        self.assertTrue(os.WIFEXITED(status), log)
        self.assertEqual(os.WEXITSTATUS(status), 0, log)
        self.assertEqual(json.loads(log.splitlines()[-1]), {"sent": True, "requests": 3})
        self.assertIn("forkd: cannot start the forkd-heartbeat thread (can't start new thread): "
                      "this worker sends no heartbeat nor request count, and forkd will kill it "
                      "when timeouts.worker runs out", log)
        self.assertIn("forkd: cannot start the forkd-master thread", log)
        m.notify.wait_for(w.pid, "READY=1")


if __name__ == "__main__":
    unittest.main()
