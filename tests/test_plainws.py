"""The plain WebSocket transport at /ws and at / (upgrade), with websocket-client: same events, same rules."""

import json

import pytest
import websocket

from conftest import wait_until
from taskserver.realtime.notifier import MAX_PENDING_ACKS


class PlainDevice:
    """A device speaking JSON frames ``{"event", "data", "id"?}`` over a plain WebSocket."""

    def __init__(self, url, path="/ws"):
        self.ws = websocket.create_connection(url.replace("http://", "ws://") + path, timeout=5)
        self.frames = []
        self._ids = iter(range(1, 10**6))

    def send(self, event, data=None, **extra):
        self.ws.send(json.dumps({"event": event, "data": data, **extra}))

    def call(self, event, data=None):
        """Send with an id and return the ack's data."""
        ack_id = next(self._ids)
        self.send(event, data, id=ack_id)
        return self.wait("ack", lambda frame: frame.get("id") == ack_id)["data"]

    def wait(self, event, match=lambda frame: True):
        """Read frames until one of ``event`` that ``match``es arrives (earlier frames are kept)."""
        for frame in self.frames:
            if frame["event"] == event and match(frame):
                self.frames.remove(frame)
                return frame
        while True:
            frame = json.loads(self.ws.recv())
            if frame["event"] == event and match(frame):
                return frame
            self.frames.append(frame)

    def close(self):
        self.ws.close()


@pytest.fixture
def plain(server):
    made = []

    def make(path="/ws"):
        device = PlainDevice(server.url, path)
        made.append(device)
        return device

    yield make
    for device in made:
        device.close()


@pytest.mark.parametrize("path", ["/ws", "/"])
def test_task_flow_over_plain_websocket(server, plain, path):
    phone = plain(path)
    assert phone.wait("connected")["data"]["message"] == "连接成功"
    answer = phone.call("device_register", {"device_id": "autojs_1", "device_info": {"type": "autojs"}})
    assert answer["success"] and answer["message"] == "注册成功"
    assert phone.wait("register_success")["data"]["device_id"] == "autojs_1"

    task_id = server.dispatch()["task_id"]
    new_task = phone.wait("new_task")
    assert new_task["data"]["task_id"] == task_id and new_task["data"]["type"] == "new_task"
    phone.send("ack", None, id=new_task["id"])
    wait_until(lambda: server.task(task_id)["status"] == "running", message="ack to mark running")

    assert phone.call("heartbeat", {"device_id": "autojs_1", "timestamp": 1758090600000})["success"]
    assert phone.wait("heartbeat_ack")["data"]["server_time"]
    assert phone.call("task_progress", {"task_id": task_id, "progress": 50})["status"] == "running"
    assert phone.call("task_result", {"task_id": task_id, "result": {"success": True}})["status"] == "completed"
    assert phone.wait("task_result_ack")["data"] == {"task_id": task_id, "status": "received"}
    assert server.get("/").status_code == 200  # plain HTTP on / still works beside the upgrade


def test_bad_frames_get_errors_and_the_connection_stays(server, plain):
    phone = plain()
    phone.ws.send("not json")
    assert phone.wait("error")["data"]["error_code"] == "VALIDATION_ERROR"
    phone.ws.send(json.dumps(["device_register"]))
    assert phone.wait("error")["data"]["error_code"] == "VALIDATION_ERROR"
    assert phone.call("heartbeat", {"device_id": "x"})["error_code"] == "NOT_REGISTERED"
    assert phone.call("fly", {})["error_code"] == "UNKNOWN_EVENT"
    assert phone.call("device_register", {"device_id": ""})["error_code"] == "VALIDATION_ERROR"
    assert phone.wait("register_error")["data"]["error_code"] == "VALIDATION_ERROR"
    assert phone.call("device_register", {"device_id": "autojs_1"})["success"]


@pytest.mark.parametrize(
    "frame",
    [
        '{"event": "heartbeat", "id": %s, "data": {}}' % ("9" * 400),
        '{"event": "heartbeat", "id": "\\ud800", "data": {}}',
        '{"event": "fly\\ud800", "data": {}}',
        '{"event": "heartbeat", "id": NaN, "data": {}}',
    ],
    ids=["huge-id", "surrogate-id", "surrogate-event", "nan-id"],
)
def test_unsendable_envelope_is_refused_and_the_connection_stays(server, plain, frame):
    phone = plain()
    phone.ws.send(frame)
    assert phone.wait("error")["data"]["error_code"] == "VALIDATION_ERROR"
    assert phone.call("device_register", {"device_id": "autojs_1"})["success"] is True
    refused = phone.call("device_register", {"device_id": "autojs_1", "device_name": "\ud800"})
    assert refused["error_code"] == "VALIDATION_ERROR" and "device_name" in refused["errors"]
    assert phone.call("heartbeat", {"device_id": "autojs_1", "timestamp": 10**400})["error_code"] == "VALIDATION_ERROR"
    assert phone.call("heartbeat", {"device_id": "autojs_1"})["success"] is True


def test_lifecycle_rules_hold_on_plain_websocket(server, plain):
    phone = plain()
    phone.call("device_register", {"device_id": "autojs_1"})
    task_id = server.dispatch(timeout=10)["task_id"]
    phone.wait("new_task")
    server.sweep(advance=10)
    assert phone.wait("cancel_task")["data"] == {"type": "cancel_task", "task_id": task_id}
    late = phone.call("task_result", {"task_id": task_id, "result": {"success": True}})
    assert late["error_code"] == "TASK_FINISHED"

    replacement = plain()
    replacement.call("device_register", {"device_id": "autojs_1"})
    assert phone.wait("error", lambda frame: frame["data"]["error_code"] == "DEVICE_REPLACED")
    replacement.close()
    wait_until(lambda: server.get("/api/devices").json()["devices"][0]["status"] == "offline")


def test_socketio_and_plain_devices_share_one_fleet(server, plain, devices):
    plain_phone = plain()
    plain_phone.call("device_register", {"device_id": "autojs_1"})
    sio_phone = devices("android_001")
    first, second = server.dispatch(), server.dispatch()
    assert {first["device_id"], second["device_id"]} == {"autojs_1", "android_001"}
    listed = {d["device_id"]: d["status"] for d in server.get("/api/devices").json()["devices"]}
    assert listed == {"autojs_1": "busy", "android_001": "busy"}
    assert sio_phone.wait("new_task")["task_id"] in (first["task_id"], second["task_id"])


def test_plain_http_get_on_ws_path_is_a_json_error(server):
    response = server.get("/ws")
    assert response.status_code in (400, 404) and response.json()["success"] is False


def test_unanswered_new_task_acks_are_bounded(server, plain):
    phone = plain()
    sid = phone.wait("connected")["data"]["sid"]
    phone.call("device_register", {"device_id": "autojs_1", "device_info": {"max_concurrent_tasks": 100}})
    for _ in range(2):
        task_ids = [server.dispatch()["task_id"] for _ in range(100)]
        for _ in task_ids:
            phone.wait("new_task")
        for task_id in task_ids:
            server.post(f"/api/task/{task_id}/cancel")
    assert len(server.app.extensions["plainws"].ack_callbacks(sid)) == MAX_PENDING_ACKS
