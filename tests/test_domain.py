"""Pure rules: the transition table, backoff, retries, timeouts and device choice."""

import json
import re
import time

import pytest

from taskserver.domain import (
    TRANSITIONS,
    Device,
    ErrorCode,
    EventKind,
    Task,
    TaskStatus,
    check_transition,
    new_task_id,
    pick_device,
    retries_left,
    retry_backoff,
)
from taskserver.errors import InvalidTransition

ALLOWED = {
    ("pending", "dispatched"),
    ("pending", "cancelled"),
    ("dispatched", "running"),
    ("dispatched", "completed"),
    ("dispatched", "failed"),
    ("dispatched", "cancelled"),
    ("dispatched", "pending"),
    ("running", "completed"),
    ("running", "failed"),
    ("running", "cancelled"),
    ("running", "pending"),
}


@pytest.mark.parametrize("current", list(TaskStatus))
@pytest.mark.parametrize("target", list(TaskStatus))
def test_only_the_documented_moves_are_allowed(current, target):
    if (current.value, target.value) in ALLOWED:
        assert check_transition(current, target) == target
    else:
        with pytest.raises(InvalidTransition) as raised:
            check_transition(current, target)
        assert raised.value.error_code == "INVALID_STATE"


def test_terminal_states_have_no_way_out():
    assert all(not TRANSITIONS[s] for s in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED))


def test_backoff_doubles_and_is_capped():
    assert [retry_backoff(attempt, 5, 300) for attempt in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]


def test_retries_left_counts_attempts():
    task = Task("t", "DELIST", {}, max_retries=2)
    assert [retries_left(Task("t", "DELIST", {}, max_retries=2, attempt=a)) for a in (1, 2, 3)] == [True, True, False]
    assert not retries_left(Task("t", "DELIST", {}, max_retries=0)) and retries_left(task)


def phone(device_id, active=0, capacity=1, connected=True, registered_at=0.0):
    return Device(
        device_id, device_id, capacity=capacity, connected=connected, active_tasks=active, registered_at=registered_at
    )


def test_pick_device_prefers_the_least_loaded_and_avoids_the_failed_one():
    devices = [phone("a", active=1, capacity=3), phone("b", active=0, capacity=3), phone("c", connected=False)]
    assert pick_device(Task("t", "DELIST", {}), devices).device_id == "b"
    assert pick_device(Task("t", "DELIST", {}, avoid_device_id="b"), devices).device_id == "a"
    assert pick_device(Task("t", "DELIST", {}, avoid_device_id="b"), [phone("b")]).device_id == "b"


def test_pick_device_honours_the_target():
    devices = [phone("a"), phone("b", active=1)]
    assert pick_device(Task("t", "DELIST", {}, target_device_id="a"), devices).device_id == "a"
    assert pick_device(Task("t", "DELIST", {}, target_device_id="b"), devices) is None
    assert pick_device(Task("t", "DELIST", {}), [phone("x", active=1)]) is None


def test_device_status_follows_connection_and_load():
    assert phone("a").status == "online"
    assert phone("a", active=1).status == "busy"
    assert phone("a", connected=False).status == "offline"


def test_task_ids_are_32_hex_digits_in_creation_order():
    first = new_task_id()
    time.sleep(0.001)
    later = [new_task_id() for _ in range(1000)]
    assert all(re.fullmatch(r"task_[0-9a-f]{32}", task_id) for task_id in [first, *later])
    assert all(first < task_id for task_id in later)  # what the store's indexes rely on to stay compact
    assert len(set(later)) == 1000


def test_event_kinds_and_error_codes_are_the_plain_strings_on_the_wire():
    assert EventKind.DISPATCHED == "dispatched" and ErrorCode.TASK_TIMEOUT == "TASK_TIMEOUT"
    sent = {"kind": EventKind.RETRY_SCHEDULED, "error_code": ErrorCode.DEVICE_OFFLINE}
    assert json.dumps(sent) == '{"kind": "retry_scheduled", "error_code": "DEVICE_OFFLINE"}'
    assert f"{ErrorCode.NOT_FOUND}" == "NOT_FOUND"
