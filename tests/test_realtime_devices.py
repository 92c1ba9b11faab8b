"""The spec's Socket.IO protocol on "/", with python-socketio's client against a real server."""

from conftest import wait_until


def test_register_answers_with_event_and_ack(server, devices):
    phone = devices("android_001")
    event = phone.wait("register_success")
    assert event["device_id"] == "android_001"
    assert event["message"] == "注册成功"
    assert event["server_time"]
    assert event["active_tasks"] == []
    assert phone.events["connected"][0]["message"] == "连接成功"


def test_full_task_flow_over_the_wire(server, devices):
    phone = devices("android_001", model="Mi 13", manufacturer="Xiaomi")
    answer = server.dispatch(task_type="DELIST", data={"product_ids": ["123", "456"]})
    assert answer["success"] and answer["device_id"] == "android_001" and answer["message"] == "任务分发成功"

    new_task = phone.wait("new_task")
    assert set(new_task) >= {"type", "task_id", "task_type", "data", "created_at", "timeout"}
    assert new_task["type"] == "new_task" and new_task["task_id"] == answer["task_id"]
    assert new_task["data"]["batch_size"] == 10 and new_task["timeout"] == 300

    ack = phone.progress(answer["task_id"], 60, "正在处理第2个商品...")
    assert ack == {"success": True, "task_id": answer["task_id"], "status": "running", "progress": 60}
    assert server.task(answer["task_id"])["progress"] == 60

    ack = phone.result(answer["task_id"], processed_count=2, failed_count=0, execution_time=45.2, message="下架完成")
    assert ack["status"] == "completed"
    assert phone.wait("task_result_ack") == {"task_id": answer["task_id"], "status": "received"}
    task = server.task(answer["task_id"])
    assert task["status"] == "completed" and task["progress"] == 100
    assert task["result"]["processed_count"] == 2 and task["result"]["message"] == "下架完成"


def test_heartbeat_accepts_iso_and_epoch_millis(server, devices):
    phone = devices("android_001")
    assert phone.call("heartbeat", {"device_id": "android_001", "timestamp": "2025-09-17T14:30:00"})["success"]
    assert phone.call("heartbeat", {"device_id": "android_001", "timestamp": 1758090600000})["success"]
    assert phone.wait("heartbeat_ack", count=2)["server_time"]
    listed = server.get("/api/devices").json()["devices"][0]
    assert listed["last_heartbeat"] is not None


def test_events_before_register_are_refused(server, devices):
    phone = devices("android_001", register=False)
    for event, data in [
        ("heartbeat", {"device_id": "android_001"}),
        ("task_progress", {"task_id": "task_x", "progress": 1}),
        ("task_result", {"task_id": "task_x", "result": {"success": True}}),
    ]:
        ack = phone.call(event, data)
        assert ack["success"] is False and ack["error_code"] == "NOT_REGISTERED"
    assert phone.wait("error", count=3)["error_code"] == "NOT_REGISTERED"


def test_unknown_event_gets_an_error(server, devices):
    phone = devices("android_001")
    ack = phone.call("make_coffee", {"sugar": 2})
    assert ack["error_code"] == "UNKNOWN_EVENT"
    assert phone.wait("error")["error_code"] == "UNKNOWN_EVENT"


def test_disconnect_marks_device_offline(server, devices):
    phone = devices("android_001")
    phone.disconnect()
    wait_until(lambda: server.get("/api/devices").json()["devices"][0]["status"] == "offline")


def test_registering_again_on_the_same_connection_keeps_the_device_online(server, devices):
    phone = devices("android_001")
    assert phone.call("device_register", {"device_id": "android_001"})["success"]
    history = server.get("/api/device/android_001").json()["device"]["recent_history"]
    assert [event["kind"] for event in history].count("offline") == 0
    assert server.get("/api/devices").json()["devices"][0]["status"] == "online"


def test_a_connection_that_registers_another_id_leaves_the_first_offline(server, devices):
    phone = devices("android_001")
    assert phone.call("device_register", {"device_id": "android_002"})["success"]
    statuses = {d["device_id"]: d["status"] for d in server.get("/api/devices").json()["devices"]}
    assert statuses == {"android_001": "offline", "android_002": "online"}
    assert phone.call("heartbeat", {"device_id": "android_001"})["error_code"] == "FORBIDDEN"
