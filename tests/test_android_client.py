"""A client that behaves like the real Android app (``com.xianyu.taskexecutor``, see research/real-clients.md).

It registers on every connect, heartbeats with epoch milliseconds, never acks ``new_task``, reports progress 0 and
100 around the work, sends the app's result shape (``execution_time`` in epoch seconds, comma-joined item lists),
answers ``cancel_task`` with a ``TASK_CANCELLED`` result, and fails unknown or unimplemented types with the app's
error codes. Outcomes are checked over HTTP against a real server.
"""

import contextlib
import threading
import time
from collections import defaultdict

import pytest
import socketio

from conftest import LiveServer, NoAckClient, wait_until

pytestmark = pytest.mark.backends("sqlite", "postgresql")

IMPLEMENTED = {"DELIST"}
NOT_IMPLEMENTED = {"COLLECT", "UPLOAD"}


class AndroidApp:
    """The app's socket behaviour on python-socketio; ``hold()`` keeps tasks running until ``release()``."""

    def __init__(self, url, device_id, model="Mi 13", manufacturer="Xiaomi"):
        self.url = url
        self.device_id = device_id
        self.device_info = {
            "type": "android",
            "version": "13",
            "app_version": "1.0.0",
            "model": model,
            "manufacturer": manufacturer,
        }
        self.sio = NoAckClient(reconnection=True, reconnection_attempts=5, reconnection_delay=2, randomization_factor=0)
        self.received = defaultdict(list)  # event name -> payloads the server sent
        self.acks = defaultdict(list)  # event name -> acks of what the app sent
        self.running = {}  # task_id -> threading.Event set on cancel_task
        self.gate = threading.Event()
        self.gate.set()
        self.answering = threading.Event()  # cleared: a cancelled task is still stopping, its answer waits
        self.answering.set()
        self.sio.on("connect", self._on_connect)
        self.sio.on("new_task", self._on_new_task)
        self.sio.on("cancel_task", self._on_cancel_task)
        self.sio.on("*", self._record)

    # ---- what the app does ----

    def connect(self):
        self.sio.connect(self.url, wait_timeout=10)
        return self

    def disconnect(self):
        if self.sio.connected:
            self.sio.disconnect()

    def heartbeat(self):
        self._send("heartbeat", {"device_id": self.device_id, "timestamp": int(time.time() * 1000)})

    def _on_connect(self):
        self.received["connect"].append(None)
        register = {
            "device_id": self.device_id,
            "device_name": f"{self.device_id} 手机",
            "device_info": self.device_info,
        }
        self._send("device_register", register)

    def _on_new_task(self, task):
        self.received["new_task"].append(task)
        cancelled = self.running[task["task_id"]] = threading.Event()
        threading.Thread(target=self._execute, args=(task, cancelled), daemon=True).start()

    def _on_cancel_task(self, message):
        self.received["cancel_task"].append(message)
        cancelled = self.running.get(message["task_id"])
        if cancelled is not None:
            cancelled.set()

    def _execute(self, task, cancelled):
        task_id = task["task_id"]
        self._progress(task_id, 0, "开始执行任务")
        while not self.gate.is_set() and not cancelled.is_set():
            time.sleep(0.01)
        if cancelled.is_set():
            self.answering.wait()
            result = cancelled_result()
        else:
            result = run(task)
            self._progress(task_id, 100, "任务完成")
        self.running.pop(task_id, None)
        self._send("task_result", {"task_id": task_id, "result": result})

    def answer_cancel(self, task_id):
        """Send the app's answer to a ``cancel_task`` of this task (it names no attempt: the app knows none)."""
        self._send("task_result", {"task_id": task_id, "result": cancelled_result()})

    def _progress(self, task_id, progress, message):
        self._send("task_progress", {"task_id": task_id, "progress": progress, "message": message})

    def _send(self, event, data):
        """Emit like the app (no waiting); the ack is kept so the test can check the server's answer."""
        with contextlib.suppress(socketio.exceptions.BadNamespaceError):  # offline: the app drops it silently
            self.sio.emit(event, data, callback=lambda *ack: self.acks[event].append(ack[0] if ack else None))

    def _record(self, event, *args):
        self.received[event].append(args[0] if args else None)

    # ---- test controls ----

    def hold(self):
        self.gate.clear()

    def release(self):
        self.gate.set()

    def stop_slowly(self):
        """Answer cancels only once ``answer_cancels()`` is called (the app stops at a safe point of its work)."""
        self.answering.clear()

    def answer_cancels(self):
        self.answering.set()

    def wait_for(self, mapping, event, count=1, timeout=5.0):
        """Wait until ``mapping[event]`` has ``count`` entries; return the last of them."""
        wait_until(lambda: len(mapping[event]) >= count, timeout, f"{self.device_id}: {event} #{count} ({mapping})")
        return mapping[event][count - 1]

    def ack_for(self, event, task_id, status):
        """Wait for the ack of ``event`` about ``task_id`` that reports ``status``."""
        found = []

        def seen():
            found[:] = [a for a in self.acks[event] if a.get("task_id") == task_id and a.get("status") == status]
            return bool(found)

        wait_until(seen, 5.0, f"{event} ack {task_id} {status}; acks: {dict(self.acks)}")
        return found[0]


def items(processed, failed):
    return {
        "processed_items": ",".join(processed),
        "failed_items": ",".join(failed),
        "details": [f"商品{item}已下架" for item in processed],
    }


def cancelled_result():
    """The app's result for a task it stopped on ``cancel_task``."""
    result = {"success": False, "message": "任务已取消", "error_code": "TASK_CANCELLED"}
    return {**result, "processed_count": 0, "failed_count": 0, "execution_time": time.time(), "data": items([], [])}


def run(task):
    """The app's result for a task it was allowed to finish."""
    base = {"processed_count": 0, "failed_count": 0, "execution_time": time.time(), "data": items([], [])}
    if task["task_type"] in IMPLEMENTED:
        ids = task["data"]["product_ids"]
        return {**base, "success": True, "message": "下架完成", "processed_count": len(ids), "data": items(ids, [])}
    code = "FEATURE_NOT_IMPLEMENTED" if task["task_type"] in NOT_IMPLEMENTED else "UNSUPPORTED_TASK_TYPE"
    return {**base, "success": False, "message": f"不支持的任务类型: {task['task_type']}", "error_code": code}


@pytest.fixture
def app_server(database):
    """A real server that also knows a task type the app does not (``REFRESH_STOCK``)."""
    live = LiveServer(database, EXTRA_TASK_TYPES=("REFRESH_STOCK",))
    yield live
    live.stop()


@pytest.fixture
def android(app_server):
    """A factory of connected Android apps; all are disconnected at the end."""
    made = []

    def make(device_id="android_001", **kwargs):
        phone = AndroidApp(app_server.url, device_id, **kwargs).connect()
        made.append(phone)
        phone.wait_for(phone.received, "register_success")
        return phone

    yield make
    for phone in made:
        phone.disconnect()


def listed_device(server, device_id):
    return next(d for d in server.get("/api/devices").json()["devices"] if d["device_id"] == device_id)


def wait_status(server, task_id, status):
    wait_until(lambda: server.task(task_id)["status"] == status, 5.0, f"{task_id} {status}: {server.task(task_id)}")
    return server.task(task_id)


def test_registers_on_connect_and_heartbeats_in_epoch_millis(app_server, android):
    phone = android("android_001")
    assert phone.wait_for(phone.acks, "device_register")["success"] is True
    device = listed_device(app_server, "android_001")
    assert device["status"] == "online" and device["device_name"] == "android_001 手机"
    assert device["device_info"] == phone.device_info
    assert device["connection_info"]["sid"] == phone.sio.get_sid("/") and device["last_heartbeat"] is None

    phone.heartbeat()
    assert phone.wait_for(phone.acks, "heartbeat")["success"] is True
    assert phone.wait_for(phone.received, "heartbeat_ack")["server_time"]
    assert listed_device(app_server, "android_001")["last_heartbeat"] == phone.acks["heartbeat"][0]["server_time"]
    assert phone.received["error"] == []


def test_delist_task_completes_with_the_apps_result(app_server, android):
    phone = android("android_001")
    task_id = app_server.dispatch(task_type="DELIST", data={"product_ids": ["a", "b"]})["task_id"]

    assert phone.ack_for("task_progress", task_id, "running")["progress"] == 0
    assert phone.ack_for("task_result", task_id, "completed")["success"] is True
    progress_acks = [a["progress"] for a in phone.acks["task_progress"] if a["task_id"] == task_id]
    assert progress_acks == [0, 100]

    task = wait_status(app_server, task_id, "completed")
    assert task["progress"] == 100 and task["device_id"] == "android_001"
    result = task["result"]
    assert result["success"] is True and result["processed_count"] == 2 and result["failed_count"] == 0
    assert result["data"] == {"processed_items": "a,b", "failed_items": "", "details": ["商品a已下架", "商品b已下架"]}
    assert abs(result["execution_time"] - time.time()) < 60  # epoch seconds, stored as sent
    assert phone.received["error"] == []
    assert listed_device(app_server, "android_001")["task_count"] == 0


def test_cancel_is_answered_by_the_app_and_the_task_stays_cancelled(app_server, android):
    phone = android("android_001")
    phone.hold()
    task_id = app_server.dispatch()["task_id"]
    phone.ack_for("task_progress", task_id, "running")

    response = app_server.post(f"/api/task/{task_id}/cancel")
    assert response.status_code == 200, response.text
    assert phone.wait_for(phone.received, "cancel_task") == {"type": "cancel_task", "task_id": task_id, "attempt": 1}

    ack = phone.ack_for("task_result", task_id, "cancelled")
    assert ack["success"] is True
    receipt = {"task_id": task_id, "status": "received"}
    wait_until(lambda: receipt in phone.received["task_result_ack"], 5.0, "task_result_ack")
    task = app_server.task(task_id)
    assert task["status"] == "cancelled" and task["error_code"] == "TASK_CANCELLED"
    assert phone.received["error"] == []
    assert listed_device(app_server, "android_001")["status"] == "online"


def away_with_a_running_task(app_server, android):
    """A phone that started a task (and holds it), then went away until the server marked it offline."""
    phone = android("android_001")
    phone.hold()
    task_id = app_server.dispatch()["task_id"]
    phone.ack_for("task_progress", task_id, "running")
    phone.disconnect()
    wait_until(lambda: listed_device(app_server, "android_001")["status"] == "offline", 5.0, "offline")
    return phone, task_id


def test_cancel_sent_while_the_app_was_away_is_delivered_on_reconnect(app_server, android):
    phone, task_id = away_with_a_running_task(app_server, android)

    assert app_server.post(f"/api/task/{task_id}/cancel").status_code == 200
    phone.connect()
    assert phone.wait_for(phone.received, "register_success", count=2)["active_tasks"] == []
    assert phone.wait_for(phone.received, "cancel_task") == {"type": "cancel_task", "task_id": task_id, "attempt": 1}
    assert phone.ack_for("task_result", task_id, "cancelled")["success"] is True
    assert app_server.task(task_id)["status"] == "cancelled"
    assert phone.received["error"] == []
    assert listed_device(app_server, "android_001")["status"] == "online"


@pytest.mark.parametrize(
    ("task_type", "data", "error_code"),
    [
        ("REFRESH_STOCK", {"sku": "x1"}, "UNSUPPORTED_TASK_TYPE"),
        ("COLLECT", {"target_url": "https://example.com/shop"}, "FEATURE_NOT_IMPLEMENTED"),
    ],
)
def test_types_the_app_cannot_run_end_failed_with_its_error_code(app_server, android, task_type, data, error_code):
    phone = android("android_001")
    task_id = app_server.dispatch(task_type=task_type, data=data)["task_id"]

    assert phone.ack_for("task_result", task_id, "failed")["success"] is True
    task = wait_status(app_server, task_id, "failed")
    assert task["error_code"] == error_code
    assert task["result"]["success"] is False and task["result"]["error_code"] == error_code
    assert phone.received["error"] == []


def test_reconnect_registers_again_and_keeps_working(app_server, android):
    phone, task_id = away_with_a_running_task(app_server, android)
    phone.connect()
    again = phone.wait_for(phone.received, "register_success", count=2)
    assert again["active_tasks"] == [task_id]
    assert phone.wait_for(phone.acks, "device_register", count=2)["success"] is True
    assert listed_device(app_server, "android_001")["status"] == "busy"

    phone.release()
    phone.ack_for("task_result", task_id, "completed")
    assert wait_status(app_server, task_id, "completed")["result"]["processed_count"] == 2
    assert len(phone.received["new_task"]) == 1  # a running task is not sent again

    second = app_server.dispatch()["task_id"]
    phone.ack_for("task_result", second, "completed")
    assert wait_status(app_server, second, "completed")["device_id"] == "android_001"
    phone.heartbeat()
    assert phone.wait_for(phone.acks, "heartbeat")["success"] is True
    assert phone.received["error"] == []


# ---- issue 12: the app's answer to the cancel of an old attempt, and a retry on the same phone ----


def progress_acks(phone, task_id, status="running"):
    return [a for a in phone.acks["task_progress"] if a.get("task_id") == task_id and a.get("status") == status]


def events_of(server, task_id):
    return server.get(f"/api/task/{task_id}/events").json()["events"]


def away_past_the_grace_with_a_pinned_task(app_server, android):
    """A phone that started a task pinned to it (2 retries) and held it, then stayed away past the grace: attempt 1
    ended ``DEVICE_OFFLINE`` and attempt 2 waits for its backoff."""
    phone = android("android_001")
    phone.hold()
    task_id = app_server.dispatch(device_id="android_001", max_retries=2)["task_id"]
    phone.ack_for("task_progress", task_id, "running")
    phone.disconnect()
    wait_until(lambda: listed_device(app_server, "android_001")["status"] == "offline", 5.0, "offline")
    app_server.sweep(advance=120)
    task = app_server.task(task_id)
    assert task["status"] == "pending" and task["attempt"] == 2 and task["error_code"] == "DEVICE_OFFLINE"
    return phone, task_id


def test_a_phone_back_after_the_grace_gets_the_retry_and_no_cancel_that_would_stop_it(app_server, android):
    phone, task_id = away_past_the_grace_with_a_pinned_task(app_server, android)
    app_server.sweep(advance=5)  # attempt 2 is due, and waits for its phone

    phone.connect()
    retry = phone.wait_for(phone.received, "new_task", count=2)
    assert retry["task_id"] == task_id and retry["attempt"] == 2
    phone.wait_for(phone.acks, "device_register", count=2)  # all that registration sent has arrived
    assert phone.received["cancel_task"] == []  # the app would take cancel_task(task_id) for attempt 2
    wait_until(lambda: len(progress_acks(phone, task_id)) == 2, 5.0, "attempt 2 started")

    phone.answer_cancel(task_id)  # as if the cancel of attempt 1 had reached it: the answer names no attempt
    assert phone.ack_for("task_result", task_id, "running")["success"] is True
    task = app_server.task(task_id)
    assert task["status"] == "running" and task["attempt"] == 2
    confirmed = [event for event in events_of(app_server, task_id) if event["kind"] == "cancel_confirmed"]
    assert [event["attempt"] for event in confirmed] == [1]
    assert phone.received["error"] == []

    phone.release()
    phone.ack_for("task_result", task_id, "completed")
    assert wait_status(app_server, task_id, "completed")["attempt"] == 2


def test_a_phone_back_before_the_retry_is_due_gets_the_cancel_of_its_lost_attempt(app_server, android):
    phone, task_id = away_past_the_grace_with_a_pinned_task(app_server, android)

    phone.connect()
    assert phone.wait_for(phone.received, "cancel_task") == {"type": "cancel_task", "task_id": task_id, "attempt": 1}
    assert phone.ack_for("task_result", task_id, "pending")["success"] is True  # its answer, taken as such
    app_server.sweep(advance=5)
    retry = phone.wait_for(phone.received, "new_task", count=2)
    assert retry["task_id"] == task_id and retry["attempt"] == 2

    phone.release()
    phone.ack_for("task_result", task_id, "completed")
    assert wait_status(app_server, task_id, "completed")["attempt"] == 2
    assert phone.received["error"] == []


def test_the_apps_late_answer_to_a_timeout_cancel_does_not_fail_the_retry(app_server, android):
    phone = android("android_001")
    phone.hold()
    phone.stop_slowly()
    task_id = app_server.dispatch(device_id="android_001", max_retries=2, timeout=60)["task_id"]
    phone.ack_for("task_progress", task_id, "running")

    app_server.sweep(advance=60)
    assert phone.wait_for(phone.received, "cancel_task") == {"type": "cancel_task", "task_id": task_id, "attempt": 1}
    app_server.sweep(advance=5)
    assert phone.wait_for(phone.received, "new_task", count=2)["attempt"] == 2
    wait_until(lambda: len(progress_acks(phone, task_id)) == 2, 5.0, "attempt 2 started")

    phone.answer_cancels()  # attempt 1 has stopped: the answer to its cancel arrives during attempt 2
    assert phone.ack_for("task_result", task_id, "running")["success"] is True
    task = app_server.task(task_id)
    assert task["status"] == "running" and task["attempt"] == 2 and task["error_code"] == "TASK_TIMEOUT"
    assert phone.received["error"] == []

    phone.release()
    phone.ack_for("task_result", task_id, "completed")
    assert wait_status(app_server, task_id, "completed")["attempt"] == 2
