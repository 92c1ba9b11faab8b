"""The spec's JavaScript device example, run with Node's socket.io-client against a real server.

``tests/js/spec_example.js`` connects with ``io(url)`` as the spec does, registers, sends a heartbeat and works every
``new_task`` (``task_progress`` then ``task_result``), printing one JSON line per event it receives. The operator's
side is the spec's curl example, sent over HTTP.
"""

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import wait_until

JS_DIR = Path(__file__).parent / "js"
SPEC_NEW_TASK_FIELDS = {"type", "task_id", "task_type", "data", "created_at", "timeout"}
README_NEW_TASK_EXTRAS = {"priority", "attempt"}
SPEC_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")  # "2025-09-17T14:30:00"
pytestmark = pytest.mark.backends("sqlite", "postgresql")
CURL_BODY = {"task_type": "DELIST", "data": {"product_ids": ["123", "456"]}}


class NodeDevice:
    """``node spec_example.js <url> <device_id>``; its stdout JSON lines are collected as they arrive."""

    def __init__(self, url, device_id):
        self.lines = []
        self.process = subprocess.Popen(
            ["node", "spec_example.js", url, device_id],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(json.loads(line))

    def received(self, event):
        return [line["data"] for line in self.lines if line["event"] == event]

    def wait(self, event, timeout=10.0):
        """The first ``event`` line, waiting for it up to ``timeout`` seconds."""
        deadline = time.time() + timeout
        while not self.received(event):
            assert self.process.poll() is None, f"node exited {self.process.returncode}: {self.stderr()}"
            assert time.time() < deadline, f"node never printed {event}; got {self.lines}"
            time.sleep(0.02)
        return self.received(event)[0]

    def stderr(self):
        return self.process.stderr.read() if self.process.poll() is not None else "(still running)"

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def node_device(server):
    """The spec's JavaScript example, connected to ``server``; always killed at the end."""
    started = []

    def start(device_id="android_001"):
        device = NodeDevice(server.url.replace("http://", "ws://"), device_id)
        started.append(device)
        return device

    yield start
    for device in started:
        device.kill()


def listed_device(server, device_id):
    devices = server.get("/api/devices").json()["devices"]
    return next(device for device in devices if device["device_id"] == device_id)


def test_spec_javascript_example_runs_a_task_end_to_end(server, node_device):
    phone = node_device("android_001")
    registered = phone.wait("register_success")
    assert registered["device_id"] == "android_001" and registered["message"] == "注册成功"
    assert registered["active_tasks"] == []
    assert phone.wait("device_register:ack")["success"] is True
    assert phone.wait("heartbeat:ack")["success"] is True
    assert phone.wait("heartbeat_ack")["server_time"]

    response = server.post("/api/dispatch-task", json=CURL_BODY)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["success"] is True and answer["device_id"] == "android_001"
    assert answer["device_name"] == "我的手机" and answer["message"] == "任务分发成功"
    task_id = answer["task_id"]

    new_task = phone.wait("new_task")
    assert set(new_task) == SPEC_NEW_TASK_FIELDS | README_NEW_TASK_EXTRAS, new_task
    assert new_task["type"] == "new_task" and new_task["task_id"] == task_id
    assert new_task["task_type"] == "DELIST"
    assert new_task["data"]["product_ids"] == ["123", "456"]
    assert SPEC_TIME.match(new_task["created_at"]), new_task["created_at"]
    assert new_task["timeout"] == 300

    assert phone.wait("task_progress:ack") == {"success": True, "task_id": task_id, "status": "running", "progress": 50}
    assert phone.wait("task_result:ack") == {"success": True, "task_id": task_id, "status": "completed"}
    assert phone.wait("task_result_ack") == {"task_id": task_id, "status": "received"}
    assert phone.received("error") == [] and phone.received("connect_error") == []

    task = server.task(task_id)
    assert task["status"] == "completed" and task["progress"] == 100
    assert task["result"]["success"] is True and task["result"]["processed_count"] == 2
    assert task["result"]["message"] == "下架完成"
    assert task["result"]["data"]["details"] == ["商品123已下架", "商品456已下架"]

    listed = server.get("/api/tasks").json()
    summary = next(t for t in listed["tasks"] if t["task_id"] == task_id)
    assert summary["status"] == "completed" and summary["device_id"] == "android_001"
    assert summary["data"]["product_ids"] == ["123", "456"]

    device = listed_device(server, "android_001")
    assert device["status"] == "online" and device["device_name"] == "我的手机"
    assert device["connection_info"]["sid"] == phone.wait("connect")["id"]
    assert SPEC_TIME.match(device["connection_info"]["registered_at"])
    assert SPEC_TIME.match(device["last_heartbeat"])
    assert device["task_count"] == 0


def test_spec_example_device_is_offline_once_node_dies(server, node_device):
    """A second task also completes; when the node process dies, the device is listed offline, without a sid."""
    phone = node_device("android_002")
    phone.wait("register_success")
    task_id = server.dispatch(**CURL_BODY)["task_id"]
    phone.wait("task_result:ack")
    assert server.task(task_id)["status"] == "completed"

    phone.kill()
    wait_until(lambda: listed_device(server, "android_002")["status"] == "offline", timeout=10, message="offline")
    assert listed_device(server, "android_002")["connection_info"]["sid"] is None
