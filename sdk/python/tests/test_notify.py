"""sd_notify: addresses, credentials, outcomes, barrier; and the plain API's notifications."""

import os
import socket
import tempfile
import threading
import time
import unittest
from unittest import mock

from .helpers import Notifications
from forkd import sdnotify as n


class NotifyTest(unittest.TestCase):
    def setUp(self):
        self.recv = Notifications()
        self.addCleanup(self.recv.close)

    def test_abstract_address_with_credentials(self):
        self.assertTrue(n.notify("READY=1\nSTATUS=up", address=self.recv.address))
        pid, text, _ = self.recv.wait_for(os.getpid(), "READY=1")
        self.assertEqual(pid, os.getpid())
        self.assertEqual(text, "READY=1\nSTATUS=up")

    def test_environment_and_path_address(self):
        d = tempfile.mkdtemp()
        path = os.path.join(d, "notify")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        self.addCleanup(s.close)
        with mock.patch.dict(os.environ, {"NOTIFY_SOCKET": path}):
            self.assertTrue(n.notify("WATCHDOG=1"))
        self.assertEqual(s.recv(100), b"WATCHDOG=1")
        os.unlink(path)
        os.rmdir(d)

    def test_outcomes(self):
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertFalse(n.notify("READY=1"))
            self.assertFalse(n.notify_barrier())
        with mock.patch.dict(os.environ, {"NOTIFY_SOCKET": "relative/path"}):
            with self.assertRaises(n.NotifyError):
                n.notify("READY=1")
        with self.assertRaises(OSError):
            n.notify("READY=1", address="@forkd-test/nobody-%s" % os.urandom(4).hex())

    def test_barrier(self):
        self.assertTrue(n.notify_barrier(timeout=5, address=self.recv.address))
        self.recv.wait_for(os.getpid(), "BARRIER=1")

    def test_barrier_times_out_when_the_descriptor_is_kept(self):
        name = "\0forkd-test/keeper-%s" % os.urandom(4).hex()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(name)
        self.addCleanup(s.close)
        kept = []

        def keep():
            _, anc, _, _ = s.recvmsg(100, socket.CMSG_SPACE(4))
            kept.extend(anc)
        t = threading.Thread(target=keep)
        t.start()
        start = time.monotonic()
        with self.assertRaises(TimeoutError):
            n.notify_barrier(timeout=0.3, address="@" + name[1:])
        self.assertGreaterEqual(time.monotonic() - start, 0.25)
        t.join(5)
        for _, _, payload in kept:
            os.close(int.from_bytes(payload[:4], "little"))


if __name__ == "__main__":
    unittest.main()
