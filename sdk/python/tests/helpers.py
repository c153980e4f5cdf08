"""A fake forkd master for the SDK's tests: real sockets, real processes, bounded waits.

It does what docs/protocol.md says the master does, as far as a worker can tell: a listening TCP
socket at fd 3 with LISTEN_FDS/LISTEN_FDNAMES and LISTEN_PID set to the worker's own PID (through
a `sh -c 'LISTEN_PID=$$ ... exec'` wrapper, as forkd's shim does), a unixgram notify socket in the
abstract namespace with SO_PASSCRED (so every datagram's sender PID is known), and a SOCK_SEQPACKET
control channel at fd 4. The test process is made a subreaper, so the workers that a template
double-forks are re-parented to it, as they are to forkd's master.

Every process a test starts or learns of is killed (by PID) and reaped in cleanup().
"""

import ctypes
import shutil
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_DIR = os.path.dirname(HERE)
APPS = os.path.join(HERE, "apps")
PY = sys.executable
TIMEOUT = 10.0
# FORKD_TEST_PYTHONPATH puts another gunicorn (a checkout of a release) before the installed one,
# in the workers the tests start and in this process: FORKD_TEST_PYTHONPATH=/src/gunicorn-26.1 ...
EXTRA_PATH = [p for p in os.environ.get("FORKD_TEST_PYTHONPATH", "").split(os.pathsep) if p]


def have(module):
    """Whether the workers' interpreter can import module (gunicorn, uvicorn)."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(EXTRA_PATH + [SDK_DIR]))
    return subprocess.run([PY, "-c", "import " + module], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0

# The tests that run gunicorn's classes in this process (FinishRequestTest, SharedListenerTest) take
# the same gunicorn as the workers.
sys.path[:0] = EXTRA_PATH + [SDK_DIR]

from forkd import protocol  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36

_WRAPPER = ('LISTEN_PID=$$; export LISTEN_PID; '
            'if [ -n "$WATCHDOG_USEC" ]; then WATCHDOG_PID=$$; export WATCHDOG_PID; fi; '
            'exec "$@"')


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def ppid_of(pid):
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    # pid (comm) state ppid ...: comm may hold spaces and parentheses.
    return int(stat[stat.rindex(")") + 2:].split()[1])


def wait_until(pred, timeout=TIMEOUT, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))
        time.sleep(interval)


def waitpid_timeout(pid, timeout=TIMEOUT):
    """Reap pid; returns its wait status, or raises AssertionError when it does not exit in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            raise AssertionError("pid %d is not our child" % pid)
        if got == pid:
            return status
        if time.monotonic() > deadline:
            raise AssertionError("pid %d did not exit in %gs" % (pid, timeout))
        time.sleep(0.02)


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class Notifications:
    """The master's notify socket: collects (pid, text) of every datagram."""

    def __init__(self):
        self.name = "forkd-test/%d/%s" % (os.getpid(), os.urandom(6).hex())
        self.address = "@" + self.name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + self.name)
        self.items = []
        self.cond = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        ucred = struct.calcsize("3i")
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(
                    65536, socket.CMSG_SPACE(ucred) + socket.CMSG_SPACE(16 * 4))
            except OSError:
                return
            pid = None
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:ucred])[0]
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    n = len(payload) // 4
                    for fd in struct.unpack("%di" % n, payload[: n * 4]):
                        os.close(fd)  # as forkd does (this answers BARRIER=1)
            with self.cond:
                self.items.append((pid, data.decode("utf-8", "replace"), time.monotonic()))
                self.cond.notify_all()

    def wait_for(self, pid, line, timeout=TIMEOUT):
        """The first datagram from pid with a line equal to line (or starting with it, when it
        ends with '='). Returns (pid, text, time)."""
        def match(item):
            if pid is not None and item[0] != pid:
                return False
            for ln in item[1].split("\n"):
                if ln == line or (line.endswith("=") and ln.startswith(line)):
                    return True
            return False
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for item in self.items:
                    if match(item):
                        return item
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no %r from pid %s in %gs; got %r"
                                         % (line, pid, timeout, self.items))
                self.cond.wait(left)

    def lines(self, pid=None):
        with self.cond:
            return [ln for p, text, _ in self.items if pid is None or p == pid
                    for ln in text.split("\n")]

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Worker:
    def __init__(self, pid, channel, log):
        self.pid = pid
        self.channel = channel  # the master's end (protocol.Channel), or None
        self.log = log

    def recv(self, timeout=TIMEOUT):
        """The next message from the worker: (msg, fds); (None, []) at EOF."""
        import select
        r, _, _ = select.select([self.channel.fileno()], [], [], timeout)
        if not r:
            raise AssertionError("no message from worker %d in %gs" % (self.pid, timeout))
        return self.channel.recv()

    def expect(self, op, timeout=TIMEOUT):
        msg, fds = self.recv(timeout)
        for fd in fds:
            os.close(fd)
        if msg is None or isinstance(msg, protocol.Invalid) or msg.get("op") != op:
            raise AssertionError("want %s from worker %d, got %r\nlog:\n%s"
                                 % (op, self.pid, msg, self.read_log()))
        return msg

    def send(self, msg, fds=()):
        self.channel.send(msg, fds)

    def read_log(self):
        try:
            with open(self.log) as f:
                return f.read()
        except OSError:
            return ""


class FakeMaster:
    def __init__(self, test, watchdog_usec=None):
        self.test = test
        self.dir = tempfile.mkdtemp(prefix="forkd-test-")
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.notify = Notifications()
        self.watchdog_usec = watchdog_usec
        self.pids = []
        self.channels = []
        self.seq = 0
        self.hook_log = os.path.join(self.dir, "hooks.log")
        self.request_log = os.path.join(self.dir, "requests.log")
        test.addCleanup(self.cleanup)

    def env(self, index=0, generation=1, control=True, protocol_version="1", extra=None):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join(EXTRA_PATH + [SDK_DIR, APPS]),
            "PYTHONDONTWRITEBYTECODE": "1",
            "LISTEN_FDS": "1",
            "LISTEN_FDNAMES": "http",
            "NOTIFY_SOCKET": self.notify.address,
            "FORKD_PROTOCOL": protocol_version,
            "FORKD_WORKER": str(index),
            "FORKD_GENERATION": str(generation),
            "HOOK_LOG": self.hook_log,
            "REQUEST_LOG": self.request_log,
        }
        if "PYTHONWARNINGS" in os.environ:
            env["PYTHONWARNINGS"] = os.environ["PYTHONWARNINGS"]
        if control:
            env["FORKD_CONTROL_FD"] = "4"
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        env.update(extra or {})
        return env

    def start(self, args, index=0, generation=1, control=True, protocol_version="1", env=None,
              cwd=None):
        """Start a worker running `python3 ARGS...` with fds 3 (listener) and 4 (channel)."""
        env = self.env(index, generation, control, protocol_version, env)
        log = os.path.join(self.dir, "worker-%d-%d.log" % (index, len(self.pids)))
        ours = None
        high = [fcntl.fcntl(self.listener.fileno(), fcntl.F_DUPFD_CLOEXEC, 20)]
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
            (os.POSIX_SPAWN_DUP2, high[0], 3),
        ]
        if control:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            high.append(fcntl.fcntl(theirs.fileno(), fcntl.F_DUPFD_CLOEXEC, 20))
            theirs.close()
            actions.append((os.POSIX_SPAWN_DUP2, high[1], 4))
        argv = ["/bin/sh", "-c", _WRAPPER, "sh", PY] + list(args)
        try:
            pid = os.posix_spawn("/bin/sh", argv, env, file_actions=actions)
        finally:
            for fd in high:
                os.close(fd)
        self.pids.append(pid)
        channel = protocol.Channel(ours) if ours is not None else None
        if channel is not None:
            self.channels.append(channel)
        return Worker(pid, channel, log)

    def adopt(self, pid, channel=None):
        """Remember a process the test did not start (a forked worker) for cleanup."""
        self.pids.append(pid)
        return Worker(pid, channel, None)

    def welcome(self, w, index=0, generation=1):
        hello = w.expect("hello")
        w.send({"op": "welcome", "worker": index, "generation": generation})
        return hello

    def boot(self, args, index=0, generation=1, **kw):
        """Start a worker, welcome it and wait for its READY=1."""
        w = self.start(args, index, generation, **kw)
        hello = self.welcome(w, index, generation)
        self.test.assertEqual(hello["pid"], w.pid)
        self.notify.wait_for(w.pid, "READY=1")
        return w

    def next_seq(self):
        self.seq += 1
        return self.seq

    def spawn(self, template, index, generation=1):
        """Send spawn to the template; returns (seq, the new worker's channel, master's end)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        seq = self.next_seq()
        template.send({"op": "spawn", "seq": seq, "worker": index, "generation": generation},
                      [theirs.fileno()])
        theirs.close()
        ch = protocol.Channel(ours)
        self.channels.append(ch)
        return seq, ch

    def request(self, seq_op, template, op, timeout=TIMEOUT):
        seq = self.next_seq()
        template.send({"op": seq_op, "seq": seq})
        msg = template.expect(op, timeout)
        self.test.assertEqual(msg["seq"], seq)
        return msg

    def wait_began(self, path, count=1):
        """Wait until the app has begun count requests for path (apps/hookapp.py's REQUEST_LOG):
        they are in flight. Returns the PIDs serving them."""
        def began():
            try:
                with open(self.request_log) as f:
                    pids = [int(pid) for pid, p in (ln.split() for ln in f) if p == path]
            except FileNotFoundError:
                return None
            return pids if len(pids) >= count else None
        return wait_until(began, what="%d request(s) for %s in flight" % (count, path))

    def hooks(self):
        """The hook log: list of (pid, event, data)."""
        out = []
        try:
            with open(self.hook_log) as f:
                for line in f:
                    pid, event, data = line.rstrip("\n").split(" ", 2)
                    out.append((int(pid), event, json.loads(data)))
        except FileNotFoundError:
            pass
        return out

    def cleanup(self):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                waitpid_timeout(pid, 5)
            except AssertionError:
                pass
        for ch in self.channels:
            try:
                ch.close()
            except OSError:
                pass
        self.listener.close()
        self.notify.close()
        if os.environ.get("FORKD_TEST_KEEP"):
            sys.stderr.write("\nkept %s\n" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class MasterTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        become_subreaper()

    def master(self, **kw):
        return FakeMaster(self, **kw)
