"""Batches: many tasks in one request, broadcast or spread, under a rollout limit and an abort rule."""

import json

import pytest

from tests.conftest import LiveServer, wait_until

pytestmark = pytest.mark.backends("sqlite", "postgresql")


def create(server, expect=201, **body):
    body.setdefault("task_type", "DELIST")
    response = server.post("/api/batches", json=body)
    assert response.status_code == expect, response.text
    return response.json()


def batch(server, batch_id):
    return server.get(f"/api/batch/{batch_id}").json()["batch"]


def in_flight(server, batch_id):
    counts = batch(server, batch_id)["counts"]
    return counts["dispatched"] + counts["running"]


def test_a_broadcast_to_a_tag_gives_each_tagged_phone_one_task_and_no_other_phone_any(server, devices):
    tagged = [devices(f"a{n:02}", tags=["shopA"]) for n in range(50)]
    others = [devices(f"b{n}", tags=["shopB"]) for n in range(5)] + [devices("plain")]
    answer = create(server, mode="each", target={"tags": ["shopA"]}, data={"product_ids": ["1"]})
    assert answer["success"] and answer["total"] == 50 and len(set(answer["task_ids"])) == 50
    for phone in tagged:
        task = phone.wait("new_task")
        assert task["task_id"] in answer["task_ids"]
    sent = [phone.events["new_task"][0]["task_id"] for phone in tagged]
    assert sorted(sent) == sorted(answer["task_ids"])  # each task to one phone, each phone one task
    assert all(not phone.events["new_task"] for phone in others)
    tasks = server.get(f"/api/tasks?batch_id={answer['batch_id']}&limit=1000").json()
    assert tasks["total"] == 50 and {task["batch_id"] for task in tasks["tasks"]} == {answer["batch_id"]}
    shown = batch(server, answer["batch_id"])
    assert (shown["status"], shown["mode"], shown["total"], shown["counts"]["dispatched"]) == (
        "running",
        "each",
        50,
        50,
    )


def test_a_broadcast_to_named_or_all_devices_and_online_only(server, devices):
    devices("on1")
    gone = devices("off1")
    gone.disconnect()
    wait_until(lambda: server.get("/api/device/off1").json()["device"]["status"] == "offline")
    server.post("/api/device/on1/disable")
    assert create(server, mode="each", target={"all": True}, data={"product_ids": ["1"]})["total"] == 1  # not drained
    named = create(server, mode="each", target={"device_ids": ["off1", "on1"]}, data={"product_ids": ["1"]})
    assert named["total"] == 2
    online = create(
        server, mode="each", target={"device_ids": ["off1", "on1"]}, online_only=True, data={"product_ids": ["1"]}
    )
    assert online["total"] == 1
    missing = create(
        server, expect=404, mode="each", target={"device_ids": ["on1", "ghost"]}, data={"product_ids": ["1"]}
    )
    assert missing["error_code"] == "DEVICE_NOT_FOUND" and "ghost" in missing["message"]
    none = create(server, expect=400, mode="each", target={"tags": ["nobody"]}, data={"product_ids": ["1"]})
    assert none["error_code"] == "NO_MATCHING_DEVICES"


def run_phones(server, phones, batch_id, fail=lambda n: False, check=lambda: None):
    """Let each phone finish every task it gets (the n-th result overall fails if ``fail(n)``) until none is sent
    any more; call ``check`` after each result. Return how many results were sent."""
    done = {phone.device_id: 0 for phone in phones}
    results = 0
    while True:
        progressed = False
        for phone in phones:
            received = phone.events["new_task"]
            while done[phone.device_id] < len(received):
                task_id = received[done[phone.device_id]]["task_id"]
                done[phone.device_id] += 1
                phone.progress(task_id, 50)
                check()
                phone.result(task_id, success=not fail(results))
                results += 1
                progressed = True
                check()
        if not progressed:
            counts = batch(server, batch_id)["counts"]
            if counts["dispatched"] + counts["running"] == 0:
                return results
            wait_until(lambda: any(len(p.events["new_task"]) > done[p.device_id] for p in phones), message="a task")


def test_a_spread_batch_never_has_more_than_max_in_flight_out_and_ends_completed(server, devices):
    phones = [devices(f"a{n:02}", tags=["shopA"], max_concurrent_tasks=2) for n in range(15)]
    bystander = devices("plain", max_concurrent_tasks=5)
    items = [{"product_ids": [str(n)]} for n in range(1000)]
    answer = create(server, mode="spread", target={"tags": ["shopA"]}, items=items, max_in_flight=10)
    assert answer["total"] == 1000
    batch_id = answer["batch_id"]
    store = server.service.store
    peak = []

    def check():
        counts = store.count_batch_tasks(batch_id)
        out = sum(counts.get(status, (0, 0))[0] for status in ("dispatched", "running"))
        assert out <= 10, counts
        peak.append(out)

    assert run_phones(server, phones, batch_id, check=check) == 1000
    assert max(peak) == 10  # the limit was reached, and never passed
    assert not bystander.events["new_task"]
    shown = batch(server, batch_id)
    assert shown["status"] == "completed" and shown["counts"]["completed"] == 1000 and shown["progress"] == 100
    assert shown["finished_at"] is not None


def test_an_abort_fires_at_the_failed_share_and_cancels_the_pending_rest(server, devices):
    phones = [devices(f"a{n}", tags=["shopA"]) for n in range(4)]
    items = [{"product_ids": [str(n)]} for n in range(40)]
    abort = {"failure_ratio": 0.5, "min_finished": 6}
    answer = create(server, mode="spread", target={"tags": ["shopA"]}, items=items, max_in_flight=4, abort=abort)
    batch_id = answer["batch_id"]
    first = [phone.wait("new_task")["task_id"] for phone in phones]
    for n, (phone, task_id) in enumerate(zip(phones, first, strict=True)):
        phone.result(task_id, success=n < 2)  # 2 completed, 2 failed: 4 outcomes, under min_finished
    assert batch(server, batch_id)["status"] == "running"
    second = [phone.wait("new_task", 2)["task_id"] for phone in phones]
    phones[0].result(second[0], success=False)  # 5 outcomes, 3 failed: under min_finished
    assert batch(server, batch_id)["status"] == "running"
    third = phones[0].wait("new_task", 3)["task_id"]  # its slot in the batch went to the next task
    phones[1].result(second[1], success=False)  # 6 outcomes, 4 failed: 0.67 >= 0.5
    wait_until(lambda: batch(server, batch_id)["counts"]["pending"] == 0, message="the pending rest cancelled")
    shown = batch(server, batch_id)
    assert shown["status"] == "aborted"
    assert shown["counts"] == {
        "pending": 0,
        "dispatched": 3,
        "running": 0,
        "completed": 2,
        "failed": 4,
        "cancelled": 31,
    }
    cancelled = server.get(f"/api/tasks?batch_id={batch_id}&status=cancelled&limit=100").json()["tasks"]
    assert {task["error_code"] for task in cancelled} == {"BATCH_ABORTED"}
    for phone, task_id in [(phones[0], third), (phones[2], second[2]), (phones[3], second[3])]:
        phone.result(task_id)  # those still out finish as they go
    shown = batch(server, batch_id)
    assert shown["status"] == "aborted" and shown["finished_at"] is not None and shown["counts"]["completed"] == 5
    assert [len(phone.events["new_task"]) for phone in phones] == [3, 2, 2, 2]  # none after the abort


def test_cancelling_a_batch_cancels_every_task_not_ended_and_tells_the_phones(server, devices):
    phones = [devices(f"a{n}", tags=["shopA"]) for n in range(3)]
    answer = create(server, mode="spread", target={"tags": ["shopA"]}, items=[{"product_ids": ["1"]}] * 10)
    running = [phone.wait("new_task")["task_id"] for phone in phones]
    phones[0].result(running[0])
    phones[1].progress(running[1], 10)
    cancelled = server.post(f"/api/batch/{answer['batch_id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    shown = cancelled.json()["batch"]
    assert shown["status"] == "cancelled" and shown["counts"]["cancelled"] == 9 and shown["counts"]["completed"] == 1
    assert phones[1].wait("cancel_task")["task_id"] == running[1]
    assert phones[2].wait("cancel_task")["task_id"] == running[2]
    again = server.post(f"/api/batch/{answer['batch_id']}/cancel")
    assert again.status_code == 409 and again.json()["error_code"] == "INVALID_STATE"
    assert server.post("/api/batch/batch_nope/cancel").json()["error_code"] == "BATCH_NOT_FOUND"


def test_ten_thousand_tasks_in_one_batch(server, devices):
    items = [{"product_ids": [str(n)]} for n in range(10_000)]
    answer = create(server, mode="spread", target={"all": True}, items=items, max_in_flight=100)
    assert answer["total"] == 10_000 and len(set(answer["task_ids"])) == 10_000
    phone = devices("android_001")
    assert phone.wait("new_task")["task_id"] == answer["task_ids"][0]  # in batch order
    counts = batch(server, answer["batch_id"])["counts"]
    assert counts["pending"] == 9_999 and counts["dispatched"] == 1
    listed = server.get("/api/batches").json()
    assert listed["total"] == 1 and listed["batches"][0]["batch_id"] == answer["batch_id"]


def test_a_batch_body_has_room_for_ten_thousand_tasks_of_ten_products(server):
    items = [{"product_ids": [f"{n}-{k}" for k in range(10)]} for n in range(10_000)]
    body = {"task_type": "DELIST", "mode": "spread", "target": {"all": True}, "items": items}
    assert len(json.dumps(body)) > 1024 * 1024  # over the limit of every other body
    assert create(server, **body)["total"] == 10_000
    refused = server.post("/api/dispatch-task", json=body)  # read no further than its length
    assert refused.status_code == 413 and refused.json()["error_code"] == "PAYLOAD_TOO_LARGE"


def test_a_batch_body_over_its_own_limit_is_413_and_makes_nothing(database):
    live = LiveServer(database, MAX_BODY_BYTES=10_000, MAX_BATCH_BODY_BYTES=100_000)
    try:
        items = [{"product_ids": [str(n)]} for n in range(2_000)]  # about 50 kB: over one limit, under the other
        body = {"task_type": "DELIST", "mode": "spread", "target": {"all": True}, "items": items}
        assert create(live, **body)["total"] == 2_000
        refused = live.post("/api/batches", json={**body, "items": items * 4})
        assert refused.status_code == 413 and refused.json()["error_code"] == "PAYLOAD_TOO_LARGE"
        assert live.get("/api/batches").json()["total"] == 1
        schedule = {"name": "big", "cron": "0 9 * * *", "batch": body}  # other bodies keep the small limit
        assert live.post("/api/schedules", json=schedule).status_code == 413
    finally:
        live.stop()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mode": "each", "target": {}, "data": {}}, "target"),
        ({"mode": "each", "target": {"tags": []}, "data": {}}, "target"),
        ({"mode": "each", "target": {"all": False}, "data": {}}, "target"),
        ({"mode": "each", "target": {"all": True, "tags": ["a"]}, "data": {}}, "target"),
        ({"mode": "each", "target": {"all": True}, "data": {}, "max_in_flight": 0}, "max_in_flight"),
        ({"mode": "each", "target": {"all": True}, "items": [{}]}, "items"),
        ({"mode": "spread", "target": {"all": True}}, "items"),
        ({"mode": "spread", "target": {"all": True}, "items": []}, "items"),
        ({"mode": "spread", "target": {"all": True}, "items": [{"product_ids": ["1"]}] * 10_001}, "items"),
        ({"mode": "spread", "target": {"device_ids": ["a"]}, "items": [{}]}, "target"),
        ({"mode": "spread", "target": {"all": True}, "items": [{"product_ids": ["1"]}, {"product_ids": 5}]}, "items"),
        ({"mode": "sideways", "target": {"all": True}, "data": {}}, "mode"),
        ({"mode": "each", "target": {"all": True}, "data": {}, "abort": {"failure_ratio": 1.5}}, "abort"),
        ({"mode": "each", "target": {"all": True}, "data": {}, "surprise": 1}, "surprise"),
    ],
)
def test_bad_batches_are_refused_with_the_field_named(server, devices, body, field):
    devices("android_001")
    answer = create(server, expect=400, **body)
    assert answer["success"] is False and answer["error_code"] == "VALIDATION_ERROR"
    assert field in answer["errors"], answer
    assert server.get("/api/batches").json()["total"] == 0


def test_a_bad_item_is_named_by_its_index(server, devices):
    devices("android_001")
    items = [{"product_ids": ["1"]}, {"product_ids": ["2"]}, {"product_ids": "3"}]
    answer = create(server, expect=400, mode="spread", target={"all": True}, items=items)
    assert list(answer["errors"]["items"]) == ["2"]


def test_a_task_of_an_aborted_batch_is_not_tried_again(server, devices):
    slow, quick = devices("slow", tags=["shopA"]), devices("quick", tags=["shopA"])
    items = [{"product_ids": [str(n)]} for n in range(3)]
    abort = {"failure_ratio": 0.5, "min_finished": 1}
    body = {"items": items, "max_retries": 1, "abort": abort, "timeout": 86_400}
    answer = create(server, mode="spread", target={"tags": ["shopA"]}, **body)
    first, second, third = answer["task_ids"]
    assert (slow.wait("new_task")["task_id"], quick.wait("new_task")["task_id"]) == (first, second)
    quick.result(second, success=False)  # a retry of it waits for its backoff; "quick" takes the third meanwhile
    assert quick.wait("new_task", 2)["task_id"] == third
    server.sweep(advance=3600)  # the retry is due, no phone is free
    quick.result(third, success=False)  # a retry of it waits; "quick" takes the second's retry
    assert quick.wait("new_task", 3) == {**quick.events["new_task"][2], "task_id": second}
    quick.result(second, success=False)  # no retry left: failed, 1 outcome of 1 failed: the batch aborts
    wait_until(lambda: batch(server, answer["batch_id"])["counts"]["pending"] == 0, message="the pending cancelled")
    assert batch(server, answer["batch_id"])["status"] == "aborted"
    slow.result(first, success=False)  # it had a retry left, but its batch was aborted: it ends failed
    server.sweep(advance=3600)
    assert server.task(first)["status"] == "failed"
    shown = batch(server, answer["batch_id"])
    assert shown["counts"] == {"pending": 0, "dispatched": 0, "running": 0, "completed": 0, "failed": 2, "cancelled": 1}
    assert shown["finished_at"] is not None
    assert [len(slow.events["new_task"]), len(quick.events["new_task"])] == [1, 3]


def test_the_watchdog_finishes_a_cancel_that_was_cut_short(server, devices):
    answer = create(server, mode="spread", target={"all": True}, items=[{"product_ids": ["1"]}] * 7)
    stored = server.service.store.get_batch(answer["batch_id"])
    # a cancel that stopped the batch and then died before cancelling its tasks (a crash, a failed commit)
    assert server.service.store.update_batch_if(stored, {"status": "cancelled", "updated_at": server.clock()})
    assert batch(server, answer["batch_id"])["counts"]["pending"] == 7
    devices("android_001")  # tasks of a stopped batch are never sent, not even now
    server.sweep()
    shown = batch(server, answer["batch_id"])
    assert shown["counts"]["cancelled"] == 7 and shown["finished_at"] is not None
    tasks = server.get(f"/api/tasks?batch_id={answer['batch_id']}").json()["tasks"]
    assert {task["error_code"] for task in tasks} == {"BATCH_CANCELLED"}


def test_the_same_idempotency_key_returns_the_batch_it_made(server, devices):
    devices("android_001", tags=["shopA"])
    body = {
        "task_type": "DELIST",
        "mode": "spread",
        "target": {"tags": ["shopA"]},
        "items": [{"product_ids": ["1"]}] * 3,
    }
    first = server.post("/api/batches", json=body, headers={"Idempotency-Key": "morning-run"})
    again = server.post("/api/batches", json=body, headers={"Idempotency-Key": "morning-run"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    other = server.post(
        "/api/batches", json={**body, "items": [{"product_ids": ["2"]}]}, headers={"Idempotency-Key": "morning-run"}
    )
    assert other.status_code == 409 and other.json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    assert first.json()["batch_id"] in other.json()["message"]
    assert create(server, **{**body, "idempotency_key": "another"})["batch_id"] != first.json()["batch_id"]
    assert server.get("/api/batches").json()["total"] == 2
    assert server.get("/api/tasks").json()["total"] == 6
