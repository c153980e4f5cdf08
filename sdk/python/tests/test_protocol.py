"""Control-channel messages: encode/decode, and Channel over a real SOCK_SEQPACKET socketpair."""

import os
import socket
import unittest

from .helpers import SDK_DIR  # noqa: F401  (puts the SDK on sys.path)
from forkd import protocol


class CodecTest(unittest.TestCase):
    def test_roundtrip_adds_v(self):
        data = protocol.encode({"op": "hello", "pid": 42, "fork": True, "sdk": "forkd-python/x"})
        msg = protocol.decode(data)
        self.assertEqual(msg, {"op": "hello", "pid": 42, "fork": True, "sdk": "forkd-python/x",
                               "v": 1})
        self.assertNotIn(b" ", data)

    def test_unicode(self):
        msg = protocol.decode(protocol.encode({"op": "refuse", "error": "nein \u2013 \U0001f600"}))
        self.assertEqual(msg["error"], "nein \u2013 \U0001f600")

    def test_encode_refuses(self):
        for bad in ({}, {"op": 3}, [], {"op": "x", "f": object()}, {"op": "x", "n": float("nan")}):
            with self.assertRaises(ValueError):
                protocol.encode(bad)
        with self.assertRaises(ValueError):
            protocol.encode({"op": "error", "error": "x" * protocol.MAX_MESSAGE})

    def test_decode_errors(self):
        cases = [
            (b"", None),
            (b"\xff\xfe", None),
            (b"not json", None),
            (b"[1,2]", None),
            (b'"text"', None),
            (b'{"op": "hello"}', None),
            (b'{"v": 1, "seq": 7}', 7),
            (b'{"v": "1", "op": "x", "seq": 8}', 8),
            (b'{"v": 1, "op": 5, "seq": 9}', 9),
            (b'{"v": 1, "op": "x", "seq": "nine"}', None),
            (b'{"v": 1, "op": "x", "seq": true}', None),
            (b"[" * 100000, None),
            (b"{" + b" " * protocol.MAX_MESSAGE + b"}", None),
        ]
        for data, seq in cases:
            with self.subTest(data=data[:30]):
                with self.assertRaises(protocol.ProtocolError) as cm:
                    protocol.decode(data)
                self.assertEqual(cm.exception.seq, seq)

    def test_unknown_fields_and_ops_are_messages(self):
        msg = protocol.decode(b'{"v": 1, "op": "future", "seq": 3, "extra": [1]}')
        self.assertEqual(msg["op"], "future")
        self.assertNotIn("future", protocol.OPS)


class ChannelTest(unittest.TestCase):
    def setUp(self):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.a, self.b = protocol.Channel(a), protocol.Channel(b)
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    def test_message_with_a_descriptor(self):
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.a.send({"op": "spawn", "seq": 1, "worker": 2, "generation": 3}, [w])
        os.close(w)
        msg, fds = self.b.recv()
        self.assertEqual(msg, {"op": "spawn", "seq": 1, "worker": 2, "generation": 3, "v": 1})
        self.assertEqual(len(fds), 1)
        self.assertFalse(os.get_inheritable(fds[0]))
        os.write(fds[0], b"x")
        os.close(fds[0])
        self.assertEqual(os.read(r, 1), b"x")

    def test_one_packet_one_message(self):
        self.a.send({"op": "pause", "seq": 1})
        self.a.send({"op": "resume", "seq": 2})
        self.assertEqual(self.b.recv()[0]["op"], "pause")
        self.assertEqual(self.b.recv()[0]["op"], "resume")

    def test_malformed_packets_never_raise(self):
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        packets = [b"junk", b"[]", b'{"v":1,"seq":5}', b"\x00" * 10,
                   b'{"v":1,"op":"x"' + b" " * (protocol.MAX_MESSAGE + 10) + b"}"]
        for p in packets:
            self.a.sock.send(p)
        # A descriptor with an invalid message is closed, not leaked.
        import array
        self.a.sock.sendmsg([b"nope"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                         array.array("i", [w]).tobytes())])
        os.close(w)
        got = [self.b.recv() for _ in range(len(packets) + 1)]
        for msg, fds in got:
            self.assertIsInstance(msg, protocol.Invalid)
            self.assertEqual(fds, [])
        self.assertEqual(got[2][0].seq, 5)
        self.assertIn("longer", got[4][0].reason)
        # Every copy of the pipe's write end is closed: read sees end of file.
        self.assertEqual(os.read(r, 1), b"")

    def test_empty_packet_is_not_eof(self):
        self.a.sock.send(b"")
        msg, _ = self.b.recv()
        self.assertIsInstance(msg, protocol.Invalid)
        self.a.send({"op": "resume", "seq": 1})
        self.assertEqual(self.b.recv()[0]["op"], "resume")

    def test_eof(self):
        self.a.close()
        self.assertEqual(self.b.recv(), (None, []))

    def test_from_fd_checks_the_kind(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(s.close)
        with self.assertRaises(ValueError):
            protocol.Channel.from_fd(s.fileno())
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        with self.assertRaises(OSError):
            protocol.Channel.from_fd(r)


if __name__ == "__main__":
    unittest.main()
