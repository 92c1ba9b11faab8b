"""Entry point: ``python app.py`` serves HTTP, Socket.IO and WebSocket on ``0.0.0.0:$PORT`` (default 1888)."""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402

from gevent import pywsgi  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

from taskserver import create_app  # noqa: E402

app = create_app()


def listener(host, port):
    """A listening socket with TCP_NODELAY, which accepted sockets inherit (no 40 ms Nagle stalls)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


if __name__ == "__main__":
    host, port = app.config["HOST"], app.config["PORT"]
    print(f"taskserver listening on http://{host}:{port}", flush=True)
    pywsgi.WSGIServer(listener(host, port), app, handler_class=WebSocketHandler, log=None).serve_forever()
