"""The gevent WSGI server for ``python app.py`` (and the tests): WebSocket-capable, with TCP_NODELAY."""

import gc
import socket

from gevent import pywsgi
from gevent.pool import Pool
from geventwebsocket.handler import WebSocketHandler


def listener(host, port):
    """A listening socket with TCP_NODELAY, which accepted sockets inherit.

    gevent writes a response's headers and body in separate sends; with Nagle's algorithm and the client's
    delayed ACK every keep-alive response would stall ~40 ms."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def wsgi_server(app, host, port):
    """A gevent WSGI server for ``app`` on ``host:port`` (port 0 picks a free one), not yet started.

    Its connections' greenlets belong to an unbounded pool, so that ``stop`` ends those still open."""
    return pywsgi.WSGIServer(listener(host, port), app, handler_class=WebSocketHandler, log=None, spawn=Pool())


def tune_gc():
    """Collect the young generation 140x less often, so that full collections are rare.

    With 10,000 connected devices the heap holds millions of objects and a full collection stalls the event loop
    for up to ~0.7 s (heartbeat round trip p99 613 ms); with these thresholds p99 is ~5 ms
    (``bench/run.py --only scale``)."""
    gc.set_threshold(100_000, 50, 100)
