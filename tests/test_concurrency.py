"""Many requests at once against a real server: a burst of dispatches and of results, interleaved with the commits
running on the pool thread, fills each device to its capacity and no further, and the queue moves on as slots
free up."""

import gevent
import requests

from conftest import wait_until


def nothing_more_arrives(phones):
    """A round trip on each phone's connection: whatever the server sent before its answer has arrived by then."""
    for phone in phones:
        phone.call("heartbeat", {"device_id": phone.device_id})


BURST = 40


def dispatch_at_once(url, count):
    """POST ``count`` dispatches concurrently; return their status codes."""
    body = {"task_type": "DELIST", "data": {"product_ids": ["1"]}}
    jobs = [gevent.spawn(requests.post, f"{url}/api/dispatch-task", json=body, timeout=10) for _ in range(count)]
    gevent.joinall(jobs, raise_error=True)
    return [job.value.status_code for job in jobs]


def loads(server):
    """Each device's active task count, as the API shows it."""
    return {device["device_id"]: device["task_count"] for device in server.get("/api/devices").json()["devices"]}


def test_a_burst_of_dispatches_fills_each_device_to_its_capacity_and_no_further(server, devices):
    phones = [devices(f"android_{i:03d}", ack_new_task=False, max_concurrent_tasks=2) for i in range(3)]

    codes = dispatch_at_once(server.url, BURST)

    assert sorted(set(codes)) == [200, 202] and codes.count(200) == 6, codes
    assert loads(server) == {phone.device_id: 2 for phone in phones}
    for phone in phones:
        phone.wait("new_task", count=2)
    nothing_more_arrives(phones)
    assert [len(phone.events["new_task"]) for phone in phones] == [2, 2, 2]
    assert server.get("/").json()["pending_tasks"] == BURST - 6


def test_results_at_once_each_free_one_slot_for_one_queued_task(server, devices):
    phones = [devices(f"android_{i:03d}", ack_new_task=False, max_concurrent_tasks=2) for i in range(3)]
    dispatch_at_once(server.url, BURST)
    for phone in phones:
        phone.wait("new_task", count=2)

    first_tasks = [(phone, task["task_id"]) for phone in phones for task in phone.events["new_task"][:2]]
    answers = [gevent.spawn(phone.result, task_id) for phone, task_id in first_tasks]
    gevent.joinall(answers, raise_error=True)

    assert all(answer.value["status"] == "completed" for answer in answers)
    for phone in phones:
        phone.wait("new_task", count=4)
    wait_until(lambda: server.get("/").json()["pending_tasks"] == BURST - 12, message="the queue to move on")
    assert loads(server) == {phone.device_id: 2 for phone in phones}
    nothing_more_arrives(phones)
    assert [len(phone.events["new_task"]) for phone in phones] == [4, 4, 4]
