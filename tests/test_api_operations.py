"""Operating the fleet over HTTP against the real server: list filters, task and device detail, drain and forget,
health and readiness, the OpenAPI document, and the logs."""

import json
import logging
import os
import re
import socket
import sqlite3
import subprocess
import sys

import psycopg
import pytest
import requests
from openapi_spec_validator import validate

from conftest import Device, LiveServer, wait_until
from taskserver.logs import JsonFormatter
from taskserver.present import iso

pytestmark = pytest.mark.backends("sqlite", "postgresql")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tasks(server, query=""):
    response = server.get(f"/api/tasks{query}")
    assert response.status_code == 200, response.text
    return response.json()


def ids(answer):
    return [task["task_id"] for task in answer["tasks"]]


def delete(server, path):
    return server.session.delete(server.url + path, timeout=10)


def kinds(events):
    return [(event["kind"], event["actor"]) for event in events]


# ---- lists that scale ----


def test_task_filters_combine_and_total_counts_every_match(server, devices):
    phone_a, phone_b = devices("phone_a"), devices("phone_b")
    made = []  # (task_id, type, device), oldest first, 10 s apart
    for number, (task_type, device) in enumerate(
        [("DELIST", "phone_a"), ("COLLECT", "phone_b"), ("DELIST", "phone_b"), ("UPLOAD", None), ("DELIST", None)]
    ):
        data = {
            "DELIST": {"product_ids": [str(number)]},
            "COLLECT": {"target_url": "https://example.com/shop"},
            "UPLOAD": {"product_data": {"title": "商品"}},
        }[task_type]
        answer = server.dispatch(task_type=task_type, data=data, device_id=device)
        made.append(answer["task_id"])
        server.clock.advance(10)
    first, second, third, fourth, fifth = made
    phone_a.result(first)  # completed; phone_a now takes a waiting task
    phone_b.result(second, success=False, error_code="APP_CRASHED")  # failed

    everything = tasks(server)
    assert everything["total"] == 5 and ids(everything) == made[::-1]  # newest first
    assert tasks(server, "?status=completed")["total"] == 1
    both = tasks(server, "?status=completed&status=failed")
    assert ids(both) == [second, first] and both["total"] == 2
    assert ids(tasks(server, "?status=completed,failed")) == [second, first]
    assert ids(tasks(server, "?task_type=DELIST")) == [fifth, third, first]
    assert set(ids(tasks(server, "?device_id=phone_b"))) == {second, third}
    assert ids(tasks(server, "?task_type=DELIST&device_id=phone_b")) == [third]

    created = [server.service.store.get_task(task_id).created_at for task_id in made]
    window = tasks(server, f"?created_after={int(created[1] * 1000)}&created_before={int(created[3] * 1000)}")
    assert ids(window) == [third, second]  # created_after <= created_at < created_before
    assert ids(tasks(server, f"?created_before={iso(created[1])}")) == [first]  # ISO text, as the lists show it
    assert ids(tasks(server, f"?created_after={int(created[4] * 1000)}")) == [fifth]

    page = tasks(server, "?limit=2&offset=1")
    assert ids(page) == [fourth, third] and page["total"] == 5 and (page["limit"], page["offset"]) == (2, 1)
    assert tasks(server, "?offset=5")["tasks"] == [] and tasks(server, "?offset=5")["total"] == 5


@pytest.mark.parametrize(
    "query, field",
    [
        ("status=bogus", "status"),
        ("status=pending,bogus", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("created_after=yesterday", "created_after"),
        ("created_before=", "created_before"),
        ("created_after=2025-09-17T14:30:00&created_before=2025-09-17T14:00:00", "created_after"),
        ("task_type=" + "X" * 65, "task_type"),
        ("device_id=" + "d" * 129, "device_id"),
    ],
)
def test_bad_task_filters_get_validation_error(server, query, field):
    response = server.get(f"/api/tasks?{query}")
    body = response.json()
    assert response.status_code == 400 and body["error_code"] == "VALIDATION_ERROR", body
    assert body["success"] is False and body["message"] and field in body["errors"], body


def test_device_list_filters_by_status_and_disabled(server, devices):
    idle, full = devices("idle"), devices("full")
    gone = devices("gone")
    gone.disconnect()
    wait_until(lambda: server.service.store.get_device("gone").status == "offline")
    server.dispatch(device_id="full")
    full.wait("new_task")
    server.post("/api/device/idle/disable")

    def listed(query):
        response = server.get(f"/api/devices{query}")
        assert response.status_code == 200, response.text
        return sorted(device["device_id"] for device in response.json()["devices"])

    assert listed("") == ["full", "gone", "idle"]
    assert listed("?status=online") == ["idle"]
    assert listed("?status=busy") == ["full"]
    assert listed("?status=offline") == ["gone"]
    assert listed("?status=online,busy") == ["full", "idle"]
    assert listed("?status=online&status=offline") == ["gone", "idle"]
    assert listed("?disabled=true") == ["idle"]
    assert listed("?disabled=false&status=online,offline") == ["gone"]
    for bad in ("status=disabled", "status=", "disabled=maybe"):
        response = server.get(f"/api/devices?{bad}")
        assert response.status_code == 400 and response.json()["error_code"] == "VALIDATION_ERROR", bad
    assert idle.sio.connected


# ---- detail ----


def test_task_detail_shows_the_whole_task_with_its_attempts(server, devices):
    first, second = devices("phone_a"), devices("phone_b")
    started = server.clock()
    answer = server.dispatch(max_retries=1, timeout=30, priority=3, idempotency_key="order-7")
    task_id = answer["task_id"]
    owner, other = (first, second) if answer["device_id"] == "phone_a" else (second, first)
    owner.wait("new_task")
    wait_until(lambda: server.delivered(task_id), message="delivery ack")
    server.sweep(advance=30)  # the first attempt times out; the retry waits 5 s
    waiting = server.get(f"/api/task/{task_id}").json()["task"]
    assert waiting["status"] == "pending" and waiting["not_before"] == iso(server.clock() + 5)
    server.sweep(advance=5)
    other.wait("new_task")
    other.progress(task_id, 40, "半程")
    server.clock.advance(7)
    other.result(task_id, processed_count=2, message="下架完成")

    response = server.get(f"/api/task/{task_id}")
    assert response.status_code == 200
    task = response.json()["task"]
    assert task["task_id"] == task_id and task["task_type"] == "DELIST" and task["status"] == "completed"
    assert task["data"]["product_ids"] == ["123", "456"] and task["data"]["batch_size"] == 10
    assert task["device_id"] == other.device_id and task["attempt"] == 2 and task["max_retries"] == 1
    assert task["priority"] == 3 and task["timeout"] == 30 and task["idempotency_key"] == "order-7"
    assert task["result"]["processed_count"] == 2 and task["error_code"] is None and task["progress"] == 100
    assert task["created_at"] == iso(started) and task["finished_at"] == iso(server.clock())
    assert task["dispatched_at"] == iso(started + 35) and task["timeout_at"] is None
    assert [(a["attempt"], a["device_id"], a["outcome"], a["error_code"]) for a in task["attempts"]] == [
        (1, owner.device_id, "failed", "TASK_TIMEOUT"),
        (2, other.device_id, "completed", None),
    ]
    assert task["attempts"][0]["delivered_at"] == iso(started) and task["attempts"][0]["ended_at"] == iso(started + 30)

    assert server.get("/api/task/task_nope").json()["error_code"] == "TASK_NOT_FOUND"
    assert server.get("/api/task/task_nope").status_code == 404


def test_task_events_tell_its_history_with_time_and_actor(server, devices):
    first, second = devices("phone_a"), devices("phone_b")
    answer = server.dispatch(max_retries=1, timeout=60)
    task_id = answer["task_id"]
    owner, other = (first, second) if answer["device_id"] == "phone_a" else (second, first)
    owner.wait("new_task")
    wait_until(lambda: server.delivered(task_id), message="delivery ack")
    for progress in (10, 30, 60):
        owner.progress(task_id, progress, f"处理中 {progress}")
    server.sweep(advance=60)  # timeout, retry scheduled
    server.sweep(advance=5)
    other.wait("new_task")
    wait_until(lambda: server.delivered(task_id), message="second delivery ack")
    assert server.post(f"/api/task/{task_id}/cancel").status_code == 200
    other.wait("cancel_task")
    other.result(task_id, success=False, error_code="TASK_CANCELLED")

    response = server.get(f"/api/task/{task_id}/events")
    assert response.status_code == 200
    body = response.json()
    events = body["events"]
    assert body["task_id"] == task_id and body["total"] == len(events)
    assert kinds(events) == [
        ("created", "operator"),
        ("dispatched", "server"),
        ("delivered", owner.device_id),
        ("started", owner.device_id),  # the first progress, 10
        ("progress", owner.device_id),  # 30 crosses 25
        ("progress", owner.device_id),  # 60 crosses 50
        ("retry_scheduled", "watchdog"),
        ("dispatched", "server"),
        ("delivered", other.device_id),
        ("cancelled", "operator"),
        ("cancel_confirmed", other.device_id),
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", event["at"]) for event in events)
    dispatched = events[1]
    assert dispatched["device_id"] == owner.device_id and dispatched["message"] == f"分发到设备 {owner.device_id}"
    assert (
        events[4]["detail"] == {"progress": 30, "message": "处理中 30"}
        and events[4]["message"] == "进度 30%：处理中 30"
    )
    timeout = events[6]
    assert timeout["detail"]["error_code"] == "TASK_TIMEOUT" and timeout["at"] == iso(server.clock() - 5)
    assert timeout["message"].startswith("执行超时，将于")
    assert events[9]["message"] == "任务已取消"
    assert server.get("/api/task/task_nope/events").json()["error_code"] == "TASK_NOT_FOUND"


def test_task_events_show_a_device_failure_and_a_completion(server, devices):
    phone = devices("android_001", ack_new_task=False)  # like the Android app: the first progress starts the task
    failed = server.dispatch()["task_id"]
    phone.wait("new_task")
    phone.result(failed, success=False, error_code="APP_CRASHED", message="应用崩溃")
    done = server.dispatch()["task_id"]
    phone.wait("new_task", count=2)
    phone.progress(done, 100)
    phone.result(done)
    failure = server.get(f"/api/task/{failed}/events").json()["events"][-1]
    assert (failure["kind"], failure["actor"], failure["detail"]["error_code"]) == (
        "failed",
        "android_001",
        "APP_CRASHED",
    )
    assert failure["message"] == "执行失败（APP_CRASHED），任务失败"
    events = server.get(f"/api/task/{done}/events").json()["events"]
    assert kinds(events)[-2:] == [("started", "android_001"), ("completed", "android_001")]
    assert events[-2]["detail"]["progress"] == 100 and events[-1]["message"] == "执行完成"


def test_device_detail_shows_info_capacity_active_tasks_and_recent_history(server, devices):
    phone = devices("android_001", model="Mi 13", max_concurrent_tasks=2)
    done = server.dispatch()["task_id"]
    active = server.dispatch()["task_id"]
    phone.wait("new_task", count=2)
    phone.result(done)
    phone.call("heartbeat", {"device_id": "android_001"})

    response = server.get("/api/device/android_001")
    assert response.status_code == 200
    device = response.json()["device"]
    assert device["device_id"] == "android_001" and device["status"] == "online" and device["disabled"] is False
    assert device["device_info"]["model"] == "Mi 13" and device["capacity"] == 2 and device["task_count"] == 1
    assert [task["task_id"] for task in device["active_tasks"]] == [active]
    assert device["last_heartbeat"] and device["created_at"] and device["disconnected_at"] is None
    history = device["recent_history"]
    assert history[-1]["kind"] == "registered" and history[-1]["message"] == "设备注册（容量 2）"
    assert {(event["kind"], event["task_id"]) for event in history} >= {
        ("dispatched", done),
        ("dispatched", active),
        ("completed", done),
    }
    assert history[0]["at"] >= history[-1]["at"]  # newest first

    server.clock.advance(1)
    phone.disconnect()
    wait_until(lambda: server.service.store.get_device("android_001").status == "offline")
    device = server.get("/api/device/android_001").json()["device"]
    assert device["status"] == "offline" and device["disconnected_at"]
    assert (
        device["recent_history"][0]["kind"] == "offline"
        and device["recent_history"][0]["message"] == "设备离线（连接断开）"
    )

    missing = server.get("/api/device/nope")
    assert missing.status_code == 404 and missing.json()["error_code"] == "DEVICE_NOT_FOUND"


def test_recent_history_is_bounded(server, devices):
    phone = devices("android_001")
    for _ in range(30):
        task_id = server.dispatch()["task_id"]
        phone.result(task_id)
    history = server.get("/api/device/android_001").json()["device"]["recent_history"]
    assert len(history) == 50 and history[0]["kind"] == "completed"


# ---- drain and forget ----


def test_disabled_device_finishes_its_tasks_but_gets_no_new_ones(server, devices):
    drained, _spare = devices("drained"), devices("spare")
    running = server.dispatch(device_id="drained")["task_id"]
    drained.wait("new_task")

    response = server.post("/api/device/drained/disable")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] and body["device"]["disabled"] is True and body["device"]["status"] == "busy"
    assert body["message"] == "设备已停用，不再分配新任务"

    assert drained.result(running)["status"] == "completed"  # its running task finishes
    listed = {device["device_id"]: device for device in server.get("/api/devices").json()["devices"]}
    assert listed["drained"]["status"] == "online" and listed["drained"]["disabled"] is True
    assert listed["spare"]["disabled"] is False

    unpinned = server.dispatch()
    assert unpinned["device_id"] == "spare"
    pinned = server.dispatch(expect=(202,), device_id="drained")
    assert pinned["status"] == "pending" and pinned["message"] == "设备已停用，任务将在设备启用后分发"
    server.sweep(advance=1)
    assert server.task(pinned["task_id"])["status"] == "pending"
    assert len(drained.events["new_task"]) == 1

    again = devices("drained")  # registering again does not undo a disable
    assert server.get("/api/device/drained").json()["device"]["disabled"] is True
    assert server.task(pinned["task_id"])["status"] == "pending"

    enabled = server.post("/api/device/drained/enable").json()
    assert enabled["device"]["disabled"] is False and enabled["message"] == "设备已启用"
    assert again.wait("new_task")["task_id"] == pinned["task_id"]
    history = [event["kind"] for event in server.get("/api/device/drained").json()["device"]["recent_history"]]
    assert "disabled" in history and "enabled" in history
    for action in ("disable", "enable"):
        missing = server.post(f"/api/device/nope/{action}")
        assert missing.status_code == 404 and missing.json()["error_code"] == "DEVICE_NOT_FOUND"


def test_disable_is_idempotent_and_enable_of_an_enabled_device_is_harmless(server, devices):
    devices("android_001")
    assert server.post("/api/device/android_001/disable").json()["device"]["disabled"] is True
    assert server.post("/api/device/android_001/disable").json()["device"]["disabled"] is True
    history = server.get("/api/device/android_001").json()["device"]["recent_history"]
    assert [event["kind"] for event in history].count("disabled") == 1
    assert server.post("/api/device/android_001/enable").status_code == 200
    assert server.post("/api/device/android_001/enable").json()["device"]["disabled"] is False


def test_forget_only_an_offline_device_without_tasks(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch()["task_id"]
    phone.wait("new_task")

    online = delete(server, "/api/device/android_001")
    assert online.status_code == 409 and online.json()["error_code"] == "DEVICE_ONLINE"

    phone.disconnect()
    wait_until(lambda: server.service.store.get_device("android_001").status == "offline")
    busy = delete(server, "/api/device/android_001")
    assert busy.status_code == 409 and busy.json()["error_code"] == "DEVICE_HAS_ACTIVE_TASKS"

    server.post(f"/api/task/{task_id}/cancel")
    waiting = server.dispatch(expect=(202,), device_id="android_001")["task_id"]
    pinned = delete(server, "/api/device/android_001")
    assert pinned.status_code == 409 and pinned.json()["error_code"] == "DEVICE_HAS_PENDING_TASKS"

    server.post(f"/api/task/{waiting}/cancel")
    gone = delete(server, "/api/device/android_001")
    assert gone.status_code == 200 and gone.json() == {
        "success": True,
        "message": "设备已删除",
        "device_id": "android_001",
    }
    assert server.get("/api/device/android_001").status_code == 404
    assert server.get("/api/devices").json()["total"] == 0
    assert server.get(f"/api/task/{task_id}/events").json()["events"][1]["device_id"] == "android_001"  # history stays

    missing = delete(server, "/api/device/android_001")
    assert missing.status_code == 404 and missing.json()["error_code"] == "DEVICE_NOT_FOUND"

    server.clock.advance(1)
    back = devices("android_001")  # a forgotten device that comes back is a new device, and is told what it missed
    assert back.wait("cancel_task")["task_id"] == task_id
    assert server.get("/api/device/android_001").json()["device"]["recent_history"][0]["kind"] == "registered"


# ---- health and readiness ----


def test_healthz_answers_and_readyz_says_the_watchdog_is_off(server):
    assert server.get("/healthz").json() == {"success": True, "status": "ok"}
    response = server.get("/readyz")
    body = response.json()
    assert response.status_code == 503 and body["success"] is False and body["error_code"] == "NOT_READY"
    assert body["checks"]["store"] == {"ok": True, "reason": None}
    assert body["checks"]["watchdog"]["ok"] is False
    assert "TASKSERVER_WATCHDOG_INTERVAL=0" in body["checks"]["watchdog"]["reason"]
    assert body["message"].startswith("服务未就绪")


@pytest.fixture
def watched(database):
    """A server whose watchdog really runs, every 50 ms."""
    live = LiveServer(database, WATCHDOG_INTERVAL=0.05)
    yield live
    live.app.extensions["watchdog"].stop()
    live.stop()


@pytest.mark.backends("sqlite")  # makes the SQLite file refuse writes with a PRAGMA
def test_readyz_with_a_running_watchdog_then_an_unwritable_store(watched):
    watchdog = watched.app.extensions["watchdog"]
    wait_until(lambda: watchdog.last_sweep_at is not None, message="a first sweep")
    response = watched.get("/readyz")
    body = response.json()
    assert response.status_code == 200 and body["success"] and body["status"] == "ready", body
    assert body["checks"]["watchdog"]["ok"] and body["checks"]["watchdog"]["interval"] == 0.05
    assert 0 <= body["checks"]["watchdog"]["last_sweep_age"] < 5

    watched.service.store._db.execute("PRAGMA query_only = ON")  # the store refuses writes from now on
    try:
        body = watched.get("/readyz").json()
        assert body["error_code"] == "NOT_READY" and body["checks"]["store"]["ok"] is False
        assert "readonly" in body["checks"]["store"]["reason"] and body["checks"]["watchdog"]["ok"]
    finally:
        watched.service.store._db.execute("PRAGMA query_only = OFF")

    watchdog.stop()
    response = watched.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["watchdog"]["reason"] == "看门狗已停止"


def test_readyz_says_the_store_is_not_ready_while_it_cannot_commit(watched, backend):
    watchdog = watched.app.extensions["watchdog"]
    wait_until(lambda: watchdog.last_sweep_at is not None, message="a first sweep")
    driver_error = psycopg.OperationalError if backend == "postgresql" else sqlite3.OperationalError
    watched.service.store.fail_commits(driver_error("the database refuses writes"))
    try:
        response = watched.get("/readyz")
        body = response.json()
        assert response.status_code == 503 and body["error_code"] == "NOT_READY", body
        assert body["checks"]["store"]["ok"] is False
        assert "the database refuses writes" in body["checks"]["store"]["reason"]
    finally:
        watched.service.store.fail_commits(None)
    assert watched.get("/readyz").json()["checks"]["store"] == {"ok": True, "reason": None}


def test_readyz_notices_a_watchdog_that_stopped_sweeping(watched):
    watchdog = watched.app.extensions["watchdog"]
    wait_until(lambda: watchdog.last_sweep_at is not None, message="a first sweep")
    watchdog.interval = 3600  # after the sweep that ends the current 50 ms sleep, the loop sleeps for an hour
    last = watchdog.last_sweep_at
    wait_until(lambda: watchdog.last_sweep_at != last, message="the sweep before the long sleep")
    watchdog.last_sweep_at -= 4 * 3600  # as if that sweep had been four hours ago: the loop is stuck
    response = watched.get("/readyz")
    check = response.json()["checks"]["watchdog"]
    assert response.status_code == 503 and check["ok"] is False and check["reason"] == "看门狗长时间未完成巡检"


def test_the_running_watchdog_acts_on_time(watched):
    phone = Device(watched.url, "android_001").connect()
    try:
        task_id = watched.dispatch(timeout=5)["task_id"]
        phone.wait("new_task")
        watched.clock.advance(5)
        assert phone.wait("cancel_task")["task_id"] == task_id
        assert watched.task(task_id)["error_code"] == "TASK_TIMEOUT"
    finally:
        phone.disconnect()


# ---- the OpenAPI document ----

NOT_API = {"static", "api-docs.openapi_json", "api-docs.openapi_swagger_ui", "system.swagger_assets"}


def test_openapi_document_validates_and_lists_every_endpoint(server):
    document = server.get("/api/openapi.json").json()
    validate(document)
    paths = document["paths"]
    for rule in server.app.url_map.iter_rules():
        if rule.endpoint in NOT_API or rule.endpoint.startswith(("plainws", "dashboard.")):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in paths, f"{path} is not documented"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], f"{method} {path} is not documented"


@pytest.mark.parametrize(
    "path, method, status, codes",
    [
        ("/api/tasks", "get", "400", ["VALIDATION_ERROR"]),
        ("/api/devices", "get", "400", ["VALIDATION_ERROR"]),
        ("/api/dispatch-task", "post", "404", ["DEVICE_NOT_FOUND"]),
        ("/api/dispatch-task", "post", "400", ["VALIDATION_ERROR", "UNKNOWN_TASK_TYPE"]),
        ("/api/task/{task_id}", "get", "404", ["TASK_NOT_FOUND"]),
        ("/api/task/{task_id}/events", "get", "404", ["TASK_NOT_FOUND"]),
        ("/api/task/{task_id}/cancel", "post", "409", ["INVALID_STATE"]),
        ("/api/device/{device_id}", "get", "404", ["DEVICE_NOT_FOUND"]),
        ("/api/device/{device_id}/disable", "post", "404", ["DEVICE_NOT_FOUND"]),
        ("/api/device/{device_id}/enable", "post", "404", ["DEVICE_NOT_FOUND"]),
        ("/api/device/{device_id}", "delete", "409", ["DEVICE_ONLINE", "DEVICE_HAS_ACTIVE_TASKS"]),
        ("/readyz", "get", "503", ["NOT_READY"]),
    ],
)
def test_openapi_document_names_the_error_codes(server, path, method, status, codes):
    operation = server.get("/api/openapi.json").json()["paths"][path][method]
    response = operation["responses"][status]
    assert all(code in response["description"] for code in codes), response
    assert "schema" in response["content"]["application/json"]


def test_openapi_document_describes_the_new_queries_and_bodies(server):
    document = server.get("/api/openapi.json").json()
    parameters = {p["name"] for p in document["paths"]["/api/tasks"]["get"]["parameters"]}
    assert parameters >= {"status", "task_type", "device_id", "created_after", "created_before", "limit", "offset"}
    assert {p["name"] for p in document["paths"]["/api/devices"]["get"]["parameters"]} >= {"status", "disabled"}
    schemas = document["components"]["schemas"]
    assert {"attempts", "timeout_at", "result"} <= set(schemas["TaskDetailOut"]["properties"])
    assert {"active_tasks", "recent_history", "disabled"} <= set(schemas["DeviceDetailOut"]["properties"])
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


# ---- logs ----


def test_one_log_line_per_lifecycle_event_with_task_and_device_ids(server, devices, caplog):
    caplog.set_level(logging.DEBUG, logger="taskserver")
    phone = devices("android_001", token="device-secret-123")
    task_id = server.dispatch(max_retries=1, timeout=10)["task_id"]
    phone.wait("new_task")
    wait_until(lambda: server.delivered(task_id), message="delivery ack")
    phone.progress(task_id, 50)
    server.sweep(advance=10)
    server.sweep(advance=5)
    phone.wait("new_task", count=2)
    phone.result(task_id)
    lines = [record.getMessage() for record in caplog.records if record.name == "taskserver"]
    expected = [
        "device registered device_id=android_001",
        f"task created task_id={task_id}",
        f"task dispatched task_id={task_id} device_id=android_001 attempt=1",
        f"task delivered task_id={task_id} device_id=android_001 attempt=1",
        f"task started task_id={task_id} device_id=android_001 progress=50",
        f"attempt ended task_id={task_id} device_id=android_001 error_code=TASK_TIMEOUT status=pending",
        f"task dispatched task_id={task_id} device_id=android_001 attempt=2",
        f"task result task_id={task_id} device_id=android_001 status=completed",
    ]
    for start in expected:
        assert sum(line.startswith(start) for line in lines) == 1, (start, lines)
    info = [record.getMessage() for record in caplog.records if record.levelno >= logging.INFO]
    assert not any(line.startswith(("task delivered", "task progress", "task started")) for line in info)
    assert sum(line.startswith(("task created", "task dispatched", "task result")) for line in info) == 4
    text = "\n".join(lines)
    assert "device-secret-123" not in text and phone.sio.get_sid("/") not in text


def test_json_formatter_writes_one_object_per_line_with_the_event_fields():
    logger = logging.getLogger("taskserver.test_json")
    record = logger.makeRecord(
        logger.name,
        logging.INFO,
        __file__,
        1,
        "task dispatched task_id=t1 device_id=d1",
        (),
        None,
        extra={"fields": {"event": "task dispatched", "task_id": "t1", "device_id": "d1"}},
    )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) | {"time": None} == {
        "time": None,
        "level": "INFO",
        "logger": "taskserver.test_json",
        "message": "task dispatched task_id=t1 device_id=d1",
        "event": "task dispatched",
        "task_id": "t1",
        "device_id": "d1",
    }
    try:
        raise ValueError("坏了")
    except ValueError:
        failed = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "sweep failed", (), sys.exc_info())
    parsed = json.loads(JsonFormatter().format(failed))
    assert parsed["message"] == "sweep failed" and "ValueError: 坏了" in parsed["exc_info"]


def _answers(url):
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_json_logs_from_the_real_entry_point(database):
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "TASKSERVER_HOST": "127.0.0.1",
        "TASKSERVER_DATABASE": str(database),
        "TASKSERVER_LOG_FORMAT": "json",
        "TASKSERVER_LOG_LEVEL": "DEBUG",
        "TASKSERVER_ENV": "development",
    }
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    phone = Device(url, "android_001", token="device-secret-123")
    try:
        wait_until(lambda: process.poll() is not None or _answers(f"{url}/healthz"), timeout=20, message="start")
        assert process.poll() is None, "the server exited"
        phone.connect()
        sid = phone.sio.get_sid("/")
        body = {"task_type": "DELIST", "data": {"product_ids": ["1"]}}
        task_id = requests.post(f"{url}/api/dispatch-task", json=body, timeout=10).json()["task_id"]
        status = f"{url}/api/task/{task_id}/status"
        detail = f"{url}/api/task/{task_id}"
        wait_until(lambda: requests.get(detail, timeout=10).json()["task"]["delivered_at"], message="ack")
        assert requests.get(status, timeout=10).json()["task"]["status"] == "dispatched"  # delivered, not started
        phone.progress(task_id, 50)
        phone.progress(task_id, 100)
        phone.result(task_id)
        phone.disconnect()
        device = f"{url}/api/device/android_001"
        wait_until(lambda: requests.get(device, timeout=10).json()["device"]["status"] == "offline", message="offline")
    finally:
        phone.disconnect()
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is one JSON object
    events = {(line.get("event"), line.get("task_id"), line.get("device_id")) for line in lines}
    for event in ("task dispatched", "task delivered", "task started", "task progress", "task result"):
        assert (event, task_id, "android_001") in events, (event, lines)
    assert ("task created", task_id, None) in events and ("device registered", None, "android_001") in events
    assert ("device offline", None, "android_001") in events
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert "device-secret-123" not in stderr and sid not in stderr
