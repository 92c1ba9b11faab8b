"""Commits that fail for a while (a full or read-only disk): nothing is acknowledged that was not stored, readiness
says so, and once the disk takes writes again one sweep brings memory and the store back to the truth."""

import sqlite3

import pytest
from test_dashboard_feed import Console
from test_metrics import scrape, value

from conftest import Device, LiveServer, wait_until

DISK_FULL = sqlite3.OperationalError("database or disk is full")


@pytest.fixture
def failing(server):
    """Turn the store's commit failures on with ``failing(True)``, off with ``failing(False)``."""

    def switch(on):
        server.service.store.fail_commits(DISK_FULL if on else None)

    yield switch
    switch(False)


def listed(server):
    """``{device_id: status}`` as ``GET /api/devices`` shows them."""
    return {device["device_id"]: device["status"] for device in server.get("/api/devices").json()["devices"]}


def test_while_commits_fail_writes_answer_503_and_readiness_says_why(server, devices, failing):
    devices("android_001")
    failing(True)
    response = server.post("/api/dispatch-task", json={"task_type": "DELIST", "data": {"product_ids": ["1"]}})
    body = response.json()
    assert response.status_code == 503 and body["success"] is False and body["error_code"] == "STORE_UNAVAILABLE"
    assert "disk is full" in body["message"]
    store_check = server.get("/readyz").json()["checks"]["store"]
    assert store_check["ok"] is False and "StoreUnavailable" in store_check["reason"]
    assert server.get("/api/tasks").json()["total"] == 0  # nothing was stored, nothing is shown
    assert value(scrape(server), "taskserver_tasks_created_total", task_type="DELIST") == 0

    failing(False)
    assert server.get("/readyz").json()["checks"]["store"] == {"ok": True, "reason": None}
    task_id = server.dispatch()["task_id"]
    assert server.task(task_id)["status"] == "dispatched"
    assert value(scrape(server), "taskserver_tasks_created_total", task_type="DELIST") == 1


def test_a_device_that_left_while_commits_failed_is_offline_after_one_sweep(server, devices, failing):
    phone = devices("android_001")
    store = server.service.store
    failed = store.failed_commits
    failing(True)
    phone.disconnect()
    wait_until(lambda: store.failed_commits > failed, message="the commit of the disconnect to fail")
    failing(False)
    assert listed(server) == {"android_001": "online"}  # the store missed it: the disconnect was not committed
    server.sweep()
    assert listed(server) == {"android_001": "offline"}
    assert server.dispatch(expect=(202,))["status"] == "pending"  # no work goes to a device that is not there


def test_a_registration_undone_by_a_failed_commit_is_refused_then_closed_and_made_again(server, failing):
    phone = Device(server.url, "android_001").connect(register=False)
    try:
        failing(True)
        answer = phone.call("device_register", {"device_id": "android_001", "device_info": phone.device_info})
        assert answer["success"] is False and answer["error_code"] == "STORE_UNAVAILABLE"
        assert phone.wait("error")["error_code"] == "STORE_UNAVAILABLE"
        failing(False)
        assert listed(server) == {}
        server.sweep()  # memory had bound the connection: it is closed, so that the client registers again
        wait_until(lambda: not phone.sio.connected, message="the connection closed")
        assert server.service.connections.sid_of("android_001") is None
        phone.connect()
        assert listed(server) == {"android_001": "online"}
        assert phone.call("heartbeat", {"device_id": "android_001"})["success"] is True
    finally:
        phone.disconnect()


def test_consoles_hear_only_of_what_was_committed(tmp_path, devices):
    quiet = LiveServer(tmp_path / "quiet.db", DASHBOARD_FLUSH_INTERVAL=0)  # the feed flushes when the test says
    watcher = Console(quiet.url)
    feed = quiet.app.extensions["dashboard"]
    try:
        wait_until(lambda: feed.watchers, message="console watching")
        quiet.dispatch(expect=(202,))
        assert len(feed.flush()["tasks"]) == 1
        quiet.service.store.fail_commits(DISK_FULL)
        response = quiet.post("/api/dispatch-task", json={"task_type": "DELIST", "data": {"product_ids": ["1"]}})
        assert response.status_code == 503
        assert feed.flush() is None  # the task was never stored: no console may show it
    finally:
        quiet.service.store.fail_commits(None)
        watcher.close()
        quiet.stop()
