"""The ceiling: the benchmark's message pattern on bare Flask-SocketIO + gevent (no validation, store or logic).

``python bench/ceiling_app.py PORT``: devices register, ``POST /api/dispatch-task`` emits ``new_task`` (asking for
an ack, as taskserver does) to the next registered device in turn, progress and results are acknowledged and a
result also gets ``task_result_ack``: on the wire, the same messages per task as taskserver sends. taskserver's
throughput is reported against it."""

from gevent import monkey

monkey.patch_all()

import itertools  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402

from flask import Flask, request  # noqa: E402
from flask_socketio import SocketIO  # noqa: E402
from gevent import pywsgi  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

app = Flask(__name__)
socketio = SocketIO(app, async_mode="gevent")
registered = []
turn = itertools.count()


@socketio.on("device_register")
def register(data):
    registered.append(request.sid)
    return {"success": True, "device_id": data["device_id"]}


@socketio.on("task_progress")
def progress(data):
    return {"success": True}


@socketio.on("task_result")
def result(data):
    socketio.emit("task_result_ack", {"task_id": data["task_id"], "status": "received"}, to=request.sid)
    return {"success": True, "status": "completed"}


def delivered(*ack):
    """The device acknowledged ``new_task`` (the benchmark's devices do not, like the Android app)."""


@app.get("/")
def status():
    return {"status": "running", "connected_devices": len(registered)}


@app.post("/api/dispatch-task")
def dispatch():
    body = request.get_json()
    task_id = uuid.uuid4().hex
    sid = registered[next(turn) % len(registered)]
    socketio.emit("new_task", {"type": "new_task", "task_id": task_id, **body}, to=sid, callback=delivered)
    return {"success": True, "task_id": task_id}


if __name__ == "__main__":
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(1024)
    pywsgi.WSGIServer(listener, app, handler_class=WebSocketHandler, log=None).serve_forever()
