"""The plain WebSocket transport at /ws and at / (upgrade), with websocket-client: same events, same rules."""

import contextlib
import json
import socket

import gevent
import pytest
import websocket

from conftest import LiveServer, wait_until
from taskserver.realtime.notifier import MAX_PENDING_ACKS
from taskserver.realtime.plainws import MAX_QUEUED_FRAMES


class PlainDevice:
    """A device speaking JSON frames ``{"event", "data", "id"?}`` over a plain WebSocket."""

    def __init__(self, url, path="/ws", **options):
        self.ws = websocket.create_connection(url.replace("http://", "ws://") + path, timeout=5, **options)
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
    wait_until(lambda: server.delivered(task_id), message="the ack to record delivery")
    assert server.task(task_id)["status"] == "dispatched"  # delivered, not started

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
    assert phone.wait("cancel_task")["data"] == {"type": "cancel_task", "task_id": task_id, "attempt": 1}
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


def test_an_ack_callback_that_raises_leaves_the_connection_open(server, plain, monkeypatch):
    phone = plain()
    phone.call("device_register", {"device_id": "autojs_1"})

    def explode(*ack):
        raise RuntimeError("the store went away")

    monkeypatch.setattr(server.service.dispatcher, "task_delivered", explode)  # what a new_task ack runs
    task_id = server.dispatch()["task_id"]
    phone.send("ack", None, id=phone.wait("new_task")["id"])
    phone.send("ack", None, id=[1])  # an id no callback could have
    assert phone.call("heartbeat", {"device_id": "autojs_1"})["success"]
    assert phone.call("task_result", {"task_id": task_id, "result": {"success": True}})["status"] == "completed"
    assert server.get("/api/devices").json()["devices"][0]["status"] == "online"


def statuses(live):
    return {device["device_id"]: device["status"] for device in live.get("/api/devices").json()["devices"]}


def answer_pings(device):
    """Read everything, answering pings as websocket-client does by itself, and send nothing else."""
    with contextlib.suppress(websocket.WebSocketException, OSError):
        while True:
            device.ws.recv_data_frame(control_frame=True)


def test_plain_websockets_are_pinged_and_a_silent_one_is_closed_within_the_heartbeat_timeout(tmp_path):
    # No ping loop: the test sends each round, and silence is judged on the server's (fake) clock against the
    # default 90 s heartbeat timeout, so the test decides when time passes.
    live = LiveServer(tmp_path / "pings.db", PLAIN_WS_PING_INTERVAL=0)
    sockets = live.app.extensions["plainws"]
    alive, dead = PlainDevice(live.url), PlainDevice(live.url)
    connections = {}
    for device, device_id in ((alive, "autojs_alive"), (dead, "autojs_dead")):
        connections[device_id] = sockets._connections[device.wait("connected")["data"]["sid"]]
        device.call("device_register", {"device_id": device_id})
    reader = gevent.spawn(answer_pings, alive)  # from here on neither sends a message; `dead` does not even read
    try:
        for _ in range(2):
            now = live.clock.advance(40)
            sockets.ping_all()
            wait_until(lambda now=now: connections["autojs_alive"].heard_at == now, message="a pong at the new time")
        assert statuses(live) == {"autojs_alive": "online", "autojs_dead": "online"}  # 80 s: not yet
        live.clock.advance(40)  # 120 s without a frame from `dead`
        sockets.ping_all()
        wait_until(lambda: statuses(live)["autojs_dead"] == "offline", message="the silent device to go offline")
        with pytest.raises((websocket.WebSocketException, OSError)):
            while True:  # what the server sent before it closed the connection, then the end
                dead.ws.recv()
        assert statuses(live)["autojs_alive"] == "online"
        wait_until(lambda: connections["autojs_dead"].writer.dead, message="the writer to end with the connection")
    finally:
        reader.kill()
        dead.close()
        live.stop()


def test_the_server_pings_plain_websockets_by_itself(tmp_path):
    live = LiveServer(tmp_path / "pinging.db", PLAIN_WS_PING_INTERVAL=0.05)
    device = PlainDevice(live.url)
    try:
        device.wait("connected")
        frame = device.ws.recv_data_frame(control_frame=True)[1]
        assert frame.opcode == websocket.ABNF.OPCODE_PING
    finally:
        device.close()
        live.stop()


def test_a_client_that_stops_reading_is_cut_off_past_the_send_queue_bound(tmp_path):
    live = LiveServer(tmp_path / "slow.db", DEVICE_EVENT_RATE=0)
    try:
        slow = PlainDevice(live.url, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
        slow.call("device_register", {"device_id": "autojs_slow"})
        bystander = PlainDevice(live.url)
        bystander.call("device_register", {"device_id": "autojs_other"})
        # An unknown event is answered with an error frame and an ack, each naming it. 300 events with 10 KB names
        # bring 6 MB of answers, more than the socket buffers hold (4 MB at most with Linux's default tcp_wmem);
        # then 1,000 small ones add 2,000 frames to the server's queue for `slow`, and past MAX_QUEUED_FRAMES the
        # server closes the connection.
        with contextlib.suppress(websocket.WebSocketException, OSError):  # sending may fail once it is closed
            for sent in range(300 + MAX_QUEUED_FRAMES):
                slow.send("x" * 10_000 if sent < 300 else "fly", {}, id=sent)
        wait_until(lambda: statuses(live)["autojs_slow"] == "offline", timeout=30, message="the slow device cut off")
        with pytest.raises((websocket.WebSocketException, OSError)):
            while True:  # what the server sent before it closed the connection, then the end
                slow.ws.recv()
        assert bystander.call("heartbeat", {"device_id": "autojs_other"})["success"]
        slow.close()
        bystander.close()
    finally:
        live.stop()
