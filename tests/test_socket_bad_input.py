"""Bad device input on the socket is refused loudly, changes nothing, and hurts no one.

Every refused ``device_register``, ``heartbeat``, ``task_progress`` and ``task_result`` answers with an ``error``
event ``{message, error_code}`` and a failed ack ``{success: false, message, error_code}`` (a refused register
also emits ``register_error``). Nothing is stored by a refused event, the connection stays usable, and other
devices keep working.
"""

import pytest

from conftest import wait_until

EVENTS = ["device_register", "heartbeat", "task_progress", "task_result"]

# Payloads that are not a JSON object at all; None means "emit the event without any payload".
NOT_AN_OBJECT = [
    pytest.param(None, id="missing"),
    pytest.param("not json {", id="string-not-json"),
    pytest.param("[1, 2]", id="string-json-list"),
    pytest.param([1, 2], id="list"),
    pytest.param(42, id="number"),
    pytest.param(True, id="bool"),
]


def refused(device, event, payload, error_code="VALIDATION_ERROR", fields=()):
    """Emit an event that must be refused; check the ack and the ``error`` event. Return the ack."""
    errors_before = len(device.events["error"])
    registers_before = len(device.events["register_error"])
    ack = device.call(event, payload)
    assert isinstance(ack, dict) and ack["success"] is False, ack
    assert ack["error_code"] == error_code, ack
    assert isinstance(ack["message"], str) and ack["message"].strip(), ack
    error = device.wait("error", count=errors_before + 1)
    assert error == {"message": ack["message"], "error_code": error_code}
    if event == "device_register":
        assert device.wait("register_error", count=registers_before + 1) == error
    else:
        assert len(device.events["register_error"]) == registers_before
    missing = set(fields) - set(ack.get("errors", {}))
    assert not missing, f"errors does not name {missing}: {ack}"
    return ack


def still_usable(device):
    """A valid heartbeat on the same connection still succeeds."""
    ack = device.call("heartbeat", {"device_id": device.device_id, "timestamp": 1758090600000})
    assert ack["success"] is True, ack
    assert ack["server_time"]


def devices_view(server):
    """What ``GET /api/devices`` shows, by device id."""
    return {device["device_id"]: device for device in server.get("/api/devices").json()["devices"]}


def task_view(server, task_id):
    """The task as the status endpoint shows it (everything a refused event must leave alone)."""
    return server.task(task_id)


@pytest.fixture
def phone(server, devices):
    """A registered device; the clock moves on so that any stray write would show in the stored times."""
    device = devices("android_001")
    server.clock.advance(10)
    return device


@pytest.fixture
def running_task(server, phone):
    """A task dispatched to ``phone`` and started by it (its first progress)."""
    task_id = server.dispatch(device_id="android_001")["task_id"]
    phone.wait("new_task")
    wait_until(lambda: server.delivered(task_id), message="the new_task ack")
    assert phone.progress(task_id, 10)["status"] == "running"
    return task_id


# ---- payloads that are not an object, on every event ----


def refused_and_nothing_changed(server, phone, event, payload, fields):
    """The event is refused naming ``fields``, no device changed, and the connection still works."""
    before = devices_view(server)
    refused(phone, event, payload, fields=fields)
    assert devices_view(server) == before
    still_usable(phone)


@pytest.mark.parametrize("payload", NOT_AN_OBJECT)
@pytest.mark.parametrize("event", EVENTS)
def test_payload_that_is_not_an_object_is_refused(server, phone, event, payload):
    before = devices_view(server)
    ack = refused(phone, event, payload)
    assert ack["errors"], ack
    assert devices_view(server) == before
    still_usable(phone)


# ---- missing fields and wrong types ----


@pytest.mark.parametrize(
    "event, payload, fields",
    [
        ("device_register", {}, ["device_id"]),
        ("device_register", {"device_name": "小米手机"}, ["device_id"]),
        ("device_register", {"device_id": ""}, ["device_id"]),
        ("device_register", {"device_id": "d" * 500}, ["device_id"]),
        ("device_register", {"device_id": 1}, ["device_id"]),
        ("device_register", {"device_id": "android_001", "device_info": "android"}, ["device_info"]),
        ("device_register", {"device_id": "android_001", "device_info": {"max_concurrent_tasks": 0}}, ["device_info"]),
        (
            "device_register",
            {"device_id": "android_001", "device_info": {"max_concurrent_tasks": "2"}},
            ["device_info"],
        ),
        ("heartbeat", {"device_id": "d" * 500}, ["device_id"]),
        ("heartbeat", {"device_id": "android_001", "timestamp": "yesterday"}, ["timestamp"]),
        ("heartbeat", {"device_id": "android_001", "timestamp": -5}, ["timestamp"]),
        ("task_progress", {}, ["task_id", "progress"]),
        ("task_progress", {"task_id": "task_x"}, ["progress"]),
        ("task_progress", {"progress": 10}, ["task_id"]),
        ("task_progress", {"task_id": "task_x", "progress": 101}, ["progress"]),
        ("task_progress", {"task_id": "task_x", "progress": -1}, ["progress"]),
        ("task_progress", {"task_id": "task_x", "progress": "abc"}, ["progress"]),
        ("task_progress", {"task_id": "t" * 500, "progress": 10}, ["task_id"]),
        ("task_result", {}, ["task_id", "result"]),
        ("task_result", {"task_id": "task_x"}, ["result"]),
        ("task_result", {"task_id": "task_x", "result": {"message": "done"}}, ["result"]),
        ("task_result", {"task_id": "task_x", "result": {"success": "maybe"}}, ["result"]),
        ("task_result", {"task_id": "task_x", "result": "ok"}, ["result"]),
        ("task_result", {"task_id": "task_x", "result": {"success": True, "processed_count": -1}}, ["result"]),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_bad_fields_are_refused_and_named(server, phone, event, payload, fields):
    refused_and_nothing_changed(server, phone, event, payload, fields)


def test_refused_register_of_a_new_device_stores_nothing(server, devices):
    stranger = devices("android_002", register=False)
    before = devices_view(server)
    refused(stranger, "device_register", {"device_id": "android_002", "device_info": {"max_concurrent_tasks": 0}})
    refused(stranger, "device_register", {"device_id": "x" * 500})
    assert devices_view(server) == before
    assert "android_002" not in devices_view(server)
    # Still unregistered: the refused register did not bind the connection.
    refused(stranger, "heartbeat", {"device_id": "android_002"}, error_code="NOT_REGISTERED")


def test_refused_reregister_keeps_the_device_as_it_was(server, phone):
    before = devices_view(server)
    assert before["android_001"]["capacity"] == 1
    refused(phone, "device_register", {"device_id": "android_001", "device_info": {"max_concurrent_tasks": 0}})
    assert devices_view(server) == before
    still_usable(phone)


def test_refused_heartbeat_does_not_count_as_alive(server, phone):
    assert devices_view(server)["android_001"]["last_heartbeat"] is None
    refused(phone, "heartbeat", {"device_id": "android_001", "timestamp": "yesterday"})
    assert devices_view(server)["android_001"]["last_heartbeat"] is None
    still_usable(phone)
    assert devices_view(server)["android_001"]["last_heartbeat"] is not None


def test_refused_reports_leave_the_task_unchanged(server, phone, running_task):
    before = task_view(server, running_task)
    refused(phone, "task_progress", {"task_id": running_task, "progress": 101})
    refused(phone, "task_progress", {"task_id": running_task, "progress": "abc"})
    refused(phone, "task_result", {"task_id": running_task, "result": {"processed_count": 3}})
    refused(phone, "task_result", {"task_id": running_task})
    assert task_view(server, running_task) == before
    assert phone.progress(running_task, 50)["success"] is True
    assert phone.result(running_task)["status"] == "completed"


# ---- impersonation and ownership ----


def test_heartbeat_for_another_device_is_forbidden(server, devices, phone):
    devices("android_002")
    before = devices_view(server)
    refused(phone, "heartbeat", {"device_id": "android_002", "timestamp": 1758090600000}, error_code="FORBIDDEN")
    assert devices_view(server) == before
    still_usable(phone)


def test_reports_for_another_devices_task_are_not_task_owner(server, devices, phone, running_task):
    intruder = devices("android_002")
    before = task_view(server, running_task)
    refused(intruder, "task_progress", {"task_id": running_task, "progress": 99}, error_code="NOT_TASK_OWNER")
    refused(
        intruder, "task_result", {"task_id": running_task, "result": {"success": True}}, error_code="NOT_TASK_OWNER"
    )
    refused(
        intruder, "task_result", {"task_id": running_task, "result": {"success": False}}, error_code="NOT_TASK_OWNER"
    )
    assert task_view(server, running_task) == before
    assert intruder.events["task_result_ack"] == []
    still_usable(intruder)
    assert phone.result(running_task, processed_count=2)["status"] == "completed"


def test_reports_for_a_pending_task_are_not_task_owner(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch(device_id="android_001", schedule_time=int((server.clock.now + 3600) * 1000))["task_id"]
    before = task_view(server, task_id)
    assert before["status"] == "pending"
    refused(phone, "task_progress", {"task_id": task_id, "progress": 10}, error_code="NOT_TASK_OWNER")
    refused(phone, "task_result", {"task_id": task_id, "result": {"success": True}}, error_code="NOT_TASK_OWNER")
    assert task_view(server, task_id) == before


def test_reports_for_another_devices_finished_task_are_not_task_owner(server, devices, phone, running_task):
    assert phone.result(running_task)["status"] == "completed"
    intruder = devices("android_002")
    before = task_view(server, running_task)
    refused(
        intruder, "task_result", {"task_id": running_task, "result": {"success": True}}, error_code="NOT_TASK_OWNER"
    )
    refused(intruder, "task_progress", {"task_id": running_task, "progress": 10}, error_code="NOT_TASK_OWNER")
    assert task_view(server, running_task) == before


@pytest.mark.parametrize("event", ["task_progress", "task_result"])
def test_reports_for_an_unknown_task_are_task_not_found(server, phone, event):
    payload = {"task_id": "task_does_not_exist", "progress": 10, "result": {"success": True}}
    refused(phone, event, payload, error_code="TASK_NOT_FOUND")
    assert server.get("/api/tasks").json()["total"] == 0
    still_usable(phone)


# ---- others are unaffected ----


def test_a_misbehaving_device_does_not_disturb_another(server, devices, phone):
    other = devices("android_002")
    for event in EVENTS:
        for payload in (None, "not json {", [1, 2], 42, {"device_id": "x" * 500, "task_id": "y" * 500}):
            refused(phone, event, payload)
        if event != "heartbeat":  # a heartbeat has no required field
            refused(phone, event, {})
    refused(phone, "heartbeat", {"device_id": "android_002"}, error_code="FORBIDDEN")
    assert other.events["error"] == [] and other.events["register_error"] == []

    answer = server.dispatch(device_id="android_002")
    new_task = other.wait("new_task")
    assert new_task["task_id"] == answer["task_id"]
    assert other.progress(answer["task_id"], 50)["status"] == "running"
    assert other.result(answer["task_id"], processed_count=2)["status"] == "completed"
    assert server.task(answer["task_id"])["status"] == "completed"
    assert phone.events["new_task"] == []
    assert other.events["error"] == []
    still_usable(phone)
    assert {d["status"] for d in devices_view(server).values()} == {"online"}


# ---- hostile input: what JSON allows but nothing can keep ----

HUGE = int("9" * 400)


@pytest.mark.parametrize(
    "event, payload, fields",
    [
        ("heartbeat", {"device_id": "android_001", "timestamp": HUGE}, ["timestamp"]),
        ("heartbeat", {"device_id": "android_001", "timestamp": "9999-12-31T23:59:59-01:00"}, ["timestamp"]),
        ("heartbeat", {"device_id": "android_001", "timestamp": "0001-01-01T00:00:00+01:00"}, ["timestamp"]),
        ("heartbeat", {"device_id": "\ud800"}, ["device_id"]),
        ("device_register", {"device_id": "\ud800"}, ["device_id"]),
        ("device_register", {"device_id": "android_001", "device_name": "小米\udc00"}, ["device_name"]),
        ("device_register", {"device_id": "android_001", "device_info": {"\ud800": 1}}, ["device_info"]),
        ("device_register", {"device_id": "android_001", "device_info": {"model": "\ud800"}}, ["device_info"]),
        (
            "device_register",
            {"device_id": "android_001", "device_info": {"max_concurrent_tasks": HUGE}},
            ["device_info"],
        ),
        ("device_register", {"device_id": "android_001", "device_info": {"x": float("nan")}}, ["device_info"]),
        ("device_register", {"device_id": "android_001", "token": "\ud800"}, ["token"]),
        ("task_progress", {"task_id": "task_x", "progress": HUGE}, ["progress"]),
        ("task_progress", {"task_id": "\ud800", "progress": 10}, ["task_id"]),
        ("task_progress", {"task_id": "task_x", "progress": 10, "message": "\ud800"}, ["message"]),
        ("task_progress", {"task_id": "task_x", "progress": 10, "attempt": HUGE}, ["attempt"]),
        ("task_result", {"task_id": "task_x", "result": {"success": True, "\ud800": 1}}, ["result"]),
        ("task_result", {"task_id": "task_x", "result": {"success": True, "processed_count": HUGE}}, ["result"]),
        ("task_result", {"task_id": "task_x", "result": {"success": True, "data": {"x": 2**64}}}, ["result"]),
        (
            "task_result",
            {
                "task_id": "task_x",
                "result": {"success": True, "data": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
            },
            ["result"],
        ),
    ],
    ids=lambda value: repr(value)[:50],
)
def test_hostile_values_are_refused_and_named(server, phone, event, payload, fields):
    refused_and_nothing_changed(server, phone, event, payload, fields)


@pytest.mark.parametrize("device_id", ["a/b", "a b", ".", "..", "-leading", "_x", "a?b", "a#b", "a%2Fb"])
def test_a_device_id_outside_the_documented_set_cannot_register(server, devices, device_id):
    stranger = devices("android_002", register=False)
    refused(stranger, "device_register", {"device_id": device_id}, fields=["device_id"])
    assert set(devices_view(server)) == set()


@pytest.mark.parametrize(
    "event",
    [["device_register"], {"event": 1}, None, 10**400, "heartbeat\ud800"],
    ids=["list", "object", "null", "huge", "surrogate"],
)
def test_an_event_named_by_anything_but_text_is_an_unknown_event(server, phone, event):
    ack = refused(phone, event, {"device_id": "android_001"}, error_code="UNKNOWN_EVENT")
    assert ack["message"] == "未知事件：事件名必须是有效的文本"
    still_usable(phone)


def test_hostile_result_for_a_real_task_leaves_it_showable(server, phone, running_task):
    refused(phone, "task_result", {"task_id": running_task, "result": {"success": True, "data": {"x": "\ud800"}}})
    refused(phone, "task_result", {"task_id": running_task, "result": {"success": True, "data": float("nan")}})
    assert server.get(f"/api/task/{running_task}").status_code == 200
    assert phone.result(running_task, data={"ok": "中文"})["status"] == "completed"
    assert server.get(f"/api/task/{running_task}").json()["task"]["result"]["data"] == {"ok": "中文"}
