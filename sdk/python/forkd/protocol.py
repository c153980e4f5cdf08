"""The control channel of docs/protocol.md section 3: one JSON object per SOCK_SEQPACKET packet.

A message is a UTF-8 JSON object of at most 64 KiB with ``"v"`` (the sender's protocol version),
``"op"`` and, on requests and their replies, an integer ``"seq"``. Descriptors travel with a message
as SCM_RIGHTS (a ``spawn`` carries the new worker's channel).

Nothing here raises on what the peer sends: :meth:`Channel.recv` turns a packet that is not a valid
message into an :class:`Invalid`, which says why and carries the ``seq`` when one could be read, so
the caller can answer ``error`` and go on. Only the local socket failing raises (``OSError``).
"""

import array
import json
import os
import select
import socket

__all__ = [
    "VERSION", "MAX_MESSAGE", "OPS", "ProtocolError", "Invalid", "encode", "decode", "Channel",
]

#: The protocol version this SDK speaks.
VERSION = 1

#: The largest message, in bytes.
MAX_MESSAGE = 64 * 1024

#: Every op of version 1. A known op with missing fields is still a valid message; checking the
#: fields an op needs is the receiver's job.
OPS = frozenset({
    "hello", "welcome", "refuse",
    "spawn", "spawned", "spawn_failed",
    "pause", "paused", "resume", "resumed",
    "mold", "molded", "mold_failed",
    "error", "stdio",
})

# At most this many descriptors are accepted with one packet; more are a protocol error (and are
# closed, as are all descriptors of a packet that is not a valid message).
_MAX_FDS = 4

_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)


class ProtocolError(ValueError):
    """A packet that is not a valid message; seq is its seq when one could be read, else None."""

    def __init__(self, reason, seq=None):
        super().__init__(reason)
        self.reason = reason
        self.seq = seq


class Invalid:
    """What :meth:`Channel.recv` returns for a packet that is not a valid message.

    ``reason`` says why; ``seq`` is the packet's seq when it had a readable one (answer ``error``
    then), else None (ignore it). Descriptors that came with it have been closed.
    """

    __slots__ = ("reason", "seq")

    def __init__(self, reason, seq=None):
        self.reason = reason
        self.seq = seq

    def __repr__(self):
        return "Invalid(%r, seq=%r)" % (self.reason, self.seq)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def encode(msg):
    """Return the packet for msg, a dict with at least ``op``; ``v`` is added when missing.

    Raises ValueError when msg has no string ``op``, cannot be serialized, or is larger than
    MAX_MESSAGE.
    """
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ValueError("a message is a dict with a string op: %r" % (msg,))
    if "v" not in msg:
        msg = dict(msg, v=VERSION)
    try:
        data = json.dumps(msg, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError("cannot encode %r: %s" % (msg.get("op"), e)) from None
    data = data.encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise ValueError("message %r is %d bytes, more than %d"
                         % (msg["op"], len(data), MAX_MESSAGE))
    return data


def decode(data):
    """Return the message (a dict) in one packet, or raise ProtocolError saying why it is not one.

    A valid message is a UTF-8 JSON object of at most MAX_MESSAGE bytes with an integer ``v`` and a
    string ``op``. Its ``seq``, when present, is an integer. An unknown op is still a message:
    whether to answer it with ``error`` is the receiver's choice (it should, when it has a seq).
    """
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("message longer than %d bytes" % MAX_MESSAGE)
    if not data:
        raise ProtocolError("empty packet")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError("not UTF-8: %s" % e) from None
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ProtocolError("not JSON: %s" % e) from None
    if not isinstance(msg, dict):
        raise ProtocolError("not a JSON object")
    seq = msg.get("seq")
    if seq is not None and not _is_int(seq):
        raise ProtocolError("seq is not an integer")
    if "v" not in msg:
        raise ProtocolError("no v", seq)
    if not _is_int(msg["v"]):
        raise ProtocolError("v is not an integer", seq)
    if "op" not in msg:
        raise ProtocolError("no op", seq)
    if not isinstance(msg["op"], str):
        raise ProtocolError("op is not a string", seq)
    return msg


def _close_fds(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Channel:
    """One end of a control channel: a connected AF_UNIX SOCK_SEQPACKET socket.

    It owns the socket; close() closes it. The socket stays in blocking mode: poll fileno() before
    recv() when blocking is not wanted (the channel is this process's own, shared with nobody).
    """

    def __init__(self, sock):
        self.sock = sock

    @classmethod
    def from_fd(cls, fd):
        """Take over descriptor fd, which must be an AF_UNIX SOCK_SEQPACKET socket.

        Raises OSError (ENOTSOCK, or EBADF when fd is not open) or ValueError (another kind of
        socket). The descriptor is made close-on-exec, so programs the worker starts do not get it.
        """
        sock = socket.socket(fileno=fd)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            kind = (sock.family, sock.type)
            sock.detach()
            raise ValueError("fd %d is not a unix SOCK_SEQPACKET socket but %r" % (fd, kind))
        sock.set_inheritable(False)
        return cls(sock)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        self.sock.close()

    def send(self, msg, fds=()):
        """Send msg (see encode) as one packet, fds as SCM_RIGHTS. Raises OSError or ValueError."""
        data = encode(msg)
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            self.sock.sendmsg([data], anc)
        else:
            self.sock.send(data)

    def recv(self):
        """Receive one packet. Returns (msg, fds):

        - (dict, fds): a valid message (see decode) and the descriptors that came with it, which the
          caller now owns (they are close-on-exec);
        - (Invalid, []): a packet that is not a valid message; its descriptors have been closed;
        - (None, []): end of file: the peer closed its end (or reset the connection).

        Raises OSError only when the local socket fails otherwise.
        """
        try:
            data, ancdata, flags, _ = self.sock.recvmsg(
                MAX_MESSAGE + 1, socket.CMSG_SPACE(_MAX_FDS * 4), _CMSG_CLOEXEC)
        except (ConnectionResetError, ConnectionAbortedError):
            return None, []
        fds = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(payload[: len(payload) - (len(payload) % arr.itemsize)])
                fds.extend(arr)
        for fd in fds:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
        if not data and not fds and not ancdata:
            if self._peer_closed():
                return None, []
            return Invalid("empty packet"), []
        try:
            if flags & socket.MSG_TRUNC:
                raise ProtocolError("message longer than %d bytes" % MAX_MESSAGE)
            if flags & socket.MSG_CTRUNC:
                raise ProtocolError("more than %d descriptors" % _MAX_FDS, _seq_of(data))
            msg = decode(data)
        except ProtocolError as e:
            _close_fds(fds)
            return Invalid(e.reason, e.seq), []
        return msg, fds

    def _peer_closed(self):
        # recvmsg returns 0 bytes both for end of file and for an empty packet; POLLHUP/POLLRDHUP
        # tell them apart.
        p = select.poll()
        p.register(self.sock.fileno(), select.POLLIN | getattr(select, "POLLRDHUP", 0))
        for _, ev in p.poll(0):
            if ev & (select.POLLHUP | getattr(select, "POLLRDHUP", 0) | select.POLLERR):
                return True
        return False


def _seq_of(data):
    try:
        seq = json.loads(bytes(data).decode("utf-8")).get("seq")
    except Exception:
        return None
    return seq if _is_int(seq) else None
