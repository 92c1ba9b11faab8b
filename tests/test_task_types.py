"""Task types over real HTTP and a real device: DELIST / COLLECT / UPLOAD ``data`` as the device receives it.

Defaults are filled into ``data``, extra keys pass through untouched, bounds are enforced with 400
VALIDATION_ERROR (errors under ``data``), unknown types get UNKNOWN_TASK_TYPE naming the known ones, every body
the spec shows is accepted as written, and ``EXTRA_TASK_TYPES`` enables types whose ``data`` is any object.
"""

import json

import pytest

from conftest import Device, LiveServer

DELIST_DEFAULTS = {"batch_size": 10, "delay_between_items": 1.0, "retry_failed": True}
COLLECT_DEFAULTS = {"max_items": 50, "scroll_delay": 2.0, "extract_images": True, "extract_details": True}
UPLOAD_DEFAULTS = {"auto_publish": True, "schedule_time": None}

# The request bodies of the spec, character for character (the dispatch example without its "// 可选" comment,
# which is not JSON).
SPEC_BODIES = {
    "dispatch": """{
  "task_type": "DELIST",
  "data": {
    "product_ids": ["123", "456", "789"]
  },
  "device_id": "android_001"
}""",
    "delist": """{
  "task_type": "DELIST",
  "data": {
    "product_ids": ["123", "456", "789"],
    "batch_size": 10,
    "delay_between_items": 1.0,
    "retry_failed": true
  }
}""",
    "collect": """{
  "task_type": "COLLECT",
  "data": {
    "target_url": "https://example.com/shop",
    "max_items": 50,
    "scroll_delay": 2.0,
    "extract_images": true,
    "extract_details": true
  }
}""",
    "upload": """{
  "task_type": "UPLOAD",
  "data": {
    "product_data": {
      "title": "商品标题",
      "price": 99.99,
      "description": "商品描述",
      "images": ["image1.jpg", "image2.jpg"]
    },
    "auto_publish": true,
    "schedule_time": null
  }
}""",
    "curl": """{
    "task_type": "DELIST",
    "data": {
      "product_ids": ["123", "456"]
    }
  }""",
}


@pytest.fixture
def phone(devices):
    """The spec's android_001, able to hold many tasks at once so every dispatch is delivered."""
    return devices("android_001", max_concurrent_tasks=20)


def deliver(server, phone, body):
    """Dispatch ``body`` (a dict) and return the ``new_task`` the phone receives for it."""
    seen = len(phone.events["new_task"])
    response = server.post("/api/dispatch-task", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["success"] is True and answer["device_id"] == phone.device_id
    new_task = phone.wait("new_task", count=seen + 1)
    assert new_task["task_id"] == answer["task_id"]
    assert new_task["task_type"] == body["task_type"]
    return new_task


def refuse(server, phone, body, error_code="VALIDATION_ERROR"):
    """Dispatch ``body`` that must be refused with 400; nothing is stored or sent. Return the error body."""
    before = server.get("/api/tasks").json()["total"]
    response = server.post("/api/dispatch-task", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["success"] is False and error["error_code"] == error_code, error
    assert server.get("/api/tasks").json()["total"] == before
    assert phone.events["new_task"] == []
    return error


# ---- defaults ----


def test_delist_defaults_reach_the_device(server, phone):
    new_task = deliver(server, phone, {"task_type": "DELIST", "data": {"product_ids": ["123", "456"]}})
    assert new_task["data"] == {"product_ids": ["123", "456"], **DELIST_DEFAULTS}


def test_collect_defaults_reach_the_device(server, phone):
    new_task = deliver(server, phone, {"task_type": "COLLECT", "data": {"target_url": "https://example.com/shop"}})
    assert new_task["data"] == {"target_url": "https://example.com/shop", **COLLECT_DEFAULTS}


def test_upload_defaults_reach_the_device(server, phone):
    new_task = deliver(server, phone, {"task_type": "UPLOAD", "data": {"product_data": {"title": "商品标题"}}})
    assert new_task["data"] == {"product_data": {"title": "商品标题"}, **UPLOAD_DEFAULTS}


def test_given_values_are_not_overwritten_by_defaults(server, phone):
    data = {"product_ids": ["1"], "batch_size": 3, "delay_between_items": 0.0, "retry_failed": False}
    assert deliver(server, phone, {"task_type": "DELIST", "data": data})["data"] == data
    data = {"target_url": "http://shop.example/x", "max_items": 1, "scroll_delay": 0.5, "extract_images": False}
    received = deliver(server, phone, {"task_type": "COLLECT", "data": data})["data"]
    assert received == {**data, "extract_details": True}
    data = {"product_data": {"title": "t"}, "auto_publish": False}
    assert deliver(server, phone, {"task_type": "UPLOAD", "data": data})["data"] == {**data, "schedule_time": None}


def test_defaults_are_stored_and_listed(server, phone):
    task_id = deliver(server, phone, {"task_type": "DELIST", "data": {"product_ids": ["123"]}})["task_id"]
    listed = server.get("/api/tasks").json()["tasks"]
    assert [task["data"] for task in listed if task["task_id"] == task_id] == [
        {"product_ids": ["123"], **DELIST_DEFAULTS}
    ]


# ---- extra keys ----


def test_delist_extra_keys_pass_through_as_in_the_spec_task_list(server, phone):
    new_task = deliver(
        server, phone, {"task_type": "DELIST", "data": {"product_ids": ["123", "456"], "action": "delist"}}
    )
    assert new_task["data"] == {"product_ids": ["123", "456"], "action": "delist", **DELIST_DEFAULTS}
    listed = server.get("/api/tasks").json()["tasks"][0]
    assert listed["data"]["action"] == "delist" and listed["data"]["product_ids"] == ["123", "456"]


def test_collect_and_upload_extra_keys_pass_through(server, phone):
    extra = {"category": "鞋", "filters": {"min_price": 10, "tags": ["a", "b"]}, "note": None}
    received = deliver(server, phone, {"task_type": "COLLECT", "data": {"target_url": "https://e.com", **extra}})
    assert received["data"] == {"target_url": "https://e.com", **extra, **COLLECT_DEFAULTS}
    product = {"title": "t", "sku": "A-1", "attributes": {"颜色": "红"}}
    received = deliver(server, phone, {"task_type": "UPLOAD", "data": {"product_data": product, "shop": 7}})
    assert received["data"] == {"product_data": product, "shop": 7, **UPLOAD_DEFAULTS}


# ---- bounds ----


@pytest.mark.parametrize(
    "task_type, data, field",
    [
        ("DELIST", {"product_ids": []}, "product_ids"),
        ("DELIST", {"product_ids": [str(i) for i in range(10_001)]}, "product_ids"),
        ("DELIST", {"product_ids": "123"}, "product_ids"),
        ("DELIST", {"product_ids": [123]}, "product_ids"),
        ("DELIST", {"product_ids": [""]}, "product_ids"),
        ("DELIST", {}, "product_ids"),
        ("DELIST", {"product_ids": ["1"], "batch_size": 0}, "batch_size"),
        ("DELIST", {"product_ids": ["1"], "batch_size": 1001}, "batch_size"),
        ("DELIST", {"product_ids": ["1"], "batch_size": True}, "batch_size"),
        ("DELIST", {"product_ids": ["1"], "delay_between_items": -1}, "delay_between_items"),
        ("DELIST", {"product_ids": ["1"], "delay_between_items": 3601}, "delay_between_items"),
        ("COLLECT", {"target_url": "ftp://example.com/shop"}, "target_url"),
        ("COLLECT", {"target_url": "not a url"}, "target_url"),
        ("COLLECT", {"target_url": "javascript:alert(1)"}, "target_url"),
        ("COLLECT", {}, "target_url"),
        ("COLLECT", {"target_url": "https://e.com", "max_items": 0}, "max_items"),
        ("COLLECT", {"target_url": "https://e.com", "max_items": 10_001}, "max_items"),
        ("UPLOAD", {}, "product_data"),
        ("UPLOAD", {"product_data": {}}, "product_data"),
        ("UPLOAD", {"product_data": {"title": ""}}, "product_data"),
        ("UPLOAD", {"product_data": {"price": 1.0}}, "product_data"),
        ("UPLOAD", {"product_data": {"title": "t"}, "schedule_time": "tomorrow"}, "schedule_time"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_out_of_bounds_data_is_named_under_data(server, phone, task_type, data, field):
    error = refuse(server, phone, {"task_type": task_type, "data": data})
    assert field in error["errors"]["data"], error


def test_upload_without_title_names_product_data_title(server, phone):
    error = refuse(server, phone, {"task_type": "UPLOAD", "data": {"product_data": {"price": 99.99}}})
    assert "title" in error["errors"]["data"]["product_data"], error


def test_bounds_are_inclusive(server, phone):
    ids = [str(i) for i in range(10_000)]
    assert (
        len(deliver(server, phone, {"task_type": "DELIST", "data": {"product_ids": ids}})["data"]["product_ids"])
        == 10_000
    )
    data = {"product_ids": ["1"], "batch_size": 1000, "delay_between_items": 3600}
    assert deliver(server, phone, {"task_type": "DELIST", "data": data})["data"]["batch_size"] == 1000
    data = {"target_url": "http://localhost:8080/shop", "max_items": 10_000}
    assert deliver(server, phone, {"task_type": "COLLECT", "data": data})["data"]["max_items"] == 10_000


@pytest.mark.parametrize("task_type", ["MAKE_COFFEE", "INVENTORY"])
def test_unknown_task_type_names_the_known_ones(server, phone, task_type):
    error = refuse(server, phone, {"task_type": task_type, "data": {}}, error_code="UNKNOWN_TASK_TYPE")
    for known in ("DELIST", "COLLECT", "UPLOAD"):
        assert known in error["message"], error


# ---- scheduling ----


def test_upload_schedule_time_waits_until_then(server, phone):
    at_ms = int((server.clock.now + 3600) * 1000)
    body = {"task_type": "UPLOAD", "data": {"product_data": {"title": "t"}, "schedule_time": at_ms}}
    response = server.post("/api/dispatch-task", json=body)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    assert response.json()["status"] == "pending"

    server.sweep(advance=3599)
    assert server.task(task_id)["status"] == "pending" and phone.events["new_task"] == []

    server.sweep(advance=1)
    new_task = phone.wait("new_task")
    assert new_task["task_id"] == task_id
    assert isinstance(new_task["data"]["schedule_time"], str) and new_task["data"]["auto_publish"] is True


# ---- the spec's own examples ----


@pytest.mark.parametrize("name", list(SPEC_BODIES))
def test_every_spec_example_body_is_accepted_as_written(server, phone, name):
    raw = SPEC_BODIES[name]
    sent = json.loads(raw)
    response = server.post("/api/dispatch-task", data=raw.encode(), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["success"] is True and answer["message"] == "任务分发成功"
    assert answer["device_id"] == "android_001" and answer["device_name"] == "android_001"

    new_task = phone.wait("new_task")
    assert new_task["type"] == "new_task" and new_task["task_id"] == answer["task_id"]
    assert new_task["task_type"] == sent["task_type"] and new_task["timeout"] == 300
    assert new_task["data"].items() >= sent["data"].items(), new_task["data"]

    result = phone.result(answer["task_id"], processed_count=1, failed_count=0, message="完成")
    assert result["status"] == "completed"
    assert server.task(answer["task_id"])["status"] == "completed"


# ---- extra task types ----


def test_extra_task_type_is_accepted_and_delivered_unchanged(tmp_path):
    # Its own server, and no ``server`` fixture alongside: the app's Socket.IO extension is a process-wide
    # singleton, so two live apps at once would send each other's events.
    live = LiveServer(tmp_path / "extra.db", EXTRA_TASK_TYPES=("INVENTORY",))
    phone = Device(live.url, "android_001")
    try:
        phone.connect()
        data = {"anything": [1, 2], "nested": {"x": None, "y": "是"}}
        response = live.post("/api/dispatch-task", json={"task_type": "INVENTORY", "data": data})
        assert response.status_code == 200, response.text
        new_task = phone.wait("new_task")
        assert new_task["task_type"] == "INVENTORY" and new_task["data"] == data
        assert live.task(response.json()["task_id"])["task_type"] == "INVENTORY"

        unknown = live.post("/api/dispatch-task", json={"task_type": "MAKE_COFFEE", "data": {}})
        assert unknown.status_code == 400 and unknown.json()["error_code"] == "UNKNOWN_TASK_TYPE"
        assert "INVENTORY" in unknown.json()["message"] and "DELIST" in unknown.json()["message"]

        still_checked = live.post("/api/dispatch-task", json={"task_type": "DELIST", "data": {"product_ids": []}})
        assert still_checked.status_code == 400 and "data" in still_checked.json()["errors"]
    finally:
        phone.disconnect()
        live.stop()
