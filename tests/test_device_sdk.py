"""The device SDK against a real server: handlers run tasks, results survive outages, cancels reach handlers.

Real clients (``DeviceAgent``) on real connections; outcomes are read over HTTP. Nothing sleeps for server time."""

import contextlib
import socket
import subprocess
import sys
import threading

import gevent
import pytest
from gevent.server import StreamServer
from test_run_server import ROOT

from conftest import LiveServer, wait_until
from taskserver.device import DeviceAgent

FAST = {"heartbeat_interval": 0.2, "reconnection_delay": 0.05, "reconnection_delay_max": 0.2, "ack_timeout": 3}


@pytest.fixture
def agents(server):
    """A factory of started, registered agents; all are stopped at the end."""
    made = []

    def make(device_id="android_001", handlers=None, url=None, **options):
        agent = DeviceAgent(url or server.url, device_id, handlers=handlers or {}, **{**FAST, **options}).start()
        made.append(agent)
        wait_until(lambda: agent.registered, message=f"{device_id} to register")
        return agent

    yield make
    for agent in made:
        agent.stop()


class Gate:
    """Holds a handler until the test opens it; records the tasks it saw."""

    def __init__(self):
        self.opened = threading.Event()
        self.tasks = []

    def handler(self, task, progress):
        self.tasks.append(task)
        progress(50, "处理中")
        self.opened.wait(10)
        return {"processed_count": 2, "message": "下架完成"}


def device_of(server, device_id):
    return next(d for d in server.get("/api/devices").json()["devices"] if d["device_id"] == device_id)


def ended(server, task_id):
    return server.task(task_id)["status"] in ("completed", "failed", "cancelled")


def test_registers_heartbeats_and_runs_a_task_through_its_handler(server, agents):
    gate = Gate()
    agent = agents("android_001", {"DELIST": gate.handler}, device_name="小米手机", token="secret")
    wait_until(lambda: device_of(server, "android_001")["last_heartbeat"] is not None, message="a heartbeat")
    assert device_of(server, "android_001")["device_name"] == "小米手机"

    task_id = server.dispatch()["task_id"]
    wait_until(lambda: server.task(task_id)["progress"] == 50, message="progress over HTTP")
    task = server.task(task_id)
    assert task["status"] == "running" and task["progress_message"] == "处理中"
    assert agent.running == [task_id] and gate.tasks[0].data["product_ids"] == ["123", "456"]
    assert gate.tasks[0].attempt == 1

    gate.opened.set()
    wait_until(lambda: ended(server, task_id), message="the result")
    task = server.task(task_id)
    assert task["status"] == "completed" and task["progress"] == 100
    assert task["result"]["success"] and task["result"]["processed_count"] == 2
    assert task["result"]["execution_time"] >= 0
    wait_until(lambda: agent.stats["completed"] == 1, message="the ack")
    assert agent.outbox == [] and agent.running == []

    agent.stop()
    assert not agent.connected
    wait_until(lambda: device_of(server, "android_001")["status"] == "offline", message="the device offline")


@pytest.mark.parametrize(
    ("outcome", "status", "error_code"),
    [
        (None, "completed", None),
        (True, "completed", None),
        (False, "failed", "TASK_FAILED"),
        ({"success": False, "error_code": "LOGIN_EXPIRED", "message": "登录已过期"}, "failed", "LOGIN_EXPIRED"),
        ("not a result", "failed", "HANDLER_ERROR"),
    ],
)
def test_what_a_handler_returns_becomes_the_result(server, agents, outcome, status, error_code):
    agent = agents(handlers={"DELIST": lambda task, progress: outcome})
    task_id = server.dispatch()["task_id"]
    wait_until(lambda: ended(server, task_id), message="the result")
    task = server.task(task_id)
    assert (task["status"], task["error_code"]) == (status, error_code)
    wait_until(lambda: sum(agent.stats.values()) == 1 and not agent.outbox, message="the ack")


def test_a_result_the_server_finds_invalid_is_sent_trimmed_so_the_task_still_ends(server, agents):
    agent = agents(handlers={"DELIST": lambda task, progress: {"processed_count": -1}})
    task_id = server.dispatch()["task_id"]
    wait_until(lambda: ended(server, task_id), message="the trimmed result")
    task = server.task(task_id)
    assert task["status"] == "completed" and "processed_count" in task["result"]["message"]
    wait_until(lambda: agent.stats["completed"] == 1 and not agent.outbox, message="the ack")


def test_a_handler_exception_becomes_a_failed_result(server, agents):
    def broken(task, progress):
        raise ValueError("商品页面打不开")

    agents(handlers={"DELIST": broken})
    task_id = server.dispatch()["task_id"]
    wait_until(lambda: ended(server, task_id), message="the result")
    task = server.task(task_id)
    assert task["status"] == "failed" and task["error_code"] == "HANDLER_ERROR"
    assert task["result"]["success"] is False and "商品页面打不开" in task["result"]["message"]


def test_an_unsupported_task_type_becomes_a_failed_result(server, agents):
    agents(handlers={"DELIST": Gate().handler})
    task_id = server.dispatch(task_type="COLLECT", data={"target_url": "https://example.com/shop"})["task_id"]
    wait_until(lambda: ended(server, task_id), message="the result")
    task = server.task(task_id)
    assert task["status"] == "failed" and task["error_code"] == "UNSUPPORTED_TASK_TYPE"


def test_cancel_reaches_the_running_handler_and_the_task_stays_cancelled(server, agents):
    seen = threading.Event()

    def patient(task, progress):
        progress(10)
        seen.set()
        assert task.cancelled.wait(10)
        return {"processed_count": 1}  # ignored: a cancelled task reports TASK_CANCELLED

    agent = agents(handlers={"DELIST": patient})
    task_id = server.dispatch()["task_id"]
    wait_until(seen.is_set, message="the handler to start")
    assert server.post(f"/api/task/{task_id}/cancel").json()["task"]["status"] == "cancelled"

    wait_until(lambda: agent.stats["failed"] == 1, message="the cancel confirmation to be acknowledged")
    assert agent.outbox == [] and agent.running == []
    task = server.task(task_id)
    assert task["status"] == "cancelled" and task["error_code"] == "TASK_CANCELLED"
    kinds = [event["kind"] for event in server.service.store.task_events(task_id)]
    assert "cancel_confirmed" in kinds


def test_a_result_the_server_will_never_take_leaves_the_outbox(server, agents, cable):
    gate = Gate()
    agent = agents(handlers={"DELIST": gate.handler}, url=cable.url)
    task_id = server.dispatch(timeout=30, max_retries=1)["task_id"]
    wait_until(lambda: server.task(task_id)["progress"] == 50, message="the task to run")
    cable.unplug()
    wait_until(lambda: device_of(server, "android_001")["status"] == "offline", message="the device offline")
    gate.opened.set()
    wait_until(lambda: len(agent.outbox) == 1, message="the result to wait in the outbox")

    server.sweep(advance=30)  # the attempt times out while the device is away; a retry is scheduled
    cable.plug()
    wait_until(lambda: agent.stats["refused"] == 1, message="the stale result to be refused")
    assert agent.outbox == []
    task = server.task(task_id)
    assert task["status"] == "pending" and task["attempt"] == 2 and task["error_code"] == "TASK_TIMEOUT"


def test_the_cancel_of_a_timed_out_attempt_is_answered_and_stops_only_that_attempt(server, agents):
    opened, handled = threading.Event(), []

    def handler(task, progress):
        handled.append(task)
        progress(50)
        if task.attempt == 1:
            return task.cancelled.wait(10)  # cancelled: the agent answers TASK_CANCELLED whatever this returns
        return {"processed_count": 2} if opened.wait(10) else False

    agent = agents(handlers={"DELIST": handler})
    task_id = server.dispatch(timeout=30, max_retries=1)["task_id"]
    wait_until(lambda: server.task(task_id)["progress"] == 50, message="attempt 1 to run")
    server.sweep(advance=30)  # attempt 1 times out: the device is told to stop it; attempt 2 waits 5 s
    wait_until(lambda: agent.stats["failed"] == 1, message="the answer to the cancel to be acknowledged")
    confirmed = [e for e in server.service.store.task_events(task_id) if e["kind"] == "cancel_confirmed"]
    assert [event["attempt"] for event in confirmed] == [1]
    assert server.task(task_id)["status"] == "pending"

    server.sweep(advance=5)
    wait_until(lambda: len(handled) == 2 and server.task(task_id)["status"] == "running", message="attempt 2")
    sid = device_of(server, "android_001")["connection_info"]["sid"]
    stale = {"type": "cancel_task", "task_id": task_id, "attempt": 1}  # a late copy of the first cancel
    server.app.extensions["socketio"].emit("cancel_task", stale, to=sid, namespace="/")
    acked = threading.Event()  # a new_task sent after it: once acknowledged, the cancel has been handled
    server.service.notifier.new_task(sid, server.service.store.get_task(task_id), lambda *ack: acked.set())
    wait_until(acked.is_set, message="the resent new_task to be acknowledged")
    assert not handled[1].cancelled.is_set() and agent.running == [task_id]

    opened.set()
    wait_until(lambda: ended(server, task_id), message="attempt 2 to finish")
    task = server.task(task_id)
    assert task["status"] == "completed" and task["attempt"] == 2


def test_after_the_server_drops_the_connection_the_agent_registers_again(server, agents):
    agent = agents(handlers={"DELIST": lambda task, progress: {"processed_count": 2}})
    first_sid = device_of(server, "android_001")["connection_info"]["sid"]
    server.service.notifier.disconnect(first_sid)
    wait_until(lambda: device_of(server, "android_001")["connection_info"]["sid"] != first_sid, message="a new sid")
    wait_until(lambda: agent.registered, message="registration again")
    assert device_of(server, "android_001")["status"] == "online"

    task_id = server.dispatch()["task_id"]
    wait_until(lambda: ended(server, task_id), message="the result")
    assert server.task(task_id)["status"] == "completed"


def test_a_device_token_lets_the_agent_in_and_a_wrong_one_does_not(tmp_path):
    live = LiveServer(tmp_path / "taskserver.db", DEVICE_TOKENS=("fleet-secret",))
    member = DeviceAgent(live.url, "android_001", token="fleet-secret", **FAST).start()
    stranger = DeviceAgent(live.url, "android_002", token="guessed", **FAST).start()
    try:
        wait_until(lambda: member.registered, message="the device with the fleet token to register")
        wait_until(lambda: stranger.last_error is not None, message="the wrong token to be refused")
        assert stranger.last_error["error_code"] == "UNAUTHORIZED" and not stranger.connected
        assert [d["device_id"] for d in live.get("/api/devices").json()["devices"]] == ["android_001"]
    finally:
        member.stop()
        stranger.stop()
        live.stop()


class Cable:
    """A TCP relay between an agent and the server that a test can unplug, as when a phone loses its network."""

    def __init__(self, server):
        self.target = ("127.0.0.1", server.http.server_port)
        self.plugged = True
        self.sockets = []
        self.relay = StreamServer(("127.0.0.1", 0), self._connect)
        self.relay.start()
        self.url = f"http://127.0.0.1:{self.relay.server_port}"

    def _connect(self, downstream, address):
        if not self.plugged:
            return downstream.close()
        upstream = socket.create_connection(self.target)
        self.sockets += [downstream, upstream]
        gevent.joinall([gevent.spawn(self._pipe, downstream, upstream), gevent.spawn(self._pipe, upstream, downstream)])

    def _pipe(self, source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        self._cut(source, sink)

    @staticmethod
    def _cut(*sockets):
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def unplug(self):
        """Cut every relayed connection and refuse new ones."""
        self.plugged = False
        self._cut(*self.sockets)
        self.sockets = []

    def plug(self):
        self.plugged = True

    def close(self):
        self.unplug()
        self.relay.stop()


@pytest.fixture
def cable(server):
    relay = Cable(server)
    yield relay
    relay.close()


def test_a_result_made_while_the_network_is_down_is_delivered_after_it_returns(server, agents, cable):
    gate = Gate()
    agent = agents(handlers={"DELIST": gate.handler}, url=cable.url)
    task_id = server.dispatch()["task_id"]
    wait_until(lambda: server.task(task_id)["progress"] == 50, message="the task to run")

    cable.unplug()
    wait_until(lambda: not agent.connected, message="the agent to see the network gone")
    wait_until(lambda: device_of(server, "android_001")["status"] == "offline", message="the device offline")
    gate.opened.set()
    wait_until(lambda: len(agent.outbox) == 1, message="the result to wait in the outbox")
    assert agent.outbox[0]["task_id"] == task_id and agent.outbox[0]["result"]["success"]
    assert server.task(task_id)["status"] == "running"

    cable.plug()
    wait_until(lambda: agent.outbox == [], message="the outbox to empty")
    task = server.task(task_id)
    assert task["status"] == "completed" and task["result"]["processed_count"] == 2
    assert agent.stats["completed"] == 1 and len(gate.tasks) == 1
    assert device_of(server, "android_001")["status"] == "online"


def test_a_resent_new_task_is_not_run_twice(server, agents):
    gate = Gate()
    agent = agents(handlers={"DELIST": gate.handler})
    task_id = server.dispatch()["task_id"]
    wait_until(lambda: server.task(task_id)["progress"] == 50, message="the task to run")
    sid = device_of(server, "android_001")["connection_info"]["sid"]
    stored = server.service.store.get_task(task_id)

    def resend():
        """Send the same ``new_task`` again, as the server does after a reconnect; wait for the device's ack."""
        acked = threading.Event()
        server.service.notifier.new_task(sid, stored, lambda *ack: acked.set())
        wait_until(acked.is_set, message="the resent new_task to be acknowledged")

    resend()
    assert agent.running == [task_id]
    gate.opened.set()
    wait_until(lambda: agent.stats["completed"] == 1, message="the result")
    resend()
    assert len(gate.tasks) == 1 and agent.running == []
    assert server.task(task_id)["status"] == "completed"


def test_the_sdk_imports_without_the_server_stack():
    """A phone or a script has python-socketio only: importing the SDK must not pull in Flask, gevent or the store."""
    heavy = ["flask", "flask_socketio", "gevent", "taskserver.factory", "taskserver.store", "sqlite3"]
    probe = f"import sys; from taskserver.device import DeviceAgent; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
