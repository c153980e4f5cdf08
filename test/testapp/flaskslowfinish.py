"""flaskapp, with the step after a keep-alive answer made slow: a fault injected into gunicorn's
threaded worker. Its finish_request takes the request's result, then reads alive to choose
between keeping the connection and closing it; here 2 ms pass between the two (the GIL
released), so that a stop lands in between now and then, where on a real machine it lands
there rarely (a thread preempted at that point, a signal handler run between two bytecodes)."""
import time
from concurrent import futures

from flaskapp import app  # noqa: F401

_result = futures.Future.result


def _slow_keepalive_result(self, timeout=None):
    r = _result(self, timeout)
    if isinstance(r, tuple) and r and r[0] is True:  # gunicorn < 24: (keepalive, conn)
        time.sleep(0.002)
    return r


futures.Future.result = _slow_keepalive_result
