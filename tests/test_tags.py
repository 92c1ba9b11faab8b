"""Tags: devices get them at registration (``device_info.tags``) and from operators; tasks can ask for them."""

import pytest

pytestmark = pytest.mark.backends("sqlite", "postgresql")


def put_tags(server, device_id, tags, expect=200):
    response = server.session.put(f"{server.url}/api/device/{device_id}/tags", json={"tags": tags}, timeout=10)
    assert response.status_code == expect, response.text
    return response.json()


def test_a_device_has_its_registered_tags_and_an_operators_and_keeps_the_operators_across_registrations(
    server, devices
):
    phone = devices("android_001", tags=["shopA", "floor1"])
    device = server.get("/api/device/android_001").json()["device"]
    assert (device["tags"], device["device_tags"], device["operator_tags"]) == (
        ["floor1", "shopA"],
        ["floor1", "shopA"],
        [],
    )
    answer = put_tags(server, "android_001", ["vip", "shopB", "vip"])
    assert answer["device"]["operator_tags"] == ["shopB", "vip"]
    assert answer["device"]["tags"] == ["floor1", "shopA", "shopB", "vip"]
    phone.disconnect()
    devices("android_001", tags=["shopC"])  # registers again with other tags of its own
    device = server.get("/api/device/android_001").json()["device"]
    assert (device["device_tags"], device["operator_tags"]) == (["shopC"], ["shopB", "vip"])
    assert device["tags"] == ["shopB", "shopC", "vip"]


def test_devices_are_listed_by_tags_they_all_have(server, devices):
    devices("a", tags=["shopA", "floor1"])
    devices("b", tags=["shopA"])
    devices("c", tags=["shopB", "floor1"])
    listed = lambda query: sorted(d["device_id"] for d in server.get(f"/api/devices?{query}").json()["devices"])  # noqa: E731
    assert listed("tag=shopA") == ["a", "b"]
    assert listed("tag=shopA&tag=floor1") == ["a"]
    assert listed("tag=floor1,shopB") == ["c"]
    assert listed("tag=nowhere") == []
    assert listed("") == ["a", "b", "c"]


def test_bad_tags_are_refused_with_the_field_named(server, devices):
    devices("android_001")
    for bad in (["a,b"], [""], ["x" * 65], "shopA", [1], [f"t{n}" for n in range(33)]):
        answer = put_tags(server, "android_001", bad, expect=400)
        assert answer["error_code"] == "VALIDATION_ERROR" and "tags" in answer["errors"], answer
    assert put_tags(server, "nobody", ["a"], expect=404)["error_code"] == "DEVICE_NOT_FOUND"
    assert server.get("/api/devices?tag=a,,b").status_code == 400


def test_a_tagged_task_goes_only_to_a_device_with_all_its_tags(server, devices):
    plain = devices("plain")
    half = devices("half", tags=["shopA"])
    answer = server.dispatch(tags=["shopA", "floor1"], expect=(202,))
    assert answer["status"] == "pending"
    assert server.get(f"/api/task/{answer['task_id']}").json()["task"]["tags"] == ["floor1", "shopA"]
    assert not plain.events["new_task"] and not half.events["new_task"]
    full = devices("full", tags=["floor1"])
    assert not full.events["new_task"]
    put_tags(server, "full", ["shopA"])  # now it has both: the waiting task starts there
    assert full.wait("new_task")["task_id"] == answer["task_id"]
    sent = server.dispatch(tags=["shopA"])  # "half" is free and has it; "full" is busy
    assert sent["device_id"] == "half"
    assert not plain.events["new_task"]


def test_a_waiting_tagged_task_does_not_hold_back_tasks_behind_it(server, devices):
    for _ in range(40):
        server.dispatch(tags=["nobody-has-this"], expect=(202,))
    phone = devices("android_001")
    answer = server.dispatch()
    assert answer["status"] == "dispatched" and answer["device_id"] == "android_001"
    assert phone.wait("new_task")["task_id"] == answer["task_id"]


def test_device_id_and_tags_together_are_refused(server, devices):
    devices("android_001", tags=["shopA"])
    answer = server.dispatch(device_id="android_001", tags=["shopA"], expect=(400,))
    assert answer["error_code"] == "VALIDATION_ERROR" and "tags" in answer["errors"]


def test_tags_from_registration_are_validated(server):
    from tests.conftest import Device

    phone = Device(server.url, "android_001", tags="shopA")
    phone.sio.connect(server.url, transports=["websocket"], wait_timeout=5)
    try:
        answer = phone.call("device_register", {"device_id": "android_001", "device_info": {"tags": ["a,b"]}})
        assert answer["success"] is False and answer["error_code"] == "VALIDATION_ERROR"
        assert server.get("/api/devices").json()["total"] == 0
    finally:
        phone.disconnect()
