"""Contract of ``taskserver.store.base.Store``, run against every store implementation.

Each backend in ``BACKENDS`` is a function that opens a store given the test's ``Place`` (a private directory, and an
empty PostgreSQL schema of its own when asked); a new backend joins by adding a line there (and to
``DURABLE_BACKENDS`` if it survives a reopen, to ``SHARED_BACKENDS`` if several servers may open it at once).
The tests drive the store only through its verbs, with ``domain`` objects and explicit times, as the service does.
Tests named ``test_sqlite_...`` are about SQLite itself (its file, its migrations, its group commit, its faults).
"""

import sqlite3
from dataclasses import FrozenInstanceError, replace

import gevent
import psycopg
import pytest

from taskserver.domain import Device, Event, Task, TaskStatus, device_tags
from taskserver.errors import StoreUnavailable
from taskserver.store import SQLiteStore
from taskserver.store.postgres import PostgresStore
from taskserver.store.sqlite import SCHEMA, SCHEMA_VERSION

DISK_FULL = sqlite3.OperationalError("database or disk is full")
PENDING, DISPATCHED, RUNNING = TaskStatus.PENDING, TaskStatus.DISPATCHED, TaskStatus.RUNNING
COMPLETED, FAILED, CANCELLED = TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED


class Place:
    """Where a test's stores live: its private ``directory``, and the URL of an empty PostgreSQL schema of its own
    (made on first use, the same for every store the test opens, dropped after the test)."""

    def __init__(self, request, directory):
        self.directory = directory
        self._request = request

    @property
    def postgres_url(self):
        return self._request.getfixturevalue("postgres_url")


@pytest.fixture
def place(request, tmp_path):
    return Place(request, tmp_path)


def sqlite_at(directory):
    return SQLiteStore(str(directory / "store.db"))


def sqlite_memory(place):
    return SQLiteStore(":memory:")


def sqlite_file(place):
    return sqlite_at(place.directory)


def postgresql(place):
    return PostgresStore(place.postgres_url)


BACKENDS = [
    pytest.param(sqlite_memory, id="sqlite-memory"),
    pytest.param(sqlite_file, id="sqlite-file"),
    pytest.param(postgresql, id="postgresql"),
]
DURABLE_BACKENDS = [pytest.param(sqlite_file, id="sqlite-file"), pytest.param(postgresql, id="postgresql")]
SHARED_BACKENDS = [pytest.param(postgresql, id="postgresql")]  # several servers (nodes) may open one at once
INTEGRITY_ERRORS = (sqlite3.IntegrityError, psycopg.IntegrityError)  # a wrong write, as each driver names it


def read_elsewhere(place, open_store, query):
    """The rows ``query`` finds on a connection of its own to the store's database: what other readers see."""
    if open_store is postgresql:
        with psycopg.connect(place.postgres_url) as db:
            return [tuple(row) for row in db.execute(query).fetchall()]
    reader = sqlite3.connect(str(place.directory / "store.db"))
    try:
        return reader.execute(query).fetchall()
    finally:
        reader.close()


def make_task(task_id, created_at=100.0, **fields):
    """A pending DELIST task created at ``created_at``."""
    fields.setdefault("data", {"product_ids": ["123", "456"], "batch_size": 10})
    return Task(
        task_id=task_id,
        task_type=fields.pop("task_type", "DELIST"),
        created_at=created_at,
        updated_at=created_at,
        **fields,
    )


def make_device(device_id, connected=True, capacity=1, registered_at=100.0, **fields):
    """A device, connected on sid ``sid-<id>`` unless told otherwise."""
    fields.setdefault("sid", f"sid-{device_id}" if connected else None)
    return Device(
        device_id=device_id,
        device_name=fields.pop("device_name", device_id),
        capacity=capacity,
        connected=connected,
        registered_at=registered_at,
        created_at=registered_at,
        **fields,
    )


CREATED = Event("created", "operator", None, {"task_type": "DELIST"})


def add(store, task):
    store.add_task(task, CREATED)
    return task


def as_read(store, task_id, **fields):
    """The task as a caller read it (``fields`` pretend it read something else)."""
    return replace(store.get_task(task_id) or make_task(task_id), **fields)


def move(store, task_id, expect, status, now, **changes):
    """One conditional status move, as the service makes it, from a read that found ``expect``."""
    event = Event(str(TaskStatus(status)), "test", changes.get("device_id"))
    task = as_read(store, task_id, status=expect)
    return store.update_task_if(task, {"status": status, "updated_at": now, **changes}, event)


def dispatch(store, task_id, device_id, now=200.0):
    return move(store, task_id, PENDING, DISPATCHED, now, device_id=device_id, dispatched_at=now)


def ids(tasks):
    return [task.task_id for task in tasks]


@pytest.fixture(params=BACKENDS)
def store(request, place):
    """A fresh empty store of each backend."""
    opened = request.param(place)
    yield opened
    opened.close()


class TestStoreContract:
    """What the service relies on, verb by verb."""

    # ---- add_task / get_task ----

    def test_added_task_reads_back_equal(self, store):
        task = make_task(
            "task_1",
            data={"product_ids": ["商品1"], "nested": {"a": [1, 2.5, None, True]}},
            target_device_id="android_001",
            avoid_device_id="android_002",
            priority=-7,
            timeout=42,
            max_retries=3,
            not_before=150.5,
            idempotency_key="key-1",
        )
        add(store, task)
        assert store.get_task("task_1") == task
        assert store.get_task("task_missing") is None

    def test_returned_task_is_a_copy(self, store):
        original = add(store, make_task("task_1", result={"success": True, "details": ["a"]}))
        got = store.get_task("task_1")
        got.data["product_ids"].append("evil")
        got.result["details"].append("evil")
        with pytest.raises(FrozenInstanceError):  # a task read is a value: nobody changes it in place
            got.status = FAILED
        original.data["batch_size"] = 999
        again = store.get_task("task_1")
        assert again.data == {"product_ids": ["123", "456"], "batch_size": 10}
        assert again.result == {"success": True, "details": ["a"]}
        assert again.status == PENDING and again.progress == 0
        listed, _ = store.list_tasks()
        listed[0].data["product_ids"].clear()
        assert store.get_task("task_1").data["product_ids"] == ["123", "456"]

    def test_an_active_task_read_twice_is_a_value_no_caller_can_change(self, store):
        store.save_device(make_device("android_001"))
        add(store, make_task("task_1"))
        dispatch(store, "task_1", "android_001")
        first, second = store.get_task("task_1"), store.get_task("task_1")
        for task in (first, second):
            with pytest.raises(FrozenInstanceError):
                task.status = COMPLETED
        assert store.get_task("task_1").status == DISPATCHED

    def test_add_task_records_the_first_event(self, store):
        add(store, make_task("task_1", created_at=123.0))
        (event,) = store.task_events("task_1")
        assert event["kind"] == "created" and event["actor"] == "operator"
        assert event["at"] == 123.0 and event["attempt"] == 1
        assert event["detail"] == {"task_type": "DELIST"}

    def test_a_task_added_already_dispatched_counts_on_its_device(self, store):
        store.save_device(make_device("android_001", capacity=2))
        task = make_task("task_1", status=DISPATCHED, device_id="android_001", dispatched_at=100.0)
        store.add_task(task, CREATED, Event("dispatched", "server", "android_001"))
        assert store.get_task("task_1") == task
        assert store.get_device("android_001").active_tasks == 1
        assert [e["kind"] for e in store.task_events("task_1")] == ["created", "dispatched"]
        assert store.device_had_task("task_1", "android_001") is True

    def test_has_pending_tasks_counts_scheduled_ones_too(self, store):
        assert store.has_pending_tasks() is False
        add(store, make_task("later", not_before=500.0))
        assert store.has_pending_tasks() is True
        move(store, "later", PENDING, CANCELLED, 300.0)
        assert store.has_pending_tasks() is False

    def test_has_pending_tasks_sees_a_task_sent_back_for_a_retry(self, store):
        store.save_device(make_device("android_001"))
        add(store, make_task("task_1"))
        dispatch(store, "task_1", "android_001")
        assert store.has_pending_tasks() is False and store.dispatchable_count(at_most=5) == 0
        move(store, "task_1", DISPATCHED, PENDING, 300.0, device_id=None, attempt=2)
        assert store.has_pending_tasks() is True and store.dispatchable_count(at_most=5) == 1

    # ---- update_task_if ----

    def test_update_applies_when_the_status_matches(self, store):
        add(store, make_task("task_1"))
        updated = move(store, "task_1", PENDING, CANCELLED, 300.0, error_code="TASK_CANCELLED", finished_at=300.0)
        assert updated.status == CANCELLED and updated.error_code == "TASK_CANCELLED"
        assert updated.updated_at == 300.0 and updated.finished_at == 300.0
        assert store.get_task("task_1") == updated

    def test_update_refuses_a_stale_read(self, store):
        add(store, make_task("task_1"))
        stale = store.get_task("task_1")
        assert move(store, "task_1", PENDING, CANCELLED, 300.0) is not None
        assert store.update_task_if(stale, {"status": DISPATCHED, "updated_at": 301.0}) is None
        assert store.get_task("task_1").status == CANCELLED

    def test_update_refuses_a_different_status(self, store):
        add(store, make_task("task_1"))
        before = store.get_task("task_1")
        assert move(store, "task_1", RUNNING, COMPLETED, 300.0) is None
        assert store.update_task_if(as_read(store, "task_1", status=DISPATCHED), {"progress": 50}) is None
        assert store.get_task("task_1") == before
        assert [e["kind"] for e in store.task_events("task_1")] == ["created"]

    def test_update_of_an_unknown_task_is_none(self, store):
        assert store.update_task_if(make_task("task_missing"), {"progress": 1}) is None

    def test_update_checks_the_expected_device_and_attempt(self, store):
        store.save_device(make_device("android_001", capacity=5))
        add(store, make_task("task_1"))
        dispatch(store, "task_1", "android_001")
        before = store.get_task("task_1")
        assert before.attempt == 1

        def progress(**read):
            return store.update_task_if(replace(before, **read), {"progress": 10})

        assert progress(device_id="android_002") is None
        assert progress(device_id=None) is None
        assert progress(attempt=2) is None
        assert progress(device_id="android_002", attempt=1) is None
        assert store.get_task("task_1") == before
        assert progress().progress == 10
        assert store.get_task("task_1").progress == 10

    def test_event_history_is_appended_in_order(self, store):
        store.save_device(make_device("android_001"))
        add(store, make_task("task_1", created_at=100.0))
        dispatch(store, "task_1", "android_001", now=200.0)
        store.add_event("task_1", 250.0, Event("note", "server", "android_001", {"n": 1}), 1)
        store.update_task_if(store.get_task("task_1"), {"progress": 5, "updated_at": 260.0})  # no event
        changes = {"status": PENDING, "device_id": None, "attempt": 2, "updated_at": 300.0}
        retry = Event("retry_scheduled", "watchdog", "android_001")
        store.update_task_if(store.get_task("task_1"), changes, retry)
        events = store.task_events("task_1")
        assert [e["kind"] for e in events] == ["created", "dispatched", "note", "retry_scheduled"]
        assert [e["at"] for e in events] == [100.0, 200.0, 250.0, 300.0]
        assert [e["attempt"] for e in events] == [1, 1, 1, 2]
        assert events[2]["detail"] == {"n": 1} and events[2]["device_id"] == "android_001"
        assert store.task_events("task_missing") == []

    def test_device_had_task_follows_dispatched_events(self, store):
        store.save_device(make_device("android_001"))
        add(store, make_task("task_1"))
        assert store.device_had_task("task_1", "android_001") is False
        dispatch(store, "task_1", "android_001")
        assert store.device_had_task("task_1", "android_001") is True
        assert store.device_had_task("task_1", "android_002") is False

    # ---- owed cancels ----

    def test_owed_cancels_are_taken_once(self, store):
        for device_id in ("android_001", "android_002"):
            store.save_device(make_device(device_id, capacity=5))
        for task_id, device_id in [("task_1", "android_001"), ("task_2", "android_001"), ("task_3", "android_002")]:
            add(store, make_task(task_id))
            dispatch(store, task_id, device_id)
            changes = {"status": CANCELLED, "updated_at": 300.0}
            assert store.update_task_if(store.get_task(task_id), changes, owe_cancel_to=device_id) is not None
        assert sorted(store.take_owed_cancels("android_001")) == [("task_1", 1), ("task_2", 1)]
        assert store.take_owed_cancels("android_001") == []
        assert store.take_owed_cancels("android_002") == [("task_3", 1)]
        assert store.take_owed_cancels("android_003") == []

    def test_an_owed_cancel_names_the_attempt_that_ended(self, store):
        store.save_device(make_device("android_001"))
        add(store, make_task("task_1", max_retries=1))
        dispatch(store, "task_1", "android_001")
        retry = {"status": PENDING, "attempt": 2, "device_id": None, "updated_at": 300.0}
        assert store.update_task_if(store.get_task("task_1"), retry, owe_cancel_to="android_001").attempt == 2
        assert store.take_owed_cancels("android_001") == [("task_1", 1)]

    def test_refused_update_owes_no_cancel(self, store):
        add(store, make_task("task_1"))
        changes = {"status": CANCELLED, "updated_at": 300.0}
        stale = as_read(store, "task_1", status=RUNNING)
        assert store.update_task_if(stale, changes, owe_cancel_to="android_001") is None
        assert store.take_owed_cancels("android_001") == []

    # ---- the active task counter ----

    def test_active_tasks_follow_dispatched_and_running_tasks(self, store):
        store.save_device(make_device("android_001", capacity=2))
        store.save_device(make_device("android_002", capacity=1))

        def active(device_id="android_001"):
            return store.get_device(device_id).active_tasks

        add(store, make_task("task_1", created_at=100.0))
        add(store, make_task("task_2", created_at=101.0))
        assert active() == 0
        dispatch(store, "task_1", "android_001")
        assert active() == 1 and store.get_device("android_001").status == "online"
        dispatch(store, "task_2", "android_001")
        assert active() == 2 and store.get_device("android_001").status == "busy"
        assert ids(store.active_tasks_of("android_001")) == ["task_1", "task_2"]
        assert [d.device_id for d in store.free_devices()] == ["android_002"]

        move(store, "task_1", DISPATCHED, RUNNING, 210.0, started_at=210.0)
        assert active() == 2
        move(store, "task_1", RUNNING, COMPLETED, 220.0, finished_at=220.0)
        assert active() == 1
        assert move(store, "task_1", RUNNING, FAILED, 230.0) is None  # a refused move changes no count
        assert active() == 1
        move(store, "task_2", DISPATCHED, PENDING, 240.0, device_id=None, attempt=2)
        assert active() == 0 and active("android_002") == 0
        dispatch(store, "task_2", "android_002", now=250.0)
        assert active() == 0 and active("android_002") == 1
        assert ids(store.active_tasks_of("android_002")) == ["task_2"]
        assert store.active_tasks_of("android_001") == []

    def test_task_active_on_names_the_device_and_attempt_that_hold_a_task(self, store):
        store.save_device(make_device("android_001"))
        add(store, make_task("task_1"))
        assert not store.task_active_on("task_1", "android_001")  # pending: nobody holds it
        dispatch(store, "task_1", "android_001")
        assert store.task_active_on("task_1", "android_001") and store.task_active_on("task_1", "android_001", 1)
        assert not store.task_active_on("task_1", "android_001", 2) and not store.task_active_on("task_1", "other")
        assert not store.task_active_on("task_missing", "android_001")
        move(store, "task_1", DISPATCHED, RUNNING, 210.0, started_at=210.0)
        assert store.task_active_on("task_1", "android_001")
        move(store, "task_1", RUNNING, PENDING, 220.0, device_id=None, attempt=2)
        assert not store.task_active_on("task_1", "android_001")
        dispatch(store, "task_1", "android_001", now=230.0)
        assert store.task_active_on("task_1", "android_001", 2) and not store.task_active_on("task_1", "android_001", 1)
        move(store, "task_1", DISPATCHED, COMPLETED, 240.0, finished_at=240.0)
        assert not store.task_active_on("task_1", "android_001")

    def test_saving_a_device_again_keeps_its_count_and_creation(self, store):
        store.save_device(make_device("android_001", capacity=3, registered_at=100.0))
        add(store, make_task("task_1"))
        dispatch(store, "task_1", "android_001")
        again = make_device("android_001", capacity=5, registered_at=500.0, sid="sid-new", device_name="小米手机")
        again.device_info = {"type": "android", "model": "Mi 13"}
        store.save_device(again)
        device = store.get_device("android_001")
        assert device.active_tasks == 1 and device.created_at == 100.0
        assert device.capacity == 5 and device.sid == "sid-new" and device.registered_at == 500.0
        assert device.device_name == "小米手机" and device.device_info == {"type": "android", "model": "Mi 13"}

    def test_returned_device_is_a_copy(self, store):
        store.save_device(make_device("android_001", device_info={"type": "android"}))
        got = store.get_device("android_001")
        got.device_info["type"] = "ios"
        got.capacity = 50
        assert store.get_device("android_001").device_info == {"type": "android"}
        assert store.get_device("android_001").capacity == 1
        assert store.get_device("android_missing") is None

    def test_devices_are_listed_most_recently_registered_first(self, store):
        store.save_device(make_device("android_a", registered_at=100.0))
        store.save_device(make_device("android_b", registered_at=300.0, connected=False))
        store.save_device(make_device("android_c", registered_at=200.0))
        assert [d.device_id for d in store.list_devices()] == ["android_b", "android_c", "android_a"]
        assert sorted(d.device_id for d in store.list_devices(statuses=["online"])) == ["android_a", "android_c"]

    def test_heartbeat_is_recorded(self, store):
        store.save_device(make_device("android_001"))
        store.record_heartbeat("android_001", 555.0)
        assert store.get_device("android_001").last_heartbeat == 555.0

    # ---- due_pending_tasks ----

    def test_due_pending_tasks_by_priority_then_age(self, store):
        for task_id, priority, created_at in [("a", 0, 101.0), ("b", 5, 103.0), ("c", 5, 102.0), ("d", -1, 100.0)]:
            add(store, make_task(task_id, created_at=created_at, priority=priority))
        add(store, make_task("e", created_at=99.0, priority=9))
        store.save_device(make_device("android_001"))
        dispatch(store, "e", "android_001")  # not pending any more
        assert store.due_pending_tasks(1000.0, 0) == []
        assert ids(store.due_pending_tasks(1000.0, 10)) == ["c", "b", "a", "d"]
        assert ids(store.due_pending_tasks(1000.0, 2)) == ["c", "b"]

    def test_due_pending_tasks_wait_for_not_before(self, store):
        add(store, make_task("later", not_before=200.0, priority=10))
        add(store, make_task("now"))
        assert ids(store.due_pending_tasks(199.9, 10)) == ["now"]
        assert ids(store.due_pending_tasks(200.0, 10)) == ["later", "now"]

    def test_free_devices_least_loaded_first_and_dispatchable_count(self, store):
        store.save_device(make_device("busy", capacity=1))
        store.save_device(make_device("half", capacity=3, registered_at=101.0))
        store.save_device(make_device("idle", capacity=2, registered_at=102.0))
        store.save_device(make_device("away", connected=False, capacity=5))
        add(store, make_task("task_1"))
        add(store, make_task("task_2"))
        dispatch(store, "task_1", "busy")
        dispatch(store, "task_2", "half")
        assert [d.device_id for d in store.free_devices()] == ["idle", "half"]
        assert [d.device_id for d in store.free_devices(limit=1)] == ["idle"]
        assert [d.device_id for d in store.free_devices(limit=1, include=["half", "busy"])] == ["idle", "half"]
        assert store.dispatchable_count(at_most=10) == 0  # no task is pending
        add(store, make_task("task_3"))
        assert store.dispatchable_count(at_most=10) == 4
        assert store.dispatchable_count(at_most=1) == 2  # counted over the first free device only

    def test_due_pending_tasks_need_their_target_free(self, store):
        store.save_device(make_device("free"))
        store.save_device(make_device("offline", connected=False))
        store.save_device(make_device("full"))
        add(store, make_task("filler", created_at=90.0))
        dispatch(store, "filler", "full")
        for target in ("free", "offline", "full", "unknown", None):
            add(store, make_task(f"to_{target}", target_device_id=target))
        assert sorted(ids(store.due_pending_tasks(1000.0, 10))) == ["to_None", "to_free"]
        move(store, "filler", DISPATCHED, COMPLETED, 300.0)
        assert sorted(ids(store.due_pending_tasks(1000.0, 10))) == ["to_None", "to_free", "to_full"]

    def test_due_pending_tasks_order_pinned_and_unpinned_tasks_together(self, store):
        store.save_device(make_device("phone_a", capacity=5))
        store.save_device(make_device("phone_b", capacity=5))
        for task_id, priority, created_at, target in [
            ("any_old", 0, 100.0, None),
            ("a_same_time", 0, 100.0, "phone_a"),  # same priority and time: the one added first goes first
            ("b_high", 3, 105.0, "phone_b"),
            ("any_high", 3, 104.0, None),
            ("any_oldest", 0, 99.0, None),
            ("a_same_time_2", 0, 100.0, "phone_a"),
        ]:
            add(store, make_task(task_id, created_at=created_at, priority=priority, target_device_id=target))
        expected = ["any_high", "b_high", "any_oldest", "any_old", "a_same_time", "a_same_time_2"]
        assert ids(store.due_pending_tasks(1000.0, 10)) == expected
        assert ids(store.due_pending_tasks(1000.0, 4)) == expected[:4]

    def test_scheduled_and_retried_tasks_join_the_queue_when_due(self, store):
        store.save_device(make_device("phone", capacity=5))
        add(store, make_task("past_schedule", created_at=100.0, not_before=50.0))
        add(store, make_task("pinned_later", created_at=101.0, not_before=300.0, target_device_id="phone"))
        add(store, make_task("retried", created_at=102.0))
        dispatch(store, "retried", "phone", now=150.0)
        retry = {"device_id": None, "avoid_device_id": "phone", "attempt": 2, "not_before": 400.0}
        assert move(store, "retried", DISPATCHED, PENDING, 160.0, **retry) is not None
        assert ids(store.due_pending_tasks(200.0, 10)) == ["past_schedule"]
        assert ids(store.due_pending_tasks(300.0, 10)) == ["past_schedule", "pinned_later"]
        assert ids(store.due_pending_tasks(400.0, 10)) == ["past_schedule", "pinned_later", "retried"]
        assert ids(store.due_pending_tasks(250.0, 10)) == ["past_schedule", "pinned_later", "retried"]  # stay due

    @pytest.mark.parametrize(
        "change, now, expected",
        [
            (lambda store: move(store, "filler", DISPATCHED, COMPLETED, 100.0), 100.0, ["to_full"]),
            (lambda store: store.save_device(make_device("full", capacity=2)), 100.0, ["to_full"]),
            (lambda store: store.save_device(make_device("away")), 100.0, ["to_away"]),
            (lambda store: store.set_device_disabled("drained", False), 100.0, ["to_drained"]),
            (lambda store: add(store, make_task("new", created_at=100.0)), 100.0, ["new"]),
            (lambda store: None, 500.0, ["scheduled"]),
            (
                lambda store: move(
                    store, "busy", DISPATCHED, PENDING, 100.0, device_id=None, attempt=2, not_before=150.0
                ),
                150.0,
                ["busy"],
            ),
        ],
        ids=["a slot frees", "more capacity", "the device returns", "enabled", "a new task", "time", "a retry"],
    )
    def test_a_queue_where_nothing_can_start_notices_what_changes_that(self, store, change, now, expected):
        for device in [make_device("full"), make_device("away", connected=False), make_device("drained")]:
            store.save_device(device)
        store.save_device(make_device("spare"))
        store.set_device_disabled("drained", True)
        for task_id, device_id in [("filler", "full"), ("busy", "spare")]:
            add(store, make_task(task_id, created_at=90.0))
            dispatch(store, task_id, device_id, now=95.0)
        for target in ("full", "away", "drained"):
            add(store, make_task(f"to_{target}", target_device_id=target))
        add(store, make_task("scheduled", not_before=500.0))
        assert store.due_pending_tasks(100.0, 10) == [] and store.due_pending_tasks(100.0, 10) == []
        change(store)
        assert ids(store.due_pending_tasks(now, 10)) == expected

    # ---- timeouts and lost devices ----

    def test_timed_out_tasks_count_from_dispatch(self, store):
        store.save_device(make_device("android_001", capacity=10))
        for task_id in ("dispatched", "running", "completed", "short"):
            add(store, make_task(task_id, timeout=5 if task_id == "short" else 300))
            dispatch(store, task_id, "android_001", now=100.0)
        move(store, "running", DISPATCHED, RUNNING, 150.0)
        move(store, "completed", DISPATCHED, COMPLETED, 150.0)
        add(store, make_task("pending", timeout=1))
        assert ids(store.timed_out_tasks(104.9)) == []
        assert ids(store.timed_out_tasks(105.0)) == ["short"]
        assert sorted(ids(store.timed_out_tasks(399.9))) == ["short"]
        assert sorted(ids(store.timed_out_tasks(400.0))) == ["dispatched", "running", "short"]

    def test_tasks_of_lost_devices(self, store):
        for device_id in ("gone_early", "gone_late", "here"):
            store.save_device(make_device(device_id, capacity=5))
        for task_id, device_id in [("t_early", "gone_early"), ("t_late", "gone_late"), ("t_here", "here")]:
            add(store, make_task(task_id))
            dispatch(store, task_id, device_id)
        add(store, make_task("t_done"))
        dispatch(store, "t_done", "gone_early")
        move(store, "t_done", DISPATCHED, COMPLETED, 210.0)
        assert store.mark_disconnected("gone_early", "sid-gone_early", 150.0)
        assert store.mark_disconnected("gone_late", "sid-gone_late", 250.0)
        assert ids(store.tasks_of_lost_devices(149.0)) == []
        assert ids(store.tasks_of_lost_devices(150.0)) == ["t_early"]
        assert sorted(ids(store.tasks_of_lost_devices(300.0))) == ["t_early", "t_late"]

    # ---- list_tasks and counts ----

    def test_list_tasks_filters_pages_and_counts(self, store):
        store.save_device(make_device("android_001", capacity=10))
        for n in range(6):
            add(store, make_task(f"task_{n}", created_at=100.0 + n, task_type="COLLECT" if n % 2 else "DELIST"))
        dispatch(store, "task_0", "android_001")
        dispatch(store, "task_1", "android_001")
        move(store, "task_1", DISPATCHED, COMPLETED, 300.0)
        add(store, make_task("task_targeted", created_at=50.0, target_device_id="android_001"))

        tasks, total = store.list_tasks()
        assert total == 7 and ids(tasks) == [
            "task_5",
            "task_4",
            "task_3",
            "task_2",
            "task_1",
            "task_0",
            "task_targeted",
        ]
        tasks, total = store.list_tasks(limit=2, offset=2)
        assert total == 7 and ids(tasks) == ["task_3", "task_2"]
        tasks, total = store.list_tasks(limit=5, offset=6)
        assert total == 7 and ids(tasks) == ["task_targeted"]
        assert store.list_tasks(offset=100) == ([], 7)

        tasks, total = store.list_tasks(statuses=["pending"])
        assert total == 5 and ids(tasks) == ["task_5", "task_4", "task_3", "task_2", "task_targeted"]
        tasks, total = store.list_tasks(statuses=[DISPATCHED, COMPLETED])
        assert total == 2 and ids(tasks) == ["task_1", "task_0"]
        tasks, total = store.list_tasks(task_type="COLLECT")
        assert total == 3 and ids(tasks) == ["task_5", "task_3", "task_1"]
        tasks, total = store.list_tasks(device_id="android_001")
        assert total == 3 and ids(tasks) == ["task_1", "task_0", "task_targeted"]
        tasks, total = store.list_tasks(statuses=["pending"], device_id="android_001", task_type="DELIST")
        assert total == 1 and ids(tasks) == ["task_targeted"]
        tasks, total = store.list_tasks(statuses=["pending"], task_type="COLLECT", limit=1)
        assert total == 2 and ids(tasks) == ["task_5"]
        assert store.list_tasks(task_type="UPLOAD") == ([], 0)

    def test_count_tasks_by_status(self, store):
        store.save_device(make_device("android_001", capacity=10))
        for n in range(4):
            add(store, make_task(f"task_{n}"))
        dispatch(store, "task_0", "android_001")
        dispatch(store, "task_1", "android_001")
        move(store, "task_1", DISPATCHED, RUNNING, 300.0)
        assert store.count_tasks_by_status() == {"pending": 2, "dispatched": 1, "running": 1}

    def test_count_finished_by_minute(self, store):
        store.save_device(make_device("android_001", capacity=10))
        for n, (status, finished_at) in enumerate(
            [(COMPLETED, 600.0), (COMPLETED, 659.9), (FAILED, 660.0), (CANCELLED, 779.0), (COMPLETED, 780.0)]
        ):
            add(store, make_task(f"task_{n}"))
            dispatch(store, f"task_{n}", "android_001")
            move(store, f"task_{n}", DISPATCHED, status, finished_at, finished_at=finished_at)
        add(store, make_task("task_open"))  # not ended: not counted
        counts = store.count_finished_by_minute(600.0, 780.0)  # since <= finished_at < until
        assert counts == {(0, "completed"): 2, (1, "failed"): 1, (2, "cancelled"): 1}
        assert store.count_finished_by_minute(0.0, 600.0) == {}

    # ---- idempotency ----

    def test_idempotency_key_lookup_respects_since(self, store):
        add(store, make_task("old", created_at=100.0, idempotency_key="k"))
        add(store, make_task("new", created_at=200.0, idempotency_key="k"))
        add(store, make_task("other", created_at=300.0, idempotency_key="other"))
        add(store, make_task("none", created_at=400.0))
        assert store.find_task_by_idempotency_key("k", 50.0).task_id == "new"
        assert store.find_task_by_idempotency_key("k", 200.0).task_id == "new"
        assert store.find_task_by_idempotency_key("k", 200.1) is None
        assert store.find_task_by_idempotency_key("missing", 0.0) is None

    def test_idempotency_keys_are_scoped_to_their_operator(self, store):
        add(store, make_task("mine", 100.0, idempotency_key="k", idempotency_scope="op-a", request_hash="h1"))
        add(store, make_task("open", 200.0, idempotency_key="k", idempotency_scope=""))
        add(store, make_task("legacy", 300.0, idempotency_key="old"))  # stored before keys had an owner
        assert store.find_task_by_idempotency_key("k", 0.0, "op-a").task_id == "mine"
        assert store.find_task_by_idempotency_key("k", 0.0).task_id == "open"
        assert store.find_task_by_idempotency_key("k", 0.0, "op-b") is None
        assert store.find_task_by_idempotency_key("old", 0.0, "op-b").task_id == "legacy"
        assert store.get_task("mine").request_hash == "h1" and store.get_task("legacy").request_hash is None

    # ---- connections ----

    def test_mark_disconnected_only_for_the_current_sid(self, store):
        store.save_device(make_device("android_001", sid="sid-new"))
        assert store.mark_disconnected("android_001", "sid-old", 300.0) is False
        device = store.get_device("android_001")
        assert device.connected is True and device.sid == "sid-new" and device.disconnected_at is None
        assert store.mark_disconnected("android_001", "sid-new", 300.0) is True
        device = store.get_device("android_001")
        assert device.connected is False and device.sid is None and device.disconnected_at == 300.0
        assert device.status == "offline"
        assert store.mark_disconnected("android_001", "sid-new", 400.0) is False
        assert store.get_device("android_001").disconnected_at == 300.0
        assert store.mark_disconnected("android_missing", "sid-x", 400.0) is False

    def test_disconnect_all_gives_a_fresh_grace_and_rebuilds_counts(self, store):
        store.save_device(make_device("android_001", capacity=5))
        store.save_device(make_device("android_002"))
        store.save_device(make_device("android_003", connected=False, disconnected_at=50.0))
        add(store, make_task("task_1"))
        dispatch(store, "task_1", "android_001")
        # A task stored as already active (as after a crash mid-write) is counted by the rebuild.
        store.add_task(make_task("task_2", status=RUNNING, device_id="android_003", dispatched_at=60.0), CREATED)
        store.disconnect_all(1000.0)
        for device in store.list_devices():
            assert device.connected is False and device.sid is None and device.disconnected_at == 1000.0
        assert store.free_devices() == []
        assert store.get_device("android_001").active_tasks == 1
        assert store.get_device("android_002").active_tasks == 0
        assert store.get_device("android_003").active_tasks == 1
        assert ids(store.tasks_of_lost_devices(999.0)) == []
        assert sorted(ids(store.tasks_of_lost_devices(1000.0))) == ["task_1", "task_2"]


def test_sqlite_file_of_another_schema_version_is_refused(tmp_path):
    path = str(tmp_path / "old.db")
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 999")
    with pytest.raises(RuntimeError, match="schema version 999"):
        SQLiteStore(path)


# version -> what takes a file of that version back to the version before (for the migration tests)
UNDO = {
    5: """DROP TABLE batches; DROP TABLE schedules; DROP TABLE schedule_runs;
          DROP INDEX tasks_queue; DROP INDEX tasks_queue_tagged; DROP INDEX tasks_scheduled; DROP INDEX tasks_held;
          DROP INDEX tasks_batch;
          ALTER TABLE tasks DROP COLUMN target_tags; ALTER TABLE tasks DROP COLUMN batch_id;
          ALTER TABLE tasks DROP COLUMN held;
          ALTER TABLE devices DROP COLUMN tags; ALTER TABLE devices DROP COLUMN operator_tags;
          CREATE INDEX tasks_queue ON tasks (priority DESC, created_at)
              WHERE status = 'pending' AND due = 1 AND target_device_id IS NULL;
          CREATE INDEX tasks_scheduled ON tasks (not_before) WHERE status = 'pending' AND due = 0;""",
    4: """DROP INDEX tasks_queue; DROP INDEX tasks_queue_pinned; DROP INDEX tasks_scheduled;
          ALTER TABLE tasks DROP COLUMN due;
          CREATE INDEX tasks_pending ON tasks (status, priority DESC, created_at);""",
    3: "ALTER TABLE tasks DROP COLUMN idempotency_scope; ALTER TABLE tasks DROP COLUMN request_hash;",
    2: """DROP TABLE owed_cancels;
          CREATE TABLE owed_cancels (device_id TEXT, task_id TEXT, PRIMARY KEY (device_id, task_id));""",
}


def back_to_version(path, version):
    """Make the SQLite file at ``path`` what a server of schema ``version`` left (its rows kept)."""
    with sqlite3.connect(path) as db:
        for step in range(SCHEMA_VERSION, version, -1):
            db.executescript(UNDO[step])
        db.execute(f"PRAGMA user_version = {version}")


def test_sqlite_file_of_version_1_is_migrated_and_its_owed_cancels_name_an_attempt(tmp_path):
    path = str(tmp_path / "v1.db")
    store = SQLiteStore(path)
    store.save_device(make_device("android_001"))
    add(store, make_task("task_1", max_retries=1))
    dispatch(store, "task_1", "android_001")
    retry = {"status": PENDING, "attempt": 2, "device_id": None, "updated_at": 300.0}
    store.update_task_if(store.get_task("task_1"), retry)
    dispatch(store, "task_1", "android_001", now=400.0)
    store.update_task_if(store.get_task("task_1"), {"status": CANCELLED, "updated_at": 500.0})
    store.close()
    back_to_version(path, 1)
    with sqlite3.connect(path) as db:  # the cancel owed then
        db.execute("INSERT INTO owed_cancels VALUES ('android_001', 'task_1')")

    migrated = SQLiteStore(path)
    try:
        assert migrated.take_owed_cancels("android_001") == [("task_1", 2)]
        assert migrated.get_task("task_1").status == CANCELLED
        assert migrated._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        migrated.close()
    with sqlite3.connect(path) as db:  # the same table a new file gets
        fresh = sqlite3.connect(":memory:")
        fresh.executescript(SCHEMA)
        columns = "SELECT name, type, \"notnull\", pk FROM pragma_table_info('owed_cancels')"
        assert db.execute(columns).fetchall() == fresh.execute(columns).fetchall()


def test_sqlite_file_of_schema_version_2_is_migrated_and_its_keys_match_any_operator(tmp_path):
    path = str(tmp_path / "v2.db")
    store = SQLiteStore(path)
    add(store, make_task("task_1", idempotency_key="k"))
    store.close()
    back_to_version(path, 2)  # keys without an owner or a request hash
    migrated = SQLiteStore(path)
    try:
        assert migrated.find_task_by_idempotency_key("k", 0.0, "any-operator").task_id == "task_1"
        add(migrated, make_task("task_2", idempotency_key="k2", idempotency_scope="op-a", request_hash="h"))
        assert migrated.get_task("task_2").request_hash == "h"
        assert migrated.find_task_by_idempotency_key("k2", 0.0, "op-b") is None
    finally:
        migrated.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_sqlite_file_of_schema_version_3_is_migrated_and_its_scheduled_tasks_wait(tmp_path):
    path = str(tmp_path / "old.db")
    SQLiteStore(path).close()
    back_to_version(path, 3)  # no ``due`` column, one index over every task
    with sqlite3.connect(path) as db:
        for task_id, status, not_before in [
            ("now", "pending", None),
            ("later", "pending", 500.0),
            ("done", "completed", 50.0),
        ]:
            db.execute(
                "INSERT INTO tasks (task_id, task_type, data, status, timeout, created_at, updated_at, not_before) "
                "VALUES (?, 'DELIST', '{}', ?, 300, 100.0, 100.0, ?)",
                (task_id, status, not_before),
            )
    store = SQLiteStore(path)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert ids(store.due_pending_tasks(499.0, 10)) == ["now"]
    assert ids(store.due_pending_tasks(500.0, 10)) == ["now", "later"]
    assert store.get_task("done").status == COMPLETED
    store.close()


def test_sqlite_file_of_schema_version_4_is_migrated_with_the_tags_its_devices_registered_with(tmp_path):
    path = str(tmp_path / "v4.db")
    registered = {
        "mixed": {"tags": ["shopB", "店铺", 7, "shopA", None, "shopB", {"a": 1}, ["shopC"], "Zed"]},
        "not_a_list": {"tags": "shopA"},
        "untagged": {"model": "Mi 13"},
    }
    store = SQLiteStore(path)
    for device_id, device_info in registered.items():
        store.save_device(make_device(device_id, device_info=device_info))
    add(store, make_task("waiting"))
    store.close()
    back_to_version(path, 4)  # no tags, no batches
    migrated = SQLiteStore(path)
    try:
        assert migrated._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        for device_id, device_info in registered.items():  # the tags a registration now gives, and no operator's
            device = migrated.get_device(device_id)
            assert (device.tags, device.operator_tags) == (device_tags(device_info, []), []), device_id
        assert migrated.get_device("mixed").tags == ["Zed", "shopA", "shopB", "店铺"]
        assert [device.device_id for device in migrated.list_devices(tags=["shopA"])] == ["mixed"]
        assert migrated.get_task("waiting").target_tags is None and migrated.get_task("waiting").batch_id is None
        assert ids(migrated.due_pending_tasks(1000.0, 10)) == ["waiting"]
        assert dispatch(migrated, "waiting", "mixed").status == DISPATCHED
    finally:
        migrated.close()
    fresh = SQLiteStore(str(tmp_path / "fresh.db"))
    fresh.close()
    assert schema_of(path) == schema_of(str(tmp_path / "fresh.db"))  # the same tables and indexes a new file gets


def schema_of(path):
    """Every table's columns and every index's definition in the SQLite file at ``path``."""
    with sqlite3.connect(path) as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]
        columns = {table: db.execute(f"SELECT * FROM pragma_table_info('{table}')").fetchall() for table in tables}
        indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY 1").fetchall()
    return columns, indexes


@pytest.mark.parametrize("open_store", DURABLE_BACKENDS)
def test_data_survives_close_and_reopen(place, open_store):
    first = open_store(place)
    first.save_device(make_device("android_001", capacity=3, device_info={"model": "Mi 13"}))
    add(first, make_task("task_1", created_at=100.0, idempotency_key="k"))
    add(first, make_task("task_2", created_at=101.0))
    dispatch(first, "task_1", "android_001")
    cancel = {"status": CANCELLED, "updated_at": 300.0}
    first.update_task_if(first.get_task("task_2"), cancel, owe_cancel_to="android_001")
    task_1, device = first.get_task("task_1"), first.get_device("android_001")
    first.close()

    second = open_store(place)
    try:
        assert second.get_task("task_1") == task_1
        assert second.get_task("task_2").status == CANCELLED
        assert second.get_device("android_001") == device and device.active_tasks == 1
        assert [e["kind"] for e in second.task_events("task_1")] == ["created", "dispatched"]
        assert second.find_task_by_idempotency_key("k", 0.0).task_id == "task_1"
        assert second.take_owed_cancels("android_001") == [("task_2", 1)]
        assert second.list_tasks()[1] == 2
    finally:
        second.close()


# ---- group commit: output waits for the commit of what it reports ----


@pytest.mark.parametrize("open_store", DURABLE_BACKENDS)
def test_after_commit_runs_once_the_writes_are_visible_to_another_connection(place, open_store):
    store = open_store(place)
    seen_by_others = []
    add(store, make_task("task_1"))
    store.after_commit(
        lambda: seen_by_others.append(
            read_elsewhere(place, open_store, "SELECT status FROM tasks WHERE task_id = 'task_1'")
        )
    )
    store.durable()
    assert seen_by_others == [[("pending",)]]
    store.close()


def test_sqlite_group_commit_holds_the_writes_and_their_output_until_the_batch_commits(tmp_path):
    store = sqlite_at(tmp_path)
    seen_by_others = []

    def look():
        reader = sqlite3.connect(str(tmp_path / "store.db"))
        seen_by_others.append(reader.execute("SELECT status FROM tasks WHERE task_id = 'task_1'").fetchall())
        reader.close()

    add(store, make_task("task_1"))
    store.after_commit(look)
    look()  # not committed yet: another connection does not see it
    assert seen_by_others == [[]]
    store.durable()
    assert seen_by_others == [[], [("pending",)]]
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_after_commit_keeps_order_and_runs_at_once_when_nothing_waits(place, backend):
    store = backend(place)
    calls = []
    store.after_commit(lambda: calls.append("idle"))
    assert calls == ["idle"]
    add(store, make_task("task_1"))
    for name in ("first", "second", "third"):  # SQLite runs them at its group commit, PostgreSQL may run them now
        store.after_commit(lambda name=name: calls.append(name))
    store.durable()
    assert calls == ["idle", "first", "second", "third"]
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_verb_undoes_only_itself_in_a_shared_commit(place, backend):
    store = backend(place)
    add(store, make_task("task_1"))
    with pytest.raises(INTEGRITY_ERRORS):
        store.add_task(make_task("task_1", created_at=105.0), CREATED)  # same id: refused, in the same batch
    add(store, make_task("task_2"))
    store.durable()
    assert store.list_tasks()[1] == 2 and store.get_task("task_1").created_at == 100.0
    assert [e["kind"] for e in store.task_events("task_1")] == ["created"]  # the refused verb left no event
    store.close()


def commit_fault(open_store):
    """An error as the backend's driver raises it when the database cannot take a commit."""
    if open_store is postgresql:
        return psycopg.OperationalError("server closed the connection unexpectedly")
    return DISK_FULL


@pytest.mark.parametrize("open_store", DURABLE_BACKENDS)
def test_a_failed_commit_drops_its_output_is_raised_and_the_next_one_succeeds(place, open_store):
    store = open_store(place)
    fault = commit_fault(open_store)
    sent = []
    store.fail_commits(fault)
    with pytest.raises(StoreUnavailable, match=str(fault)):
        with store.atomically():
            add(store, make_task("task_1"))
            store.after_commit(lambda: sent.append("new_task"))
        store.durable()
    with pytest.raises(StoreUnavailable):
        store.check_writable(200.0)
    store.fail_commits(None)
    assert sent == [] and store.get_task("task_1") is None and store.failed_commits == 2
    store.check_writable(201.0)
    add(store, make_task("task_2"))
    store.after_commit(lambda: sent.append("new_task"))
    store.durable()
    assert sent == ["new_task"] and store.get_task("task_2") is not None and store.failed_commits == 2
    assert read_elsewhere(place, open_store, "SELECT task_id FROM tasks") == [("task_2",)]
    store.close()


def test_sqlite_failed_commit_drops_its_output_and_is_raised_to_those_waiting(tmp_path):
    store = sqlite_at(tmp_path)
    store._db.executescript(  # a deferred foreign key makes COMMIT itself fail, as a full disk would
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);"
        "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);"
    )
    sent = []
    add(store, make_task("task_1"))
    with store._transaction() as db:
        db.execute("INSERT INTO child VALUES (42)")
    store.after_commit(lambda: sent.append("new_task"))
    with pytest.raises(StoreUnavailable):
        store.durable()
    assert sent == [] and store.get_task("task_1") is None
    assert store.failed_commits == 1
    add(store, make_task("task_2"))  # the store goes on with the next batch
    store.durable()
    assert store.get_task("task_2") is not None
    assert store.failed_commits == 1  # the next batch committed
    store.close()


def test_sqlite_commits_fail_while_the_fault_is_on_and_heal_when_it_is_off(tmp_path):
    store = sqlite_at(tmp_path)
    store.fail_commits(DISK_FULL)
    add(store, make_task("task_1"))
    with pytest.raises(StoreUnavailable, match="disk is full"):
        store.durable()
    with pytest.raises(StoreUnavailable):
        store.check_writable(200.0)
    assert store.failed_commits == 2 and store.get_task("task_1") is None
    store.fail_commits(None)
    store.check_writable(201.0)
    add(store, make_task("task_1"))
    store.durable()
    assert store.failed_commits == 2 and store.get_task("task_1") is not None
    store.close()


def test_sqlite_write_the_disk_refuses_is_store_unavailable_and_a_wrong_one_is_not(tmp_path):
    store = sqlite_at(tmp_path)
    add(store, make_task("task_1"))
    store.durable()
    store._db.execute("PRAGMA query_only = ON")  # the file refuses writes, as a read-only disk would
    with pytest.raises(StoreUnavailable, match="readonly"):
        add(store, make_task("task_2"))
    store._db.execute("PRAGMA query_only = OFF")
    with pytest.raises(sqlite3.IntegrityError):  # a wrong write stays what it is: a bug, not an outage
        add(store, make_task("task_1"))
    store.close()


@pytest.mark.parametrize("open_store", DURABLE_BACKENDS)
def test_an_operation_is_seen_by_other_connections_whole_once_it_ends(place, open_store):
    store = open_store(place)
    seen_by_others = []

    def stored(task_id):
        return read_elsewhere(place, open_store, f"SELECT status FROM tasks WHERE task_id = '{task_id}'")

    def operation():
        with store.atomically():
            store.save_device(make_device("android_001"))
            add(store, make_task("task_1"))
            gevent.sleep(0.05)  # others run meanwhile (or wait, on SQLite)
            seen_by_others.append(stored("task_1"))
            dispatch(store, "task_1", "android_001")

    def other():
        add(store, make_task("task_2", created_at=101.0))

    gevent.joinall([gevent.spawn(operation), gevent.spawn(other)], raise_error=True)
    store.durable()
    assert seen_by_others == [[]]  # nothing of an operation shows before it ends...
    assert stored("task_1") == [("dispatched",)] and stored("task_2") == [("pending",)]  # ...and all of it after
    assert store.get_device("android_001").active_tasks == 1
    store.close()


def test_sqlite_atomically_keeps_commits_and_other_greenlets_out_of_an_operation(tmp_path):
    store = sqlite_at(tmp_path)
    order, seen_by_others = [], []

    def committed_tasks():
        reader = sqlite3.connect(str(tmp_path / "store.db"))
        count = reader.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
        reader.close()
        return count

    def operation():
        with store.atomically():
            add(store, make_task("task_1"))  # its commit is due at the next turn of the loop...
            order.append("read and write")
            gevent.sleep(0.05)  # ...but waits, as does every other greenlet, however long this takes
            seen_by_others.append(committed_tasks())
            order.append("operation done")

    def other():
        order.append("other starts")
        store.get_task("task_1")
        order.append("other done")

    gevent.joinall([gevent.spawn(operation), gevent.spawn(other)])
    store.durable()
    assert order == ["read and write", "other starts", "operation done", "other done"]
    assert seen_by_others == [0] and committed_tasks() == 1
    store.close()


def test_sqlite_failed_commit_forgets_that_no_task_was_pending(tmp_path):
    store = sqlite_at(tmp_path)
    store.save_device(make_device("android_001"))
    add(store, make_task("task_1"))
    store.durable()
    dispatch(store, "task_1", "android_001")  # the last pending task leaves, in a batch that will fail
    assert store.has_pending_tasks() is False
    store.fail_commits(DISK_FULL)
    with pytest.raises(StoreUnavailable):
        store.durable()
    store.fail_commits(None)
    assert store.get_task("task_1").status == PENDING
    assert store.has_pending_tasks() is True
    store.close()


@pytest.mark.parametrize("open_store", DURABLE_BACKENDS)
def test_active_tasks_are_known_after_a_reopen_before_any_read(place, open_store):
    # After a restart devices report on the tasks they were running before anything reads those tasks.
    first = open_store(place)
    first.save_device(make_device("android_001"))
    add(first, make_task("task_1"))
    dispatch(first, "task_1", "android_001")
    first.close()
    second = open_store(place)
    try:
        assert second.task_active_on("task_1", "android_001", 1)
    finally:
        second.close()


# ---- several servers on one database (PostgreSQL): no server answers from what only it wrote ----


@pytest.mark.parametrize("open_store", SHARED_BACKENDS)
def test_a_server_sees_what_another_server_on_the_database_wrote(place, open_store):
    node_a, node_b = open_store(place), open_store(place)
    try:
        node_a.save_device(make_device("android_001", capacity=2))
        add(node_a, make_task("task_1"))
        node_a.durable()
        assert node_b.get_task("task_1") == node_a.get_task("task_1") and node_b.has_pending_tasks()
        assert ids(node_b.due_pending_tasks(1000.0, 10)) == ["task_1"]
        stale = node_a.get_task("task_1")
        assert dispatch(node_b, "task_1", "android_001") is not None
        node_b.durable()
        assert node_a.update_task_if(stale, {"status": CANCELLED, "updated_at": 300.0}) is None
        assert node_a.get_task("task_1").status == DISPATCHED and not node_a.has_pending_tasks()
        assert node_a.get_device("android_001").active_tasks == 1
        assert [e["kind"] for e in node_a.task_events("task_1")] == ["created", "dispatched"]
    finally:
        node_a.close()
        node_b.close()


@pytest.mark.parametrize("open_store", SHARED_BACKENDS)
def test_of_two_servers_racing_to_move_one_task_only_one_wins(place, open_store):
    node_a, node_b = open_store(place), open_store(place)
    try:
        for device_id in ("phone_a", "phone_b"):
            node_a.save_device(make_device(device_id))
        add(node_a, make_task("task_1"))
        node_a.durable()
        reads = [(node_a, node_a.get_task("task_1"), "phone_a"), (node_b, node_b.get_task("task_1"), "phone_b")]

        def claim(node, read, device_id):
            changes = {"status": DISPATCHED, "device_id": device_id, "dispatched_at": 200.0, "updated_at": 200.0}
            won = node.update_task_if(read, changes, Event("dispatched", "server", device_id))
            node.durable()
            return won

        racers = [gevent.spawn(claim, *read) for read in reads]
        gevent.joinall(racers, raise_error=True)
        winners = [racer.value for racer in racers if racer.value is not None]
        assert len(winners) == 1
        assert node_b.get_task("task_1") == winners[0]
        loads = {device_id: node_b.get_device(device_id).active_tasks for device_id in ("phone_a", "phone_b")}
        assert loads[winners[0].device_id] == 1 and sorted(loads.values()) == [0, 1]
        assert [e["kind"] for e in node_b.task_events("task_1")] == ["created", "dispatched"]
    finally:
        node_a.close()
        node_b.close()


def test_sqlite_failed_commit_leaves_the_active_tasks_as_the_file_has_them(tmp_path):
    store = sqlite_at(tmp_path)
    store.save_device(make_device("android_001"))
    add(store, make_task("task_1"))
    add(store, make_task("task_2"))
    dispatch(store, "task_1", "android_001")
    store.durable()
    dispatch(store, "task_2", "android_001")  # in a batch that will fail
    move(store, "task_1", DISPATCHED, COMPLETED, 210.0, finished_at=210.0)
    store.fail_commits(DISK_FULL)
    with pytest.raises(StoreUnavailable):
        store.durable()
    store.fail_commits(None)
    assert store.task_active_on("task_1", "android_001") and not store.task_active_on("task_2", "android_001")
    store.close()


def test_sqlite_active_task_changed_behind_the_store_is_read_again_after_a_refused_update(tmp_path):
    # Active tasks are answered from memory (only the store's connection writes them). Should the file change
    # anyway, a refused update makes the next read come from the file, so a service retry cannot loop on memory.
    store = sqlite_at(tmp_path)
    store.save_device(make_device("android_001"))
    add(store, make_task("task_1"))
    dispatch(store, "task_1", "android_001")
    store.durable()
    held = store.get_task("task_1")
    other = sqlite3.connect(str(tmp_path / "store.db"), isolation_level=None)
    other.execute("UPDATE tasks SET status = 'cancelled', finished_at = 300.0 WHERE task_id = 'task_1'")
    other.close()
    assert store.get_task("task_1") == held  # memory, as expected while only the store writes
    assert store.update_task_if(held, {"progress": 10, "updated_at": 301.0}) is None
    assert store.get_task("task_1").status == CANCELLED
    store.close()


# ---- the pending queue reads only what can start now (SQLite) ----


def vm_steps(store, call):
    """How much work ``call`` makes SQLite do, in steps of its virtual machine: the same on any machine."""
    steps = 0

    def count():
        nonlocal steps
        steps += 1
        return 0

    store._db.set_progress_handler(count, 10)
    try:
        call()
    finally:
        store._db.set_progress_handler(None, 10)
    return steps


def queue_with(store, backlog):
    """Two tasks that can start now on ``free`` (one for any device, one pinned), then 1,000 that cannot, ahead of
    them in dispatch order, as ``backlog`` says."""
    store.save_device(make_device("free", capacity=3))
    store.save_device(make_device("away", connected=False))
    store.save_device(make_device("full"))
    store.save_device(make_device("drained"))
    store.set_device_disabled("drained", True)
    add(store, make_task("filler", created_at=90.0))
    dispatch(store, "filler", "full")
    add(store, make_task("any", created_at=100.0))
    add(store, make_task("pinned", created_at=101.0, target_device_id="free"))
    for number in range(1000):
        add(store, make_task(f"waiting_{number}", created_at=50.0 + number / 100, priority=5, **backlog))


BACKLOGS = {
    "pinned to an offline device": {"target_device_id": "away"},
    "pinned to a full device": {"target_device_id": "full"},
    "pinned to a disabled device": {"target_device_id": "drained"},
    "scheduled for later": {"not_before": 5000.0},
    "pinned to a free device, scheduled for later": {"target_device_id": "free", "not_before": 5000.0},
}


@pytest.mark.parametrize("backlog", BACKLOGS.values(), ids=BACKLOGS.keys())
def test_sqlite_does_not_read_tasks_that_cannot_start_now(tmp_path, backlog):
    store = sqlite_at(tmp_path)
    queue_with(store, {})
    store.due_pending_tasks(1000.0, 10)  # measure the second look at the queue in both stores
    alone = vm_steps(store, lambda: store.due_pending_tasks(1000.0, 10))
    store.close()
    store = SQLiteStore(str(tmp_path / "with-backlog.db"))
    queue_with(store, backlog)
    assert ids(store.due_pending_tasks(1000.0, 10)) == ["any", "pinned"]
    assert vm_steps(store, lambda: store.due_pending_tasks(1000.0, 10)) < alone * 2  # not 1,000 rows more
    store.close()
