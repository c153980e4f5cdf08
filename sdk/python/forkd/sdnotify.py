"""sd_notify(3) for forkd workers: datagrams to NOTIFY_SOCKET, and sd_notify_barrier(3).

Each message is one datagram of ``KEY=VALUE`` lines, sent from a fresh socket as sd_notify does,
so nothing stays open between messages and a master that re-execs itself is followed. The kernel
attaches the sender's credentials (the master's socket has SO_PASSCRED), which is how the master
tells workers apart: no MAINPID= is needed.

Outcomes follow sd_notify(3) and go-systemd: ``False`` means there is nobody to notify
(NOTIFY_SOCKET is unset: not under forkd or a Type=notify service), which is an answer, not an
error; ``True`` means the datagram was sent; ``OSError`` means it could not be sent (NOTIFY_SOCKET
is malformed, or nobody listens there any more).
"""

import array
import os
import select
import socket
import time

__all__ = ["notify", "notify_barrier", "notify_address", "NotifyError"]

# A send that blocks longer than this (the master's receive queue is full and nobody reads it)
# fails instead of hanging the caller.
_SEND_TIMEOUT = 2.0


class NotifyError(OSError):
    """NOTIFY_SOCKET is set but is neither an absolute path nor an @abstract name."""


def notify_address(value=None):
    """Return the socket address for NOTIFY_SOCKET (or value), None when it is unset or empty.

    A leading ``@`` names the abstract namespace (a leading NUL byte). Raises NotifyError for a
    value that is neither ``/path`` nor ``@name``.
    """
    if value is None:
        value = os.environ.get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise NotifyError("NOTIFY_SOCKET=%r is neither an absolute path nor an @abstract name" % value)


def notify(state, fds=(), address=None):
    """Send state, one or more ``KEY=VALUE`` lines, to NOTIFY_SOCKET as one datagram.

    fds, when given, travel with it as SCM_RIGHTS. address overrides NOTIFY_SOCKET (same syntax).

    Returns True when sent, False when there is nobody to notify (NOTIFY_SOCKET unset). Raises
    OSError when it could not be sent: NotifyError for a malformed NOTIFY_SOCKET,
    ConnectionRefusedError or FileNotFoundError when nobody listens there (the master is gone),
    TimeoutError (socket.timeout) when the receiver does not read for 2 seconds.
    """
    addr = notify_address(address)
    if addr is None:
        return False
    data = state.encode("utf-8") if isinstance(state, str) else bytes(state)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.settimeout(_SEND_TIMEOUT)
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            sock.sendmsg([data], anc, 0, addr)
        else:
            sock.sendto(data, addr)
    finally:
        sock.close()
    return True


def notify_barrier(timeout=5.0, address=None):
    """sd_notify_barrier(3): return once the receiver has processed every earlier notification.

    Sends ``BARRIER=1`` with the write end of a pipe and waits until the receiver has closed it
    (forkd closes every descriptor that arrives with a notification). A short-lived helper that
    notifies for its worker calls this before exiting, so it is still alive when forkd traces the
    sender back to the worker.

    Returns True when synchronized, False when there is nobody to notify. Raises TimeoutError when
    the receiver did not close the pipe within timeout seconds, and OSError as notify does.
    """
    if notify_address(address) is None:
        return False
    r, w = os.pipe()
    try:
        try:
            notify("BARRIER=1", fds=[w], address=address)
        finally:
            os.close(w)
        deadline = time.monotonic() + timeout
        p = select.poll()
        p.register(r, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("notify barrier: no answer in %gs" % timeout)
            events = p.poll(left * 1000)
            if any(ev & (select.POLLHUP | select.POLLERR) for _, ev in events):
                return True
            if events and not os.read(r, 64):
                return True
    finally:
        os.close(r)
