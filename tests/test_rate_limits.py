"""The per-connection event rate limit against a real server: it protects the server, never at the price of a
device's own reports. Progress and results about a task the server gave the device are bounded by what it sent, so
they pass whatever the bucket holds; everything else a device could send without bound costs a token.

The server's fake clock also drives the buckets' refill, and tests never advance it here: a connection gets exactly
its burst, however fast or slow the machine is."""

import gevent
import pytest

from conftest import Device, LiveServer, wait_until

PHONES, TASKS_PER_PHONE = 4, 60


def finish_every_task(phone, done, refused):
    """Work like the Android app: one progress and one result for each ``new_task`` (never acked), as fast as they
    come; stop at the first refused report."""
    handled = 0
    while True:
        if handled == len(phone.events["new_task"]):
            gevent.sleep(0.001)
            continue
        task_id = phone.events["new_task"][handled]["task_id"]
        handled += 1
        for answer in (phone.progress(task_id, 50), phone.result(task_id)):
            if not answer["success"]:
                refused.append(answer)
                return
        done.append(task_id)


def test_phones_finishing_short_tasks_fast_are_never_rate_limited(server):
    # Default limits (20/s, bursts of 100): each phone registers and sends 120 reports, more than its burst.
    phones = [Device(server.url, f"android_{n:03}", ack_new_task=False).connect() for n in range(PHONES)]
    done, refused = [], []
    workers = [gevent.spawn(finish_every_task, phone, done, refused) for phone in phones]
    try:
        task_ids = [server.dispatch()["task_id"] for _ in range(PHONES * TASKS_PER_PHONE)]
        wait_until(lambda: len(done) == len(task_ids) or refused, timeout=60, message="every task to end")
    finally:
        gevent.killall(workers)
        for phone in phones:
            phone.disconnect()
    assert refused == []
    assert server.get("/api/tasks", params={"status": "completed", "limit": 1}).json()["total"] == len(task_ids)
    assert sorted(done) == sorted(task_ids)


@pytest.fixture
def limited(tmp_path):
    """A server with a burst of 5 events per connection, and two registered phones holding one task each."""
    live = LiveServer(tmp_path / "limited.db", DEVICE_EVENT_BURST=5)
    phones = [Device(live.url, device_id, ack_new_task=False).connect() for device_id in ("android_001", "android_002")]
    task_ids = [live.dispatch(device_id=phone.device_id)["task_id"] for phone in phones]
    yield live, phones[0], task_ids
    for phone in phones:
        phone.disconnect()
    live.stop()


def unbounded(kind, own, foreign):
    """``(event, payload, usual answer)`` for a kind of event a device could send without bound."""
    return {
        "heartbeat": ("heartbeat", {"device_id": "android_001"}, "success"),
        "unknown event": ("fly", {}, "UNKNOWN_EVENT"),
        "foreign task": ("task_progress", {"task_id": foreign, "progress": 10}, "NOT_TASK_OWNER"),
        "unknown task": ("task_result", {"task_id": "task_missing", "result": {"success": True}}, "TASK_NOT_FOUND"),
        "stale attempt": ("task_progress", {"task_id": own, "progress": 10, "attempt": 7}, "STALE_ATTEMPT"),
        "invalid report": ("task_progress", {"task_id": own, "progress": 500}, "VALIDATION_ERROR"),
    }[kind]


def codes(answers):
    return [answer.get("error_code", "success") for answer in answers]


@pytest.mark.parametrize(
    "kind", ["heartbeat", "unknown event", "foreign task", "unknown task", "stale attempt", "invalid report"]
)
def test_what_a_device_could_send_without_bound_is_still_limited(limited, kind):
    live, phone, (own, foreign) = limited
    event, payload, usual = unbounded(kind, own, foreign)
    answers = [phone.call(event, payload) for _ in range(8)]
    # the burst is 5 and registering took one token: four events are answered as usual, then the bucket is empty
    assert codes(answers[:4]) == [usual] * 4
    # a report about its own task is never dropped unread; refused as invalid, it still cost a token like the others
    assert codes(answers[4:]) == ["VALIDATION_ERROR" if kind == "invalid report" else "RATE_LIMITED"] * 4
    assert codes([phone.call("heartbeat", {"device_id": "android_001"})]) == ["RATE_LIMITED"]
    assert live.task(foreign)["status"] == "dispatched" and live.task(foreign)["progress"] == 0
    # with its bucket empty, the device's own reports still pass; a duplicate result (the task ended) does not
    assert phone.progress(own, 40)["status"] == "running"
    assert phone.result(own)["status"] == "completed"
    assert codes([phone.result(own)]) == ["RATE_LIMITED"]
