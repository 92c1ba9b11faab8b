"""Contract of the store's fleet verbs: device tags, tasks for tags, batches and their held tasks. Run against every
backend of ``test_store_contract.BACKENDS``, through the verbs alone, as that suite is."""

from dataclasses import replace

import gevent
import psycopg
import pytest
from gevent.event import Event as Signal
from test_store_contract import (
    BACKENDS,
    CANCELLED,
    COMPLETED,
    DISPATCHED,
    FAILED,
    PENDING,
    RUNNING,
    SHARED_BACKENDS,
    Place,
    add,
    dispatch,
    ids,
    make_device,
    make_task,
    move,
    queue_with,
    sqlite_at,
    vm_steps,
)

from taskserver.domain import Batch, BatchStatus, Event
from taskserver.store import SQLiteStore


@pytest.fixture
def place(request, tmp_path):
    return Place(request, tmp_path)


@pytest.fixture(params=BACKENDS)
def store(request, place):
    """A fresh empty store of each backend."""
    opened = request.param(place)
    yield opened
    opened.close()


def make_batch(batch_id, total, created_at=100.0, **fields):
    """A running spread batch for any device."""
    fields.setdefault("options", {"priority": 0, "online_only": False})
    return Batch(
        batch_id=batch_id,
        task_type="DELIST",
        mode="spread",
        target={"all": True},
        total=total,
        created_at=created_at,
        updated_at=created_at,
        **fields,
    )


def batch_tasks(batch_id, size, created_at=100.0, **fields):
    """The batch's ``size`` pending tasks ``<batch_id>_0``, ``_1``, ... in batch order (all made at one time)."""
    return [make_task(f"{batch_id}_{n}", created_at=created_at, batch_id=batch_id, **fields) for n in range(size)]


def created(batch_id):
    """The first history line of a batch's task."""
    return Event("created", "operator", None, {"task_type": "DELIST", "batch_id": batch_id})


def add_batch(store, batch_id, size, released=None, created_at=100.0, tasks=None, **task_fields):
    """Store a batch of ``size`` tasks (``tasks``, or ``batch_tasks``) with the first ``released`` released (all if
    None), as the service does; return the batch."""
    tasks = tasks or batch_tasks(batch_id, size, created_at, **task_fields)
    batch = make_batch(batch_id, len(tasks), created_at, max_in_flight=released)
    store.add_batch(batch, tasks, created(batch_id), released=len(tasks) if released is None else released)
    return batch


def due(store, now=1000.0, limit=10):
    return ids(store.due_pending_tasks(now, limit))


def counters(store, batch_id):
    batch = store.get_batch(batch_id)
    return batch.completed, batch.failed, batch.cancelled


# ---- tags on devices ----


def test_a_device_keeps_an_operators_tags_when_it_is_saved_again(store):
    store.save_device(make_device("phone", device_info={"tags": ["b", "a"]}, tags=["a", "b"]))
    device = store.get_device("phone")
    assert (device.tags, device.operator_tags) == (["a", "b"], [])
    assert store.set_device_tags("phone", ["vip", "店铺"], ["a", "b", "vip", "店铺"]) is True
    assert store.set_device_tags("nobody", ["vip"], ["vip"]) is False and store.get_device("nobody") is None
    device = store.get_device("phone")
    assert (device.tags, device.operator_tags) == (["a", "b", "vip", "店铺"], ["vip", "店铺"])
    # it registers again with other tags of its own: it is saved with them, and the operator's stay
    store.save_device(make_device("phone", registered_at=200.0, device_info={"tags": ["c"]}, tags=["c", "vip", "店铺"]))
    device = store.get_device("phone")
    assert (device.tags, device.operator_tags, device.registered_at) == (["c", "vip", "店铺"], ["vip", "店铺"], 200.0)
    device.tags.append("evil")
    assert store.get_device("phone").tags == ["c", "vip", "店铺"]  # a copy


def test_devices_are_listed_by_tags_they_all_have(store):
    store.save_device(make_device("ab", registered_at=100.0, tags=["a", "b"]))
    store.save_device(make_device("a", registered_at=101.0, tags=["a"]))
    store.save_device(make_device("b_away", registered_at=102.0, connected=False, tags=["b"]))
    store.save_device(make_device("plain", registered_at=103.0))
    store.set_device_tags("plain", ["b", "店铺"], ["b", "店铺"])  # an operator's tags count

    def listed(**query):
        return [device.device_id for device in store.list_devices(**query)]

    assert listed() == ["plain", "b_away", "a", "ab"]
    assert listed(tags=["a"]) == ["a", "ab"]
    assert listed(tags=("b", "a")) == ["ab"]
    assert listed(tags=["b"]) == ["plain", "b_away", "ab"]
    assert listed(tags=["店铺"]) == ["plain"]
    assert listed(tags=["b"], statuses=["offline"]) == ["b_away"]
    assert listed(tags=["c"]) == [] and listed(tags=["a", "c"]) == []
    store.set_device_disabled("ab", True)
    assert listed(tags=["a"], disabled=False) == ["a"] and listed(tags=["a"], disabled=True) == ["ab"]


def test_free_devices_add_the_least_loaded_with_each_tag_set(store):
    store.save_device(make_device("idle", registered_at=100.0))
    store.save_device(make_device("ab_busy", registered_at=101.0, tags=["a", "b"]))
    store.save_device(make_device("ab_half", capacity=2, registered_at=102.0, tags=["a", "b"]))
    store.save_device(make_device("abc_idle", capacity=2, registered_at=103.0, tags=["a", "b", "c"]))
    store.save_device(make_device("a_idle", registered_at=104.0, tags=["a"]))
    store.save_device(make_device("ab_away", connected=False, tags=["a", "b"]))
    store.save_device(make_device("ab_drained", tags=["a", "b"]))
    store.set_device_disabled("ab_drained", True)
    for task_id, device_id in [("t1", "ab_busy"), ("t2", "ab_half")]:
        add(store, make_task(task_id))
        dispatch(store, task_id, device_id)

    def free(**asked):
        return sorted(device.device_id for device in store.free_devices(**asked))

    assert free(limit=1) == ["idle"]
    assert free(limit=1, tag_sets=[("a", "b")]) == ["abc_idle", "idle"]
    assert free(limit=2, tag_sets=[("a", "b")]) == ["ab_half", "abc_idle", "idle"]
    assert free(limit=1, tag_sets=[("c",), ("x",)]) == ["abc_idle", "idle"]
    assert free(limit=1, tag_sets=[("a",), ("b",)]) == ["abc_idle", "idle"]
    assert free(tag_sets=[("a", "b")]) == ["a_idle", "ab_half", "abc_idle", "idle"]


# ---- tasks for tags ----


def test_a_tagged_task_is_due_only_while_a_free_device_has_all_its_tags(store):
    store.save_device(make_device("ab", tags=["a", "b"]))
    store.save_device(make_device("a", tags=["a"]))
    add(store, make_task("for_ab", created_at=100.0, target_tags=["a", "b"]))
    add(store, make_task("for_ac", created_at=101.0, target_tags=["a", "c"]))
    add(store, make_task("for_a", created_at=102.0, target_tags=["a"]))
    assert store.get_task("for_ab").target_tags == ["a", "b"] and store.get_task("for_ab").batch_id is None
    assert due(store) == ["for_ab", "for_a"]
    add(store, make_task("filler", created_at=50.0))
    dispatch(store, "filler", "ab")  # ab is full
    assert due(store) == ["for_a"]
    assert store.mark_disconnected("a", "sid-a", 300.0)
    assert due(store) == []
    move(store, "filler", DISPATCHED, COMPLETED, 310.0)  # a slot frees on ab
    assert due(store) == ["for_ab", "for_a"]
    store.set_device_disabled("ab", True)
    assert due(store) == []


def test_tagged_tasks_that_cannot_start_hide_no_task_behind_them(store):
    store.save_device(make_device("full", tags=["busy"]))
    store.save_device(make_device("away", connected=False, tags=["gone"]))
    store.save_device(make_device("free", capacity=5, tags=["here"]))
    add(store, make_task("filler", created_at=10.0))
    dispatch(store, "filler", "full")
    for n in range(100):  # before the open task in dispatch order, waiting for a full, an absent or no device
        for tag in ("busy", "gone", "nobody"):
            add(store, make_task(f"{tag}_{n}", created_at=50.0 + n, priority=9, target_tags=[tag]))
    add(store, make_task("open", created_at=201.0))
    assert due(store, limit=1) == ["open"]
    add(store, make_task("for_here", created_at=200.0, target_tags=["here"]))
    add(store, make_task("for_here_and_busy", created_at=199.0, priority=9, target_tags=["busy", "here"]))
    assert due(store, limit=1) == ["for_here"]
    assert due(store) == ["for_here", "open"]


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda store: move(store, "filler", DISPATCHED, COMPLETED, 100.0), ["for_x"]),
        (lambda store: store.save_device(make_device("away", tags=["y"])), ["for_y"]),
        (lambda store: store.set_device_tags("plain", ["z"], ["z"]), ["for_z"]),
        (lambda store: store.save_device(make_device("plain", device_info={"tags": ["z"]}, tags=["z"])), ["for_z"]),
        (lambda store: store.set_device_disabled("drained", False), ["for_w"]),
    ],
    ids=["a slot frees", "the device connects", "an operator tags a device", "a device registers with them", "enabled"],
)
def test_a_queue_where_no_tagged_task_can_start_notices_what_changes_that(store, change, expected):
    store.save_device(make_device("full", tags=["x"]))
    store.save_device(make_device("away", connected=False, tags=["y"]))
    store.save_device(make_device("plain"))
    store.save_device(make_device("drained", tags=["w"]))
    store.set_device_disabled("drained", True)
    add(store, make_task("filler", created_at=90.0))
    dispatch(store, "filler", "full", now=95.0)
    for tag in "xyzw":
        add(store, make_task(f"for_{tag}", target_tags=[tag]))
    assert due(store, 100.0) == [] and due(store, 100.0) == []
    if isinstance(store, SQLiteStore):
        assert store._waiting_for is not None  # it remembers that nothing can start: the change must undo that
    change(store)
    assert due(store, 100.0) == expected


def test_sqlite_a_slot_freed_on_a_device_without_the_tags_waited_for_does_not_send_it_looking_again(tmp_path):
    store = sqlite_at(tmp_path)
    store.save_device(make_device("plain", capacity=5))
    store.save_device(make_device("only_x", capacity=5, tags=["x"]))
    store.save_device(make_device("x_y_z", tags=["x", "y", "z"]))
    for task_id, device_id in [("on_plain", "plain"), ("on_only_x", "only_x"), ("on_x_y_z", "x_y_z")]:
        add(store, make_task(task_id, created_at=90.0))
        dispatch(store, task_id, device_id, now=95.0)
    add(store, make_task("for_x_y", target_tags=["x", "y"]))
    assert due(store, 100.0) == []
    for task_id in ("on_plain", "on_only_x"):  # their devices lack y: the look's answer stands
        move(store, task_id, DISPATCHED, COMPLETED, 100.0)
        assert store._waiting_for is not None
        assert vm_steps(store, lambda: store.due_pending_tasks(100.0, 10)) == 0
    move(store, "on_x_y_z", DISPATCHED, COMPLETED, 100.0)
    assert due(store, 100.0) == ["for_x_y"]
    store.close()


# a tag the 1,000 waiting tasks ask for, and which device of ``queue_with`` has it (None: no device)
TAGGED_BACKLOGS = {
    "no device has": None,
    "only a full device has": "full",
    "only an absent device has": "away",
    "only a disabled device has": "drained",
}


@pytest.mark.parametrize("holder", TAGGED_BACKLOGS.values(), ids=TAGGED_BACKLOGS.keys())
def test_sqlite_does_not_read_tagged_tasks_that_cannot_start_now(tmp_path, holder):
    store = sqlite_at(tmp_path)
    queue_with(store, {})
    store.due_pending_tasks(1000.0, 10)  # measure the second look at the queue in both stores
    alone = vm_steps(store, lambda: store.due_pending_tasks(1000.0, 10))
    store.close()
    store = SQLiteStore(str(tmp_path / "with-backlog.db"))
    queue_with(store, {"target_tags": ["x"]})
    if holder is not None:
        store.set_device_tags(holder, ["x"], ["x"])
    assert due(store) == ["any", "pinned"]
    assert vm_steps(store, lambda: store.due_pending_tasks(1000.0, 10)) < alone * 2  # not 1,000 rows more
    store.close()


def test_sqlite_does_not_read_held_tasks(tmp_path):
    def measured(store):
        """The work of a look at the queue and of the question before it, once the store holds no answer."""
        store.due_pending_tasks(1000.0, 10)
        store._pending, store._waiting_for = None, None
        return vm_steps(store, lambda: (store.has_pending_tasks(), store.due_pending_tasks(1000.0, 10)))

    store = sqlite_at(tmp_path)
    queue_with(store, {"not_before": 5000.0})
    alone = measured(store)
    store.close()
    store = SQLiteStore(str(tmp_path / "with-backlog.db"))
    add_batch(store, "b", 1000, released=0, created_at=50.0, priority=5)  # for any device, all held, the oldest
    queue_with(store, {"not_before": 5000.0})
    assert due(store) == ["any", "pinned"]
    assert measured(store) < alone * 2
    store.close()


def test_sqlite_knows_a_task_is_pending_until_one_leaves_the_queue(tmp_path):
    store = sqlite_at(tmp_path)
    store.save_device(make_device("phone", capacity=5))
    add(store, make_task("waiting", target_tags=["nobody"]))
    add(store, make_task("open"))
    assert store.has_pending_tasks() is True
    store.add_task(make_task("direct", status=DISPATCHED, device_id="phone", dispatched_at=100.0), created("b"))
    move(store, "direct", DISPATCHED, COMPLETED, 110.0)
    assert vm_steps(store, store.has_pending_tasks) == 0  # no write took a task out of the queue
    dispatch(store, "open", "phone")
    assert store.has_pending_tasks() is True and vm_steps(store, store.has_pending_tasks) == 0  # asked once
    move(store, "waiting", PENDING, CANCELLED, 120.0)
    assert store.has_pending_tasks() is False
    store.close()


def test_held_tasks_alone_are_no_pending_work(store):
    store.save_device(make_device("phone", capacity=5))
    add_batch(store, "b", 3, released=1)
    assert store.has_pending_tasks() is True and store.dispatchable_count(at_most=10) == 5
    dispatch(store, "b_0", "phone")
    assert store.has_pending_tasks() is False and store.dispatchable_count(at_most=10) == 0  # nothing could start
    move(store, "b_0", DISPATCHED, COMPLETED, 300.0, finished_at=300.0)  # releases b_1
    assert store.has_pending_tasks() is True and store.dispatchable_count(at_most=10) == 5
    move(store, "b_1", PENDING, CANCELLED, 310.0, finished_at=310.0)  # releases b_2
    assert store.has_pending_tasks() is True


def thousand_devices(place, connected):
    """1,000 untagged devices of capacity 1, written straight to PostgreSQL, then ANALYZEd (as autovacuum does once a
    table has grown)."""
    with psycopg.connect(place.postgres_url, autocommit=True) as db:
        db.execute(
            "INSERT INTO devices (device_id, device_name, device_info, capacity, connected, sid, registered_at, "
            "created_at) SELECT 'd' || n, 'd' || n, '{}', 1, %s, CASE WHEN %s THEN 'sid' || n END, n, n "
            "FROM generate_series(1, 1000) n",
            (connected, connected),
        )
        db.execute("ANALYZE devices")


def devices_read(store):
    """The device rows the open unit of work of ``store`` (PostgreSQL) has read so far."""
    (read,) = store._rows(
        "SELECT seq_tup_read + COALESCE(idx_tup_fetch, 0) AS n FROM pg_stat_xact_user_tables WHERE relname = 'devices'"
    )
    return read["n"]


@pytest.mark.parametrize("open_store", SHARED_BACKENDS)
def test_postgresql_does_not_read_every_free_device_for_tags_none_of_them_has(place, open_store):
    store = open_store(place)
    try:
        thousand_devices(place, connected=True)
        for tag in ("nobody", "nowhere"):
            add(store, make_task(f"for_{tag}", target_tags=[tag]))
        with store.atomically():
            assert due(store) == []
            assert devices_read(store) < 100  # not 1,000 for each tag set
    finally:
        store.close()


@pytest.mark.parametrize("open_store", SHARED_BACKENDS)
def test_postgresql_asks_whether_work_can_start_without_reading_every_free_device(place, open_store):
    store = open_store(place)
    try:
        thousand_devices(place, connected=False)  # the planner's last look: from before the phones connected
        with psycopg.connect(place.postgres_url, autocommit=True) as db:
            db.execute("UPDATE devices SET connected = TRUE, sid = 'sid-' || device_id")
        add(store, make_task("for_nobody", target_tags=["nobody"]))
        add(store, make_task("for_away", target_device_id="away"))
        with store.atomically():
            assert store.has_pending_tasks() is False and store.dispatchable_count(at_most=32) == 0
            assert devices_read(store) < 100  # not the 1,000 free devices, for each question
    finally:
        store.close()


@pytest.mark.parametrize("open_store", SHARED_BACKENDS)
def test_postgresql_sees_no_pending_work_while_no_pending_task_can_start(place, open_store):
    """A backlog no free device can take costs the dispatcher no look at the queue (one read answers no)."""

    def work(store):
        """The free slots a look at the queue could fill, or 0; whether there is pending work agrees (in this test)."""
        count = store.dispatchable_count(at_most=10)
        assert store.has_pending_tasks() is (count > 0)
        return count

    store = open_store(place)
    try:
        store.save_device(make_device("phone", capacity=3))
        store.set_device_tags("phone", ["shopA"], ["shopA"])
        store.save_device(make_device("away", connected=False))
        add(store, make_task("for_nobody", target_tags=["nobody"]))
        add(store, make_task("for_away", target_device_id="away"))
        assert work(store) == 0
        add(store, make_task("for_shop", target_tags=["shopA"]))
        assert work(store) == 3
        dispatch(store, "for_shop", "phone")
        assert work(store) == 0
        add(store, make_task("for_phone", target_device_id="phone"))
        assert work(store) == 2
        dispatch(store, "for_phone", "phone")
        add(store, make_task("later", not_before=5000.0))  # not due yet: a look must move it in when it is
        assert work(store) == 1
        move(store, "later", PENDING, CANCELLED, 300.0, finished_at=300.0)
        add(store, make_task("open"))
        assert work(store) == 1
        store.set_device_disabled("phone", True)
        assert work(store) == 0
    finally:
        store.close()


# ---- batches ----


def test_a_batch_and_its_tasks_read_back(store):
    batch = make_batch("b", 3, max_in_flight=1, abort_failure_ratio=0.25, abort_min_finished=4)
    store.add_batch(batch, batch_tasks("b", 3), created("b"), released=1)
    assert store.get_batch("b") == batch and store.get_batch("batch_missing") is None
    got = store.get_batch("b")
    got.target["all"] = False
    assert store.get_batch("b").target == {"all": True}  # a copy
    tasks, total = store.list_tasks(batch_id="b")
    assert total == 3 and ids(tasks) == ["b_2", "b_1", "b_0"]  # newest first: made at one time, last made first
    assert tasks[2] == make_task("b_0", batch_id="b")
    (event,) = store.task_events("b_2")
    assert (event["kind"], event["at"], event["attempt"]) == ("created", 100.0, 1)
    assert event["detail"] == {"task_type": "DELIST", "batch_id": "b"}
    assert store.count_batch_tasks("b") == {"pending": (3, 0)}
    store.save_device(make_device("phone"))
    assert store.has_pending_tasks()  # b_0 is released: it can start


@pytest.mark.parametrize(
    "target",
    [{}, {"target_device_id": "phone"}, {"target_tags": ["shop"]}],
    ids=["for any device", "pinned to a free device", "for a tag of a free device"],
)
def test_only_the_released_tasks_of_a_batch_are_due(store, target):
    store.save_device(make_device("phone", capacity=10, tags=["shop"]))
    add_batch(store, "b", 5, released=2, **target)
    assert due(store) == ["b_0", "b_1"]
    assert due(store, limit=1) == ["b_0"]


def test_held_tasks_do_not_fall_due_with_their_not_before(store):
    add_batch(store, "b", 3, released=1, not_before=500.0)
    assert due(store, 400.0) == []
    assert due(store, 600.0) == ["b_0"]
    move(store, "b_0", PENDING, CANCELLED, 601.0, finished_at=601.0)  # released, so it makes room
    assert due(store, 601.0) == ["b_1"]  # its time passed while it was held


def test_a_task_released_before_its_not_before_waits_for_it(store):
    store.save_device(make_device("phone"))
    first, second = batch_tasks("b", 2)
    add_batch(store, "b", 2, released=1, tasks=[first, replace(second, not_before=500.0)])
    dispatch(store, "b_0", "phone", now=200.0)
    move(store, "b_0", DISPATCHED, COMPLETED, 300.0, finished_at=300.0)
    assert due(store, 300.0) == [] and due(store, 499.0) == []
    assert due(store, 500.0) == ["b_1"]


def test_each_end_is_counted_and_an_ended_released_task_releases_the_next_held_one(store):
    store.save_device(make_device("phone", capacity=10))
    add_batch(store, "b", 6, released=2)
    dispatch(store, "b_0", "phone")
    dispatch(store, "b_1", "phone")
    assert due(store) == []
    move(store, "b_0", DISPATCHED, RUNNING, 210.0, started_at=210.0, progress=50)
    assert due(store) == [] and counters(store, "b") == (0, 0, 0)  # starting ends nothing
    move(store, "b_0", RUNNING, COMPLETED, 220.0, finished_at=220.0, progress=100)
    assert due(store) == ["b_2"] and counters(store, "b") == (1, 0, 0)  # one, the next in batch order
    assert store.get_batch("b").updated_at == 220.0
    assert move(store, "b_0", RUNNING, COMPLETED, 221.0) is None  # a refused move counts nothing
    assert due(store) == ["b_2"] and counters(store, "b") == (1, 0, 0)
    move(store, "b_1", DISPATCHED, FAILED, 230.0, finished_at=230.0)
    assert due(store) == ["b_2", "b_3"] and counters(store, "b") == (1, 1, 0)
    move(store, "b_5", PENDING, CANCELLED, 240.0, finished_at=240.0)  # held: it made no room, it never took any
    assert due(store) == ["b_2", "b_3"] and counters(store, "b") == (1, 1, 1)
    move(store, "b_2", PENDING, CANCELLED, 250.0, finished_at=250.0)  # released, not yet sent
    assert due(store) == ["b_3", "b_4"] and counters(store, "b") == (1, 1, 2)
    dispatch(store, "b_3", "phone", now=260.0)
    move(store, "b_3", DISPATCHED, PENDING, 270.0, device_id=None, attempt=2)  # a retry ends nothing
    assert due(store) == ["b_3", "b_4"] and counters(store, "b") == (1, 1, 2)
    move(store, "b_4", PENDING, CANCELLED, 280.0, finished_at=280.0)  # nothing is held any more
    assert due(store) == ["b_3"] and counters(store, "b") == (1, 1, 3)
    assert store.count_batch_tasks("b") == {
        "completed": (1, 100),
        "failed": (1, 0),
        "cancelled": (3, 0),
        "pending": (1, 0),
    }


@pytest.mark.parametrize("stopped", [BatchStatus.CANCELLED, BatchStatus.ABORTED])
def test_a_batch_that_no_longer_runs_releases_nothing_but_still_counts(store, stopped):
    store.save_device(make_device("phone"))
    batch = add_batch(store, "b", 3, released=1)
    dispatch(store, "b_0", "phone")
    assert store.update_batch_if(batch, {"status": stopped, "updated_at": 300.0}) is True
    move(store, "b_0", DISPATCHED, COMPLETED, 310.0, finished_at=310.0)
    assert due(store) == []
    got = store.get_batch("b")
    assert (got.status, got.completed, got.updated_at) == (stopped, 1, 310.0)
    move(store, "b_1", PENDING, CANCELLED, 320.0, finished_at=320.0)
    assert due(store) == [] and counters(store, "b") == (1, 0, 1)


def test_update_batch_if_is_a_compare_and_set_on_its_status(store):
    batch = add_batch(store, "b", 1)
    assert store.update_batch_if(batch, {"status": BatchStatus.ABORTED, "updated_at": 200.0}) is True
    assert store.update_batch_if(batch, {"status": BatchStatus.CANCELLED, "updated_at": 210.0}) is False  # stale
    got = store.get_batch("b")
    assert (got.status, got.updated_at, got.finished_at) == (BatchStatus.ABORTED, 200.0, None)
    assert store.update_batch_if(got, {"finished_at": 220.0, "updated_at": 220.0}) is True  # its status kept
    got = store.get_batch("b")
    assert (got.status, got.updated_at, got.finished_at) == (BatchStatus.ABORTED, 220.0, 220.0)
    assert store.update_batch_if(make_batch("missing", 1), {"status": BatchStatus.CANCELLED}) is False


def test_batches_are_listed_newest_first_in_pages(store):
    assert store.list_batches() == ([], 0)
    for number, created_at in enumerate([100.0, 300.0, 200.0, 300.0]):
        add_batch(store, f"b{number}", number + 1, created_at=created_at)
    assert store.list_batches()[0] == [store.get_batch(batch_id) for batch_id in ("b3", "b1", "b2", "b0")]

    def listed(**page):
        batches, total = store.list_batches(**page)
        return [batch.batch_id for batch in batches], total

    assert listed() == (["b3", "b1", "b2", "b0"], 4)  # at one time, the one made last first
    assert listed(limit=2, offset=1) == (["b1", "b2"], 4)
    assert listed(limit=2, offset=3) == (["b0"], 4)
    assert listed(offset=10) == ([], 4)


def test_tasks_are_listed_by_batch(store):
    store.save_device(make_device("phone"))
    add_batch(store, "b1", 3, created_at=100.0)
    add_batch(store, "b2", 2, created_at=101.0, task_type="COLLECT")
    add(store, make_task("loose", created_at=102.0))
    dispatch(store, "b1_0", "phone")

    def listed(**query):
        tasks, total = store.list_tasks(**query)
        return ids(tasks), total

    assert listed(batch_id="b1") == (["b1_2", "b1_1", "b1_0"], 3)
    assert listed(batch_id="b1", statuses=[PENDING]) == (["b1_2", "b1_1"], 2)
    assert listed(batch_id="b1", statuses=[PENDING], limit=1, offset=1) == (["b1_1"], 2)
    assert listed(batch_id="b1", device_id="phone") == (["b1_0"], 1)
    assert listed(batch_id="b2", task_type="COLLECT") == (["b2_1", "b2_0"], 2)
    assert listed(batch_id="b2", task_type="DELIST") == ([], 0)
    assert listed(batch_id="missing") == ([], 0)
    assert listed()[1] == 6


def test_count_batch_tasks_by_status_with_their_progress(store):
    store.save_device(make_device("phone", capacity=5))
    add_batch(store, "b", 4)
    add(store, make_task("loose"))
    dispatch(store, "loose", "phone")
    for task_id, progress in [("b_0", 40), ("b_1", 30)]:
        dispatch(store, task_id, "phone")
        move(store, task_id, DISPATCHED, RUNNING, 210.0, progress=progress)
    move(store, "b_2", PENDING, CANCELLED, 220.0)
    assert store.count_batch_tasks("b") == {"pending": (1, 0), "running": (2, 70), "cancelled": (1, 0)}
    assert store.count_batch_tasks("missing") == {}


# ---- several writers (PostgreSQL): the batch row orders the ends of one batch's tasks ----


@pytest.mark.parametrize("open_store", SHARED_BACKENDS)
def test_two_units_ending_released_tasks_of_one_batch_at_once_release_two_and_count_both(place, open_store):
    node_a, node_b = open_store(place), open_store(place)
    try:
        node_a.save_device(make_device("phone", capacity=5))
        add_batch(node_a, "b", 6, released=2)
        dispatch(node_a, "b_0", "phone")
        dispatch(node_a, "b_1", "phone")
        first_moved, order = Signal(), []

        def end(node, task_id, hold=0.0):
            with node.atomically():
                assert move(node, task_id, DISPATCHED, COMPLETED, 300.0, finished_at=300.0) is not None
                order.append(f"{task_id} ended")
                first_moved.set()
                gevent.sleep(hold)  # the other unit ends its task meanwhile: it waits for this one's batch row
                order.append(f"{task_id} commits")

        def then_end(node, task_id):
            first_moved.wait()
            end(node, task_id)

        units = [gevent.spawn(end, node_a, "b_0", 0.2), gevent.spawn(then_end, node_b, "b_1")]
        gevent.joinall(units, raise_error=True)
        assert order == ["b_0 ended", "b_0 commits", "b_1 ended", "b_1 commits"]
        assert due(node_b) == ["b_2", "b_3"]
        assert counters(node_b, "b") == (2, 0, 0)
    finally:
        node_a.close()
        node_b.close()
