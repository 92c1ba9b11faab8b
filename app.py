"""Entry point: ``python app.py`` serves HTTP, Socket.IO and WebSocket on ``0.0.0.0:$PORT`` (default 1888)."""

from gevent import monkey

monkey.patch_all()

from taskserver import create_app  # noqa: E402
from taskserver.serving import tune_gc, wsgi_server  # noqa: E402

tune_gc()
app = create_app()

if __name__ == "__main__":
    host, port = app.config["HOST"], app.config["PORT"]
    print(f"taskserver listening on http://{host}:{port}", flush=True)
    wsgi_server(app, host, port).serve_forever()
