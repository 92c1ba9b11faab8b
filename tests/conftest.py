"""Fixtures: a real server on a free port (in this process, on gevent) and real Socket.IO / HTTP clients."""

from gevent import monkey

monkey.patch_all()

import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import pytest  # noqa: E402
import requests  # noqa: E402
import socketio  # noqa: E402

from taskserver import create_app, shutdown  # noqa: E402
from taskserver.serving import wsgi_server  # noqa: E402
from taskserver.watchdog import sweep  # noqa: E402


class FakeClock:
    """The server's clock, moved by tests instead of sleeping."""

    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now

    def advance(self, seconds):
        """Move time forward and return the new now."""
        self.now += seconds
        return self.now


class LiveServer:
    """A real server on 127.0.0.1 with a fake clock; the watchdog runs only when a test calls ``sweep``."""

    def __init__(self, database, **overrides):
        self.clock = FakeClock()
        settings = {"DATABASE": str(database), "WATCHDOG_INTERVAL": 0, **overrides}
        self.app = create_app(settings, clock=self.clock)
        self.service = self.app.extensions["taskserver"]
        self.http = wsgi_server(self.app, "127.0.0.1", 0)
        self.http.start()
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.session = requests.Session()

    def sweep(self, advance=0.0):
        """Advance the clock and run one watchdog step."""
        sweep(self.service, self.clock.advance(advance))

    def get(self, path, **kwargs):
        return self.session.get(self.url + path, timeout=10, **kwargs)

    def post(self, path, **kwargs):
        return self.session.post(self.url + path, timeout=10, **kwargs)

    def dispatch(self, expect=(200, 202), **body):
        """POST /api/dispatch-task with a DELIST default; return the JSON answer."""
        body.setdefault("task_type", "DELIST")
        body.setdefault("data", {"product_ids": ["123", "456"]})
        response = self.post("/api/dispatch-task", json=body)
        assert response.status_code in expect, response.text
        return response.json()

    def task(self, task_id):
        """The task as ``GET /api/task/{id}/status`` shows it."""
        return self.get(f"/api/task/{task_id}/status").json()["task"]

    def delivered(self, task_id):
        """True once the device acknowledged the task's ``new_task`` (``delivered_at`` is set; it is not started)."""
        return self.get(f"/api/task/{task_id}").json()["task"]["delivered_at"] is not None

    def stop(self):
        """Stop accepting, end every connection and background greenlet of the app, then close the store."""
        self.session.close()
        self.http.close()
        shutdown(self.app)
        self.http.stop(timeout=1)


class NoAckClient(socketio.Client):
    """A Socket.IO client that never acknowledges ``new_task``, like the Android app."""

    def _handle_event(self, namespace, id, data):
        if data and data[0] == "new_task":
            id = None
        return super()._handle_event(namespace, id, data)


class Device:
    """A phone on a real Socket.IO connection that records every event it receives."""

    def __init__(self, url, device_id, ack_new_task=True, token=None, **device_info):
        self.url = url
        self.device_id = device_id
        self.auth = {"token": token} if token else None
        self.device_info = {"type": "android", "version": "13", **device_info}
        self.sio = (socketio.Client if ack_new_task else NoAckClient)(reconnection=False)
        self.events = defaultdict(list)
        self.sio.on("*", self._record)

    def _record(self, event, *args):
        self.events[event].append(args[0] if args else None)

    def connect(self, register=True):
        self.sio.connect(self.url, transports=["websocket"], wait_timeout=5, auth=self.auth)
        if register:
            answer = self.call("device_register", {"device_id": self.device_id, "device_info": self.device_info})
            assert answer["success"], answer
        return self

    def call(self, event, data=None):
        """Emit and wait for the ack."""
        return self.sio.call(event, data, timeout=5)

    def wait(self, event, count=1, timeout=5.0):
        """Wait until ``count`` events of this name arrived; return the last."""
        deadline = time.time() + timeout
        while len(self.events[event]) < count:
            assert time.time() < deadline, f"{self.device_id}: no {event} #{count}; got {dict(self.events)}"
            time.sleep(0.01)
        return self.events[event][count - 1]

    def progress(self, task_id, progress, message=None):
        return self.call("task_progress", {"task_id": task_id, "progress": progress, "message": message})

    def result(self, task_id, success=True, **result):
        return self.call("task_result", {"task_id": task_id, "result": {"success": success, **result}})

    def disconnect(self):
        if self.sio.connected:
            self.sio.disconnect()


@pytest.fixture
def server(tmp_path):
    """A fresh server with its own SQLite file."""
    live = LiveServer(tmp_path / "taskserver.db")
    yield live
    live.stop()


@pytest.fixture
def devices(server):
    """A factory of connected, registered devices; all are disconnected at the end."""
    made = []

    def make(device_id, register=True, **kwargs):
        device = Device(server.url, device_id, **kwargs).connect(register=register)
        made.append(device)
        return device

    yield make
    for device in made:
        device.disconnect()


def wait_until(predicate, timeout=5.0, message="condition"):
    """Poll ``predicate`` until it is true."""
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {message}"
        time.sleep(0.01)
