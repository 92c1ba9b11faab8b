"""The task lifecycle end to end: timeouts, lost devices, retries, cancel, late results, idempotency, order.

Time-based rules move the server's fake clock and run one watchdog sweep; nothing sleeps."""

import pytest

from conftest import wait_until
from taskserver.realtime.notifier import MAX_PENDING_ACKS

pytestmark = pytest.mark.backends("sqlite", "postgresql")


def events_of(server, task_id):
    return [event["kind"] for event in server.service.store.task_events(task_id)]


def owner_and_other(answer, first, second):
    """Which of two phones the dispatch answer sent the task to, and the other one."""
    return (first, second) if answer["device_id"] == first.device_id else (second, first)


# ---- timeout ----


def test_timeout_fails_the_task_tells_the_device_and_frees_it(server, devices):
    phone = devices("android_001")
    first = server.dispatch(timeout=30)["task_id"]
    queued = server.dispatch(expect=(202,))["task_id"]
    phone.wait("new_task")
    phone.progress(first, 10)

    server.sweep(advance=29)
    assert server.task(first)["status"] == "running"

    server.sweep(advance=1)
    task = server.task(first)
    assert task["status"] == "failed" and task["error_code"] == "TASK_TIMEOUT"
    assert phone.wait("cancel_task") == {"type": "cancel_task", "task_id": first, "attempt": 1}
    assert phone.wait("new_task", count=2)["task_id"] == queued
    assert server.task(queued)["status"] in ("dispatched", "running")


def test_progress_does_not_extend_the_timeout(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch(timeout=60)["task_id"]
    phone.wait("new_task")
    for step in range(5):
        server.sweep(advance=11)
        assert phone.progress(task_id, step * 10)["success"]
    server.sweep(advance=6)
    assert server.task(task_id)["error_code"] == "TASK_TIMEOUT"


# ---- heartbeats and lost devices ----


def test_silent_device_is_marked_offline_and_disconnected(server, devices):
    phone = devices("android_001")
    phone.call("heartbeat", {"device_id": "android_001", "timestamp": 0})
    server.sweep(advance=89)
    assert server.get("/api/devices").json()["devices"][0]["status"] == "online"
    server.sweep(advance=1)
    assert server.get("/api/devices").json()["devices"][0]["status"] == "offline"
    wait_until(lambda: not phone.sio.connected, message="server to close the silent connection")


def test_any_event_counts_as_a_sign_of_life(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch(timeout=3600)["task_id"]
    phone.call("heartbeat", {"device_id": "android_001"})
    for step in range(4):
        server.sweep(advance=60)
        phone.progress(task_id, step * 20)
    assert server.get("/api/devices").json()["devices"][0]["status"] == "busy"


def test_device_timestamp_is_not_trusted_for_liveness(server, devices):
    phone = devices("android_001")
    far_future_ms = (server.clock() + 10 * 86400) * 1000
    phone.call("heartbeat", {"device_id": "android_001", "timestamp": far_future_ms})
    server.sweep(advance=91)
    assert server.get("/api/devices").json()["devices"][0]["status"] == "offline"


def test_reconnect_within_grace_resends_unstarted_and_keeps_running(server, devices):
    phone = devices("android_001", ack_new_task=False, max_concurrent_tasks=2)
    started = server.dispatch()["task_id"]
    unstarted = server.dispatch()["task_id"]
    phone.wait("new_task", count=2)
    phone.progress(started, 30)
    phone.disconnect()
    wait_until(lambda: server.get("/api/devices").json()["devices"][0]["status"] == "offline")

    server.sweep(advance=119)
    back = devices("android_001", ack_new_task=False, max_concurrent_tasks=2)
    assert sorted(back.wait("register_success")["active_tasks"]) == sorted([started, unstarted])
    resent = back.wait("new_task")
    assert resent["task_id"] == unstarted
    server.sweep(advance=5)
    assert len(back.events["new_task"]) == 1
    assert server.task(started)["status"] == "running"
    assert back.result(started)["status"] == "completed"


def test_grace_expiry_fails_tasks_with_device_offline(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch()["task_id"]
    phone.wait("new_task")
    phone.disconnect()
    wait_until(lambda: server.get("/api/devices").json()["devices"][0]["status"] == "offline")
    server.sweep(advance=119)
    assert server.task(task_id)["status"] == "dispatched"  # acknowledged, never started
    server.sweep(advance=1)
    task = server.task(task_id)
    assert task["status"] == "failed" and task["error_code"] == "DEVICE_OFFLINE"

    back = devices("android_001")
    assert back.wait("cancel_task")["task_id"] == task_id
    assert back.result(task_id, success=False, error_code="TASK_CANCELLED")["success"]
    assert server.task(task_id)["error_code"] == "DEVICE_OFFLINE"


# ---- retries ----


def test_failed_attempt_is_retried_on_another_device_after_backoff(server, devices):
    first, second = devices("phone_a"), devices("phone_b")
    answer = server.dispatch(max_retries=1)
    task_id = answer["task_id"]
    owner, other = owner_and_other(answer, first, second)
    owner.wait("new_task")

    ack = owner.result(task_id, success=False, error_code="APP_CRASHED")
    assert ack["status"] == "pending"
    task = server.task(task_id)
    assert task["status"] == "pending" and task["attempt"] == 2 and task["error_code"] == "APP_CRASHED"

    server.sweep(advance=4.9)
    assert server.task(task_id)["status"] == "pending"
    server.sweep(advance=0.2)
    retry = other.wait("new_task")
    assert retry["task_id"] == task_id and retry["attempt"] == 2
    assert other.result(task_id, processed_count=2)["status"] == "completed"
    kinds = events_of(server, task_id)
    assert kinds.count("dispatched") == 2 and "retry_scheduled" in kinds


def test_retries_back_off_doubling_and_the_last_outcome_is_final(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch(max_retries=2, timeout=10)["task_id"]
    delays = []
    for attempt in (1, 2, 3):
        assert phone.wait("new_task", count=attempt)["attempt"] == attempt
        server.sweep(advance=10)
        if attempt < 3:
            task = server.service.store.get_task(task_id)
            delays.append(task.not_before - server.clock())
            server.sweep(advance=delays[-1])
    assert delays == [5.0, 10.0]
    task = server.task(task_id)
    assert task["status"] == "failed" and task["error_code"] == "TASK_TIMEOUT" and task["attempt"] == 3


def test_stale_attempt_reports_change_nothing(server, devices):
    first, second = devices("phone_a"), devices("phone_b")
    answer = server.dispatch(max_retries=1, timeout=10)
    task_id = answer["task_id"]
    owner, other = owner_and_other(answer, first, second)
    owner.wait("new_task")
    server.sweep(advance=10)
    server.sweep(advance=5)
    other.wait("new_task")

    late = owner.result(task_id)
    assert late["success"] is False and late["error_code"] == "STALE_ATTEMPT"
    assert owner.progress(task_id, 50)["error_code"] == "STALE_ATTEMPT"
    assert owner.wait("error")["error_code"] == "STALE_ATTEMPT"
    task = server.task(task_id)
    assert task["device_id"] == other.device_id and task["attempt"] == 2 and task["progress"] == 0


# ---- cancel ----


def test_cancel_pending_task(server):
    task_id = server.dispatch(expect=(202,))["task_id"]
    answer = server.post(f"/api/task/{task_id}/cancel").json()
    assert answer["success"] and answer["task"]["status"] == "cancelled"


def test_cancel_running_task_tells_the_device(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch()["task_id"]
    phone.wait("new_task")
    phone.progress(task_id, 20)
    assert server.post(f"/api/task/{task_id}/cancel").json()["task"]["status"] == "cancelled"
    assert phone.wait("cancel_task") == {"type": "cancel_task", "task_id": task_id, "attempt": 1}
    answer = phone.result(task_id, success=False, error_code="TASK_CANCELLED")
    assert answer["success"] and answer["status"] == "cancelled"
    assert server.task(task_id)["status"] == "cancelled"
    assert "error" not in phone.events


def test_cancel_while_device_away_is_sent_when_it_returns(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch()["task_id"]
    phone.wait("new_task")
    phone.disconnect()
    wait_until(lambda: server.get("/api/devices").json()["devices"][0]["status"] == "offline")
    assert server.post(f"/api/task/{task_id}/cancel").status_code == 200
    back = devices("android_001")
    assert back.wait("cancel_task")["task_id"] == task_id


def test_cancel_finished_or_unknown_task(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch()["task_id"]
    phone.wait("new_task")
    phone.result(task_id)
    finished = server.post(f"/api/task/{task_id}/cancel")
    assert finished.status_code == 409 and finished.json()["error_code"] == "INVALID_STATE"
    unknown = server.post("/api/task/task_nope/cancel")
    assert unknown.status_code == 404 and unknown.json()["error_code"] == "TASK_NOT_FOUND"


# ---- late, duplicate and foreign results ----


def test_duplicate_result_is_acknowledged_with_the_stored_outcome(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch()["task_id"]
    phone.wait("new_task")
    phone.result(task_id, processed_count=2)
    again = phone.result(task_id, success=False, error_code="OOPS")
    assert again["success"] and again["duplicate"] and again["status"] == "completed"
    assert again["result"]["processed_count"] == 2
    assert server.task(task_id)["status"] == "completed"


def test_result_after_timeout_is_refused_as_finished(server, devices):
    phone = devices("android_001")
    task_id = server.dispatch(timeout=5)["task_id"]
    phone.wait("new_task")
    server.sweep(advance=5)
    late = phone.result(task_id)
    assert late["success"] is False and late["error_code"] == "TASK_FINISHED"
    assert phone.progress(task_id, 90)["error_code"] == "TASK_FINISHED"
    assert server.task(task_id)["status"] == "failed"


def test_foreign_device_cannot_report(server, devices):
    owner = devices("phone_a")
    task_id = server.dispatch(device_id="phone_a")["task_id"]
    owner.wait("new_task")
    stranger = devices("phone_b")
    assert stranger.result(task_id)["error_code"] == "NOT_TASK_OWNER"
    assert stranger.progress(task_id, 50)["error_code"] == "NOT_TASK_OWNER"
    owner.result(task_id)
    assert stranger.result(task_id)["error_code"] == "NOT_TASK_OWNER"
    assert server.task(task_id)["status"] == "completed"


def detail(server, task_id):
    return server.get(f"/api/task/{task_id}").json()["task"]


def test_new_task_ack_records_delivery_and_the_first_progress_starts(server, devices):
    acking = devices("android_001")
    task_id = server.dispatch()["task_id"]
    acking.wait("new_task")
    wait_until(lambda: server.delivered(task_id), message="the new_task ack")
    delivered = detail(server, task_id)
    assert delivered["status"] == "dispatched" and delivered["started_at"] is None
    assert delivered["attempts"][0]["delivered_at"] == delivered["delivered_at"]
    assert events_of(server, task_id) == ["created", "dispatched", "delivered"]

    assert acking.progress(task_id, 10)["status"] == "running"
    assert detail(server, task_id)["started_at"] is not None
    assert events_of(server, task_id)[-1] == "started"


def test_a_delivered_task_is_sent_again_on_reconnect_until_it_reports_progress(server, devices):
    phone = devices("android_001")  # python-socketio acks new_task by itself
    task_id = server.dispatch()["task_id"]
    sent = phone.wait("new_task")
    wait_until(lambda: server.delivered(task_id), message="the new_task ack")
    phone.disconnect()  # the app restarted: the task it was given is gone with it
    wait_until(lambda: server.get("/api/devices").json()["devices"][0]["status"] == "offline")
    server.sweep(advance=60)

    back = devices("android_001")
    assert back.wait("new_task") == sent  # same task_id, same attempt
    assert back.progress(task_id, 10)["status"] == "running"
    back.disconnect()
    wait_until(lambda: server.get("/api/devices").json()["devices"][0]["status"] == "offline")

    again = devices("android_001")  # its registration has been answered: what it sent has arrived
    assert again.wait("register_success")["active_tasks"] == [task_id]
    assert again.events["new_task"] == []  # it reported progress: it has the task
    assert again.result(task_id)["status"] == "completed"


# ---- idempotency, scheduling and priority ----


def test_idempotency_key_returns_the_same_task(server):
    first = server.dispatch(expect=(202,), idempotency_key="order-42")
    again = server.post(
        "/api/dispatch-task",
        json={"task_type": "DELIST", "data": {"product_ids": ["123", "456"]}},
        headers={"Idempotency-Key": "order-42"},
    )
    assert again.json()["task_id"] == first["task_id"]
    assert server.get("/api/tasks").json()["total"] == 1
    server.clock.advance(86401)
    assert server.dispatch(expect=(202,), idempotency_key="order-42")["task_id"] != first["task_id"]


def test_idempotency_key_reused_for_another_request_is_refused(server):
    first = server.dispatch(expect=(202,), idempotency_key="order-42")
    changes = [
        {"data": {"product_ids": ["999"]}},
        {"priority": 5},
        {"device_id": None, "timeout": 60},
        {"task_type": "COLLECT", "data": {"target_url": "https://shop.example/item/1"}},
    ]
    for change in changes:
        body = {"task_type": "DELIST", "data": {"product_ids": ["123", "456"]}, "idempotency_key": "order-42", **change}
        refused = server.post("/api/dispatch-task", json=body)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED" and refused.json()["message"]
    # the same request, defaults spelled out: the same task
    spelled_out = {"product_ids": ["123", "456"], "batch_size": 10}
    assert server.dispatch(idempotency_key="order-42", priority=0, data=spelled_out)["task_id"] == first["task_id"]
    assert server.get("/api/tasks").json()["total"] == 1


def test_scheduled_task_waits_until_its_time(server, devices):
    phone = devices("android_001")
    later = server.clock() + 600
    answer = server.dispatch(
        expect=(202,),
        task_type="UPLOAD",
        data={"product_data": {"title": "商品标题", "price": 99.99}, "schedule_time": later},
    )
    assert answer["status"] == "pending"
    server.sweep(advance=599)
    assert server.task(answer["task_id"])["status"] == "pending"
    server.sweep(advance=1)
    assert phone.wait("new_task")["task_id"] == answer["task_id"]

    top_level = server.dispatch(expect=(202,), schedule_time=server.clock() + 60)["task_id"]
    server.sweep(advance=60)
    assert server.task(top_level)["status"] == "pending"  # the phone is still busy with the upload
    assert server.task(top_level)["device_id"] is None


def test_priority_then_age_decides_the_order(server, devices):
    low = server.dispatch(expect=(202,), priority=0)["task_id"]
    high = server.dispatch(expect=(202,), priority=5)["task_id"]
    low_later = server.dispatch(expect=(202,), priority=0)["task_id"]
    phone = devices("android_001")
    order = []
    for count in (1, 2, 3):
        task_id = phone.wait("new_task", count=count)["task_id"]
        order.append(task_id)
        phone.result(task_id)
    assert order == [high, low, low_later]


def test_tasks_waiting_for_a_phone_that_is_away_hold_back_no_one_and_go_when_it_returns(server, devices):
    away = devices("phone_away")
    away.disconnect()
    wait_until(lambda: server.get("/api/device/phone_away").json()["device"]["status"] == "offline")
    low = server.dispatch(expect=(202,), device_id="phone_away")["task_id"]
    high = server.dispatch(expect=(202,), device_id="phone_away", priority=5)["task_id"]
    other = devices("phone_other")
    answer = server.dispatch()  # nothing pending can start: it goes at once, in one write
    assert answer["status"] == "dispatched" and answer["device_id"] == "phone_other"
    assert other.result(other.wait("new_task")["task_id"])["status"] == "completed"
    assert server.task(low)["status"] == server.task(high)["status"] == "pending"

    back = devices("phone_away")
    order = []
    for count in (1, 2):
        order.append(back.wait("new_task", count=count)["task_id"])
        back.result(order[-1])
    assert order == [high, low]


# ---- one device id, one connection ----


def test_newest_connection_wins(server, devices):
    old = devices("android_001")
    task_id = server.dispatch()["task_id"]
    old.wait("new_task")
    new = devices("android_001")
    assert old.wait("error")["error_code"] == "DEVICE_REPLACED"
    wait_until(lambda: not old.sio.connected, message="old connection closed")
    assert new.wait("register_success")["active_tasks"] == [task_id]
    listed = server.get("/api/devices").json()["devices"]
    assert len(listed) == 1 and listed[0]["status"] == "busy"
    assert listed[0]["connection_info"]["sid"] == new.sio.get_sid("/")
    assert new.result(task_id)["status"] == "completed"


def test_a_device_that_never_acks_does_not_grow_the_servers_memory(server, devices):
    phone = devices("android_001", ack_new_task=False, max_concurrent_tasks=100)
    for batch in range(2):
        task_ids = [server.dispatch()["task_id"] for _ in range(100)]
        phone.wait("new_task", count=100 * (batch + 1), timeout=10)
        for task_id in task_ids:  # operator cancels free the slots without the phone saying anything
            assert server.post(f"/api/task/{task_id}/cancel").status_code == 200
    owed = server.app.extensions["socketio"].server.manager.callbacks[phone.sio.get_sid("/")]
    assert 100 <= len(owed) - 1 <= MAX_PENDING_ACKS  # the newest acks are still awaited, no more


# ---- another writer takes the slot (several nodes on one database) ----


def test_a_new_task_refused_on_its_device_is_stored_pending_and_dispatched_from_the_queue(server, devices, monkeypatch):
    """``add_task`` returns False when the device lost its slot to another writer: nothing is stored then."""
    store, stored = server.service.store, []
    add_task = store.add_task

    def slot_taken_once(task, *events):
        stored.append(task.status.value)
        return False if len(stored) == 1 else add_task(task, *events)

    monkeypatch.setattr(store, "add_task", slot_taken_once)
    phone = devices("android_001")
    answer = server.dispatch()
    assert stored == ["dispatched", "pending"]
    assert answer["status"] == "dispatched" and phone.wait("new_task")["task_id"] == answer["task_id"]
    assert events_of(server, answer["task_id"])[:2] == ["created", "dispatched"]


def test_a_pending_task_refused_on_its_device_waits_for_the_next_round(server, devices, monkeypatch):
    """``update_task_if`` returns None when the move into dispatched would overfill the device."""
    store = server.service.store
    update_task_if = store.update_task_if
    full = [True]

    def overfilled(task, changes, *args, **kwargs):
        if changes.get("status") == "dispatched" and full[0]:
            return None
        return update_task_if(task, changes, *args, **kwargs)

    monkeypatch.setattr(store, "update_task_if", overfilled)
    server.dispatch(expect=(202,))  # no device yet
    phone = devices("android_001")
    assert phone.wait("register_success")["active_tasks"] == []
    task_id = server.get("/api/tasks").json()["tasks"][0]["task_id"]
    assert server.task(task_id)["status"] == "pending"
    full[0] = False
    server.sweep()
    assert phone.wait("new_task")["task_id"] == task_id
