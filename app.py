"""Entry point: ``python app.py`` serves HTTP, Socket.IO and WebSocket on ``0.0.0.0:$PORT`` (default 1888)."""

from gevent import monkey

monkey.patch_all()

import signal  # noqa: E402

import gevent  # noqa: E402

from taskserver import create_app, shutdown  # noqa: E402
from taskserver.serving import tune_gc, wsgi_server  # noqa: E402

tune_gc()
app = create_app()


def stop(server):
    """SIGTERM (or Ctrl-C): accept nothing more, shut the app down (its devices go offline now, a node of a cluster
    gives its lease up), then end the server, and with it ``serve_forever``."""
    server.close()
    shutdown(app)
    server.stop(timeout=1)


if __name__ == "__main__":
    host, port = app.config["HOST"], app.config["PORT"]
    server = wsgi_server(app, host, port)
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop, server)
    print(f"taskserver listening on http://{host}:{port}", flush=True)
    server.serve_forever()
