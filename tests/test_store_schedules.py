"""Contract of the schedule verbs of ``taskserver.store.base.Store``, run against every store backend (as
``test_store_contract.py`` does for tasks and devices): schedules, due schedules, and runs made once per fire time."""

from dataclasses import FrozenInstanceError

import pytest

from taskserver.domain import Misfire, Schedule, ScheduleKind, ScheduleRun
from taskserver.store import SQLiteStore
from taskserver.store.postgres import PostgresStore


def open_store(backend, request, tmp_path):
    """A store of ``backend`` at this test's place: opening it again finds what the first stored."""
    if backend == "postgresql":
        return PostgresStore(request.getfixturevalue("postgres_url"))
    return SQLiteStore(str(tmp_path / "store.db"))


@pytest.fixture(params=["sqlite", "postgresql"])
def reopen(request, tmp_path):
    """Opens a store of each backend at this test's place (closed after the test)."""
    opened = []

    def make():
        store = open_store(request.param, request, tmp_path)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(reopen):
    return reopen()


def make_schedule(schedule_id, created_at=100.0, **fields):
    """An enabled daily task schedule, due at ``next_run_at`` (default 1000)."""
    fields.setdefault("body", {"task_type": "DELIST", "data": {"product_ids": ["123"]}, "priority": 0})
    fields.setdefault("next_run_at", 1000.0)
    return Schedule(
        schedule_id=schedule_id,
        name=fields.pop("name", schedule_id),
        cron=fields.pop("cron", "0 9 * * *"),
        timezone=fields.pop("timezone", "Asia/Shanghai"),
        kind=fields.pop("kind", ScheduleKind.TASK),
        created_at=created_at,
        updated_at=created_at,
        **fields,
    )


def ids(schedules):
    return [schedule.schedule_id for schedule in schedules]


def test_added_schedule_reads_back_equal_and_as_a_value(store):
    schedule = make_schedule(
        "schedule_1",
        name="每日下架",
        body={"task_type": "DELIST", "data": {"product_ids": ["商品1"], "nested": [1, 2.5, None, True]}, "tags": None},
        misfire=Misfire.SKIP,
        enabled=False,
        next_run_at=None,
    )
    store.add_schedule(schedule)
    got = store.get_schedule("schedule_1")
    assert got == schedule
    assert isinstance(got.kind, ScheduleKind) and isinstance(got.misfire, Misfire) and got.enabled is False
    with pytest.raises(FrozenInstanceError):
        got.enabled = True
    got.body["data"]["product_ids"].append("evil")
    assert store.get_schedule("schedule_1").body["data"]["product_ids"] == ["商品1"]
    assert store.get_schedule("schedule_missing") is None


def test_list_schedules_newest_first_with_pages_and_a_total(store):
    for number in range(5):
        store.add_schedule(make_schedule(f"schedule_{number}", created_at=100.0 + number))
    page, total = store.list_schedules(limit=2, offset=1)
    assert ids(page) == ["schedule_3", "schedule_2"] and total == 5
    everything, _ = store.list_schedules()
    assert ids(everything) == [f"schedule_{number}" for number in (4, 3, 2, 1, 0)]


def test_update_schedule_applies_the_changes_and_returns_it(store):
    store.add_schedule(make_schedule("schedule_1"))
    body = {"task_type": "COLLECT", "data": {"target_url": "https://example.com"}}
    changes = {"cron": "*/5 * * * *", "body": body, "enabled": False, "next_run_at": None, "misfire": Misfire.SKIP}
    updated = store.update_schedule("schedule_1", {**changes, "updated_at": 200.0})
    assert updated == store.get_schedule("schedule_1")
    assert (updated.cron, updated.body, updated.enabled, updated.next_run_at) == ("*/5 * * * *", body, False, None)
    assert updated.misfire == Misfire.SKIP and updated.updated_at == 200.0 and updated.created_at == 100.0
    assert store.update_schedule("schedule_missing", {"name": "x"}) is None


def test_delete_schedule_takes_its_runs_along(store):
    store.add_schedule(make_schedule("schedule_1"))
    store.add_schedule(make_schedule("schedule_2"))
    store.add_schedule_run("schedule_1", 1000.0, 1001.0)
    store.add_schedule_run("schedule_2", 1000.0, 1001.0)
    assert store.delete_schedule("schedule_1") is True
    assert store.get_schedule("schedule_1") is None and store.schedule_runs("schedule_1", 10) == []
    assert len(store.schedule_runs("schedule_2", 10)) == 1
    assert store.delete_schedule("schedule_1") is False


def test_due_schedules_are_the_enabled_ones_whose_time_came_earliest_first(store):
    store.add_schedule(make_schedule("later", next_run_at=1500.0))
    store.add_schedule(make_schedule("due_second", next_run_at=1200.0))
    store.add_schedule(make_schedule("due_first", next_run_at=900.0))
    store.add_schedule(make_schedule("due_now", next_run_at=1300.0))
    store.add_schedule(make_schedule("paused", enabled=False, next_run_at=None))
    assert ids(store.due_schedules(1300.0, 10)) == ["due_first", "due_second", "due_now"]
    assert ids(store.due_schedules(1300.0, 1)) == ["due_first"]
    assert store.due_schedules(800.0, 10) == []


def test_each_fire_time_runs_once_and_runs_list_newest_first(store):
    store.add_schedule(make_schedule("schedule_1"))
    assert store.add_schedule_run("schedule_1", 1000.0, 1001.0) is True
    assert store.add_schedule_run("schedule_1", 1000.0, 1002.0) is False
    assert store.add_schedule_run("schedule_1", 2000.0, 2003.0) is True
    assert store.add_schedule_run("schedule_2", 1000.0, 1001.0) is True  # another schedule's fire time
    store.record_schedule_run("schedule_1", 1000.0, task_id="task_1")
    error = {"message": "设备 x 不存在", "error_code": "DEVICE_NOT_FOUND"}
    store.record_schedule_run("schedule_1", 2000.0, error=error)
    assert store.schedule_runs("schedule_1", 10) == [
        ScheduleRun("schedule_1", 2000.0, 2003.0, error=error),
        ScheduleRun("schedule_1", 1000.0, 1001.0, task_id="task_1"),
    ]
    assert [run.fire_at for run in store.schedule_runs("schedule_1", 1)] == [2000.0]


def test_last_schedule_runs_gives_each_schedules_latest_run(store):
    for schedule_id in ("schedule_1", "schedule_2", "schedule_3"):
        store.add_schedule(make_schedule(schedule_id))
    for fire_at in (3000.0, 1000.0, 2000.0):  # not made in fire time order
        store.add_schedule_run("schedule_1", fire_at, fire_at + 1)
    store.add_schedule_run("schedule_2", 1500.0, 1501.0)
    store.record_schedule_run("schedule_2", 1500.0, batch_id="batch_1")
    assert store.last_schedule_runs(["schedule_1", "schedule_2", "schedule_3"]) == {
        "schedule_1": ScheduleRun("schedule_1", 3000.0, 3001.0),
        "schedule_2": ScheduleRun("schedule_2", 1500.0, 1501.0, batch_id="batch_1"),
    }
    assert store.last_schedule_runs(["schedule_2"]).keys() == {"schedule_2"}
    assert store.last_schedule_runs([]) == {}


def test_a_fire_time_run_before_a_reopen_does_not_run_again(reopen):
    first = reopen()
    first.add_schedule(make_schedule("schedule_1"))
    assert first.add_schedule_run("schedule_1", 1000.0, 1001.0)
    first.record_schedule_run("schedule_1", 1000.0, task_id="task_1")
    first.update_schedule("schedule_1", {"next_run_at": 2000.0})
    first.durable()
    first.close()
    again = reopen()
    assert again.get_schedule("schedule_1").next_run_at == 2000.0
    assert again.add_schedule_run("schedule_1", 1000.0, 1500.0) is False
    assert again.schedule_runs("schedule_1", 10) == [ScheduleRun("schedule_1", 1000.0, 1001.0, task_id="task_1")]


@pytest.fixture
def two_nodes(postgres_url):
    """Two PostgreSQL stores on one database, as two nodes have."""
    stores = [PostgresStore(postgres_url), PostgresStore(postgres_url)]
    yield stores
    for store in stores:
        store.close()


def test_postgresql_a_due_schedule_claimed_by_one_unit_is_skipped_by_another(two_nodes):
    leader, other = two_nodes
    leader.add_schedule(make_schedule("schedule_1"))
    leader.add_schedule(make_schedule("schedule_2", next_run_at=1100.0))
    with leader.atomically():
        assert ids(leader.due_schedules(2000.0, 1)) == ["schedule_1"]
        assert ids(other.due_schedules(2000.0, 10)) == ["schedule_2"]
    assert ids(other.due_schedules(2000.0, 10)) == ["schedule_1", "schedule_2"]
