"""Restart recovery with the real store: every stored task resumes its lifecycle on the new server."""

import pytest

from conftest import Device, LiveServer

pytestmark = pytest.mark.backends("sqlite", "postgresql")


def restart(server, database):
    """Stop ``server`` as a crash would (no goodbye to devices) and start a new one on the same database."""
    server.stop()
    return LiveServer(database)


def test_tasks_keep_their_device_with_a_fresh_grace_and_their_timeout(database):
    first = LiveServer(database)
    phone = Device(first.url, "android_001", max_concurrent_tasks=2).connect()
    long_task = first.dispatch(timeout=3600)["task_id"]
    short_task = first.dispatch(timeout=100)["task_id"]
    phone.wait("new_task", count=2)
    phone.progress(long_task, 40)
    pending = first.dispatch(expect=(202,))["task_id"]
    dispatched_at = first.service.store.get_task(short_task).dispatched_at
    phone.disconnect()

    second = restart(first, database)
    try:
        assert second.get("/api/devices").json()["devices"][0]["status"] == "offline"
        assert second.task(long_task)["status"] == "running" and second.task(long_task)["progress"] == 40
        assert second.task(pending)["status"] == "pending"

        second.clock.now = dispatched_at + 100
        second.sweep()
        assert second.task(short_task)["error_code"] == "TASK_TIMEOUT"

        second.sweep(advance=119 - (second.clock.now - second.service.store.get_device("android_001").disconnected_at))
        assert second.task(long_task)["status"] == "running"

        back = Device(second.url, "android_001", max_concurrent_tasks=2).connect()
        assert back.wait("register_success")["active_tasks"] == [long_task]
        assert back.wait("new_task")["task_id"] == pending
        assert back.result(long_task)["status"] == "completed"
        back.disconnect()
    finally:
        second.stop()


def test_tasks_of_a_device_that_does_not_return_fail_after_the_grace(database):
    first = LiveServer(database)
    phone = Device(first.url, "android_001").connect()
    task_id = first.dispatch(timeout=3600)["task_id"]
    phone.wait("new_task")
    phone.disconnect()

    second = restart(first, database)
    try:
        second.sweep(advance=119)
        assert second.task(task_id)["status"] == "dispatched"  # never started
        second.sweep(advance=1)
        assert second.task(task_id)["error_code"] == "DEVICE_OFFLINE"
    finally:
        second.stop()
