"""Recurring schedules over HTTP against the real server: create, list, show, change and delete them; validation
naming the field; fire times run by the watchdog's sweep as the fake clock moves (time zones, daylight saving time,
missed fire times coalesced or skipped, pause and resume); each fire time creates its task once, also across a
restart and when two sweeps race."""

from datetime import datetime

import gevent
import pytest

from conftest import LiveServer
from taskserver import cron
from taskserver.present import iso
from taskserver.service.schedules import MISFIRE_GRACE

pytestmark = pytest.mark.backends("sqlite", "postgresql")

DELIST = {"task_type": "DELIST", "data": {"product_ids": ["123", "456"]}}
SPREAD = {"task_type": "DELIST", "mode": "spread", "target": {"all": True}, "items": [{"product_ids": ["1"]}] * 3}
DAY = 86400.0


def at(text):
    """Epoch seconds of an ISO time with its offset."""
    return datetime.fromisoformat(text).timestamp()


# 09:00 in Shanghai is 01:00 UTC
NINE_IN_SHANGHAI = at("2030-01-01T01:00:00+00:00")


def create(server, expect=201, **body):
    """POST /api/schedules: a daily DELIST at 09:00 in Shanghai unless told otherwise (a field given as None is left
    out); return the answer."""
    body = {"name": "每日下架", "cron": "0 9 * * *", "timezone": "Asia/Shanghai", "task": DELIST, **body}
    body = {name: value for name, value in body.items() if value is not None}
    response = server.post("/api/schedules", json=body)
    assert response.status_code == expect, response.text
    return response.json()


def show(server, schedule_id):
    response = server.get(f"/api/schedule/{schedule_id}")
    assert response.status_code == 200, response.text
    return response.json()["schedule"]


def patch(server, schedule_id, **body):
    return server.session.patch(f"{server.url}/api/schedule/{schedule_id}", json=body, timeout=10)


def delete(server, schedule_id):
    return server.session.delete(f"{server.url}/api/schedule/{schedule_id}", timeout=10)


def tasks(server):
    """Every task, newest first."""
    return server.get("/api/tasks?limit=1000").json()["tasks"]


def sweep_at(server, moment):
    """Set the clock to ``moment`` and run one watchdog step."""
    server.clock.now = moment
    server.sweep()


def assert_refused(response, fields):
    """A 400 in the error shape whose ``errors`` name each of ``fields`` (a nested one as a tuple of keys)."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False and body["error_code"] == "VALIDATION_ERROR" and body["message"], body
    for path in fields:
        errors = body["errors"]
        for key in (path,) if isinstance(path, str) else path:
            assert key in errors, f"{path} not named: {body}"
            errors = errors[key]
    return body


# ---- create, list, show, change, delete ----


def test_a_schedule_is_created_listed_shown_changed_and_deleted(server):
    server.clock.now = NINE_IN_SHANGHAI - 1800
    made = create(server, misfire="skip")
    schedule = made["schedule"]
    assert made["success"] is True and schedule["schedule_id"].startswith("schedule_")
    assert schedule["cron"] == "0 9 * * *" and schedule["timezone"] == "Asia/Shanghai"
    assert schedule["enabled"] is True and schedule["misfire"] == "skip" and schedule["batch"] is None
    assert schedule["task"]["task_type"] == "DELIST" and schedule["task"]["data"] == DELIST["data"]
    assert schedule["next_run_at"] == iso(NINE_IN_SHANGHAI) and schedule["runs"] == []
    assert schedule["last_run"] is None
    schedule_id = schedule["schedule_id"]
    other = create(server, name="每小时采集", cron="0 * * * *", timezone="UTC")["schedule"]

    listed = server.get("/api/schedules?limit=1").json()
    assert listed["total"] == 2 and [s["schedule_id"] for s in listed["schedules"]] == [other["schedule_id"]]
    assert server.get("/api/schedules?offset=1").json()["schedules"][0]["schedule_id"] == schedule_id
    assert show(server, schedule_id) == schedule

    changed = patch(server, schedule_id, name="每日下架（新）", misfire="coalesce")
    assert changed.status_code == 200, changed.text
    assert (
        changed.json()["schedule"]["name"] == "每日下架（新）" and changed.json()["schedule"]["misfire"] == "coalesce"
    )
    assert show(server, schedule_id)["next_run_at"] == iso(NINE_IN_SHANGHAI)  # same times: same next fire time

    assert delete(server, schedule_id).json() == {
        "success": True,
        "message": "定时任务已删除",
        "schedule_id": schedule_id,
    }
    for response in (
        server.get(f"/api/schedule/{schedule_id}"),
        delete(server, schedule_id),
        patch(server, schedule_id),
    ):
        assert response.status_code == 404 and response.json()["error_code"] == "SCHEDULE_NOT_FOUND", response.text
    assert server.get("/api/schedules").json()["total"] == 1


def test_changing_the_cron_or_time_zone_moves_the_next_fire_time_from_now(server):
    server.clock.now = NINE_IN_SHANGHAI - 1800
    schedule_id = create(server)["schedule"]["schedule_id"]
    assert patch(server, schedule_id, cron="*/10 * * * *").json()["schedule"]["next_run_at"] == iso(
        NINE_IN_SHANGHAI - 1200
    )
    moved = patch(server, schedule_id, cron="0 9 * * *", timezone="Europe/London").json()["schedule"]
    assert moved["next_run_at"] == iso(at("2030-01-01T09:00:00+00:00"))


@pytest.mark.parametrize(
    "body, fields",
    [
        ({"cron": "0 9 * *"}, ["cron"]),
        ({"cron": "61 * * * *"}, ["cron"]),
        ({"cron": "0 0 31 4 *"}, ["cron"]),  # April has no 31st: it would never fire
        ({"cron": "R 9 * * *"}, ["cron"]),  # croniter's random minute would change at every read
        ({"cron": None}, ["cron"]),
        ({"timezone": "Asia/Nowhere"}, ["timezone"]),
        ({"timezone": "../../etc/passwd"}, ["timezone"]),
        ({"name": ""}, ["name"]),
        ({"batch": SPREAD}, ["task", "batch"]),  # both
        ({"task": None}, ["task"]),
        ({"task": {**DELIST, "idempotency_key": "daily"}}, [("task", "idempotency_key")]),
        ({"task": {**DELIST, "schedule_time": "2030-01-02T00:00:00"}}, [("task", "schedule_time")]),
        ({"task": {"task_type": "DELIST", "data": {}}}, [("task", "data", "product_ids")]),
        ({"task": {**DELIST, "priority": "high"}}, [("task", "priority")]),
        ({"misfire": "later"}, ["misfire"]),
        ({"every": "day"}, ["every"]),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field_and_nothing_is_stored(server, body, fields):
    request = {"name": "每日下架", "cron": "0 9 * * *", "timezone": "Asia/Shanghai", "task": DELIST, **body}
    assert_refused(server.post("/api/schedules", json=request), fields)
    assert server.get("/api/schedules").json()["total"] == 0


def test_a_schedule_needs_what_it_runs_and_a_task_type_the_server_knows(server):
    assert_refused(server.post("/api/schedules", json={"name": "x", "cron": "0 9 * * *"}), ["task", "batch"])
    unknown = server.post("/api/schedules", json={"name": "x", "cron": "0 9 * * *", "task": {"task_type": "NOPE"}})
    assert unknown.status_code == 400 and unknown.json()["error_code"] == "UNKNOWN_TASK_TYPE", unknown.text
    assert server.get("/api/schedules").json()["total"] == 0


def test_a_bad_change_is_refused_naming_the_field_and_changes_nothing(server):
    made = create(server)["schedule"]
    schedule_id = made["schedule_id"]
    assert_refused(patch(server, schedule_id, cron="0 25 * * *"), ["cron"])
    assert_refused(patch(server, schedule_id, timezone="Mars/Olympus"), ["timezone"])
    assert_refused(patch(server, schedule_id, task=DELIST, batch=SPREAD), ["task", "batch"])
    assert_refused(patch(server, schedule_id, task={**DELIST, "idempotency_key": "k"}), [("task", "idempotency_key")])
    assert_refused(patch(server, schedule_id, enabled="sometimes"), ["enabled"])
    assert show(server, schedule_id) == made


@pytest.mark.parametrize(
    "batch, fields",
    [
        ({"mode": "spread", "target": {"all": True}, "items": [{}]}, [("batch", "items", "0", "product_ids")]),
        (
            {"mode": "spread", "target": {"all": True}, "items": [{"product_ids": ["1"]}], "schedule_time": 1},
            [("batch", "schedule_time")],
        ),
        ({"mode": "each", "target": {"all": True}, "idempotency_key": "k"}, [("batch", "idempotency_key")]),
        ({"mode": "sideways", "target": {"all": True}}, [("batch", "mode")]),
    ],
)
def test_a_bad_batch_is_refused_naming_the_field(server, batch, fields):
    body = {"name": "x", "cron": "0 9 * * *", "batch": {"task_type": "DELIST", **batch}}
    assert_refused(server.post("/api/schedules", json=body), fields)
    assert server.get("/api/schedules").json()["total"] == 0


def test_every_schedule_endpoint_is_in_the_openapi_document_with_its_errors(server):
    paths = server.get("/api/openapi.json").json()["paths"]
    assert set(paths["/api/schedules"]) == {"get", "post"}
    assert set(paths["/api/schedule/{schedule_id}"]) >= {"get", "patch", "delete"}
    for method in ("get", "patch", "delete"):
        assert "SCHEDULE_NOT_FOUND" in paths["/api/schedule/{schedule_id}"][method]["responses"]["404"]["description"]
    body = paths["/api/schedules"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Schedule"}
    patch_body = server.get("/api/openapi.json").json()["components"]["schemas"]["SchedulePatch"]
    assert "required" not in patch_body and {"cron", "timezone", "task", "enabled"} <= set(patch_body["properties"])


def test_schedules_need_an_operator_token(database):
    guarded = LiveServer(database, API_TOKENS=("operator-token-123",))
    try:
        assert guarded.get("/api/schedules").json()["error_code"] == "UNAUTHORIZED"
        assert guarded.post("/api/schedules", json={}).status_code == 401
        allowed = guarded.get("/api/schedules", headers={"Authorization": "Bearer operator-token-123"})
        assert allowed.status_code == 200 and allowed.json()["total"] == 0
    finally:
        guarded.stop()


# ---- fire times ----


def test_nine_in_shanghai_fires_at_one_utc_once_per_fire_time(server, devices):
    phone = devices("android_001")
    server.clock.now = NINE_IN_SHANGHAI - 3600
    schedule_id = create(server)["schedule"]["schedule_id"]
    sweep_at(server, NINE_IN_SHANGHAI - 1)
    assert tasks(server) == []

    sweep_at(server, NINE_IN_SHANGHAI)
    (task,) = tasks(server)
    assert task["task_type"] == "DELIST" and task["data"]["product_ids"] == ["123", "456"]
    assert phone.wait("new_task")["task_id"] == task["task_id"]  # dispatched in the same sweep
    shown = show(server, schedule_id)
    assert shown["next_run_at"] == iso(NINE_IN_SHANGHAI + DAY)
    assert shown["runs"] == [
        {
            "fire_at": iso(NINE_IN_SHANGHAI),
            "ran_at": iso(NINE_IN_SHANGHAI),
            "task_id": task["task_id"],
            "batch_id": None,
            "error": None,
        }
    ]

    sweep_at(server, NINE_IN_SHANGHAI + 30)
    sweep_at(server, NINE_IN_SHANGHAI + DAY - 1)
    assert len(tasks(server)) == 1
    sweep_at(server, NINE_IN_SHANGHAI + DAY + 5)
    assert len(tasks(server)) == 2
    shown = show(server, schedule_id)
    runs = shown["runs"]
    assert [run["fire_at"] for run in runs] == [iso(NINE_IN_SHANGHAI + DAY), iso(NINE_IN_SHANGHAI)]
    assert [run["task_id"] for run in runs] == [task["task_id"] for task in tasks(server)]
    (created, *_) = server.get(f"/api/task/{task['task_id']}/events").json()["events"]
    assert created["actor"] == "schedule" and created["detail"]["schedule_id"] == schedule_id  # not an operator
    assert created["message"] == f"任务创建（定时任务 {schedule_id}）"
    other = create(server, name="not yet")["schedule"]
    listed = {item["schedule_id"]: item for item in server.get("/api/schedules").json()["schedules"]}
    assert listed[schedule_id]["last_run"] == runs[0] == shown["last_run"]  # the list carries each one's last run
    assert listed[other["schedule_id"]]["last_run"] is None


def test_two_sweeps_at_one_instant_create_one_task(server):
    server.clock.now = NINE_IN_SHANGHAI - 60
    create(server)
    server.clock.now = NINE_IN_SHANGHAI
    gevent.joinall([gevent.spawn(server.sweep), gevent.spawn(server.sweep)], raise_error=True)
    server.sweep()
    assert len(tasks(server)) == 1


def test_fire_times_missed_for_days_coalesce_into_one_run(server):
    server.clock.now = NINE_IN_SHANGHAI - 60
    schedule_id = create(server)["schedule"]["schedule_id"]
    sweep_at(server, NINE_IN_SHANGHAI + 3 * DAY + 7200)  # down for three days and two hours
    (task,) = tasks(server)
    shown = show(server, schedule_id)
    (run,) = shown["runs"]
    assert run["fire_at"] == iso(NINE_IN_SHANGHAI + 3 * DAY) and run["task_id"] == task["task_id"]
    assert run["ran_at"] == iso(NINE_IN_SHANGHAI + 3 * DAY + 7200)
    assert shown["next_run_at"] == iso(NINE_IN_SHANGHAI + 4 * DAY)


def test_with_misfire_skip_missed_fire_times_create_nothing_until_one_is_on_time(server):
    server.clock.now = NINE_IN_SHANGHAI - 60
    schedule_id = create(server, misfire="skip")["schedule"]["schedule_id"]
    sweep_at(server, NINE_IN_SHANGHAI + 3 * DAY + MISFIRE_GRACE + 1)  # the latest fire time is just too old
    assert tasks(server) == []
    shown = show(server, schedule_id)
    assert shown["runs"] == [] and shown["next_run_at"] == iso(NINE_IN_SHANGHAI + 4 * DAY)
    sweep_at(server, NINE_IN_SHANGHAI + 4 * DAY + MISFIRE_GRACE)  # late, within the grace
    (task,) = tasks(server)
    assert show(server, schedule_id)["runs"][0]["task_id"] == task["task_id"]


def test_a_paused_schedule_creates_nothing_and_resumes_from_now(server):
    server.clock.now = NINE_IN_SHANGHAI - 60
    schedule_id = create(server)["schedule"]["schedule_id"]
    paused = patch(server, schedule_id, enabled=False).json()["schedule"]
    assert paused["enabled"] is False and paused["next_run_at"] is None
    sweep_at(server, NINE_IN_SHANGHAI + 2 * DAY)
    assert tasks(server) == []
    resumed = patch(server, schedule_id, enabled=True).json()["schedule"]
    assert resumed["next_run_at"] == iso(NINE_IN_SHANGHAI + 3 * DAY)  # the fire times while paused never run
    sweep_at(server, NINE_IN_SHANGHAI + 2 * DAY + 60)
    assert tasks(server) == []
    sweep_at(server, NINE_IN_SHANGHAI + 3 * DAY)
    assert len(tasks(server)) == 1


def test_a_schedule_created_disabled_waits_for_its_resume(server):
    server.clock.now = NINE_IN_SHANGHAI - 60
    schedule = create(server, enabled=False)["schedule"]
    assert schedule["enabled"] is False and schedule["next_run_at"] is None
    sweep_at(server, NINE_IN_SHANGHAI + 60)
    assert tasks(server) == []


def test_a_changed_task_is_what_the_next_fire_time_creates(server):
    server.clock.now = NINE_IN_SHANGHAI - 60
    schedule_id = create(server)["schedule"]["schedule_id"]
    collect = {"task_type": "COLLECT", "data": {"target_url": "https://example.com/shop"}, "priority": 5}
    assert patch(server, schedule_id, task=collect).json()["schedule"]["task"]["task_type"] == "COLLECT"
    sweep_at(server, NINE_IN_SHANGHAI)
    (task,) = tasks(server)
    assert task["task_type"] == "COLLECT" and task["priority"] == 5 and task["data"]["max_items"] == 50


def test_a_run_that_cannot_create_its_task_records_why_and_the_schedule_moves_on(server):
    server.clock.now = NINE_IN_SHANGHAI - 60
    task = {**DELIST, "device_id": "ghost_phone"}
    schedule_id = create(server, task=task)["schedule"]["schedule_id"]
    sweep_at(server, NINE_IN_SHANGHAI)
    assert tasks(server) == []
    shown = show(server, schedule_id)
    (run,) = shown["runs"]
    assert run["task_id"] is None and run["error"]["error_code"] == "DEVICE_NOT_FOUND" and run["error"]["message"]
    assert shown["next_run_at"] == iso(NINE_IN_SHANGHAI + DAY)
    sweep_at(server, NINE_IN_SHANGHAI + DAY)
    assert len(show(server, schedule_id)["runs"]) == 2 and tasks(server) == []


def test_a_batch_schedule_creates_its_batch_once_per_fire_time(server, devices):
    phone = devices("android_001")
    server.clock.now = NINE_IN_SHANGHAI - 60
    schedule = create(server, task=None, batch={**SPREAD, "max_in_flight": 1})["schedule"]
    assert schedule["task"] is None and schedule["batch"]["mode"] == "spread"
    sweep_at(server, NINE_IN_SHANGHAI)
    server.sweep()
    (run,) = show(server, schedule["schedule_id"])["runs"]
    assert run["task_id"] is None and run["batch_id"].startswith("batch_") and run["error"] is None
    batch = server.get(f"/api/batch/{run['batch_id']}").json()["batch"]
    assert batch["total"] == 3 and batch["counts"]["dispatched"] == 1  # dispatched in the same sweep, one in flight
    assert phone.wait("new_task")["task_id"] in {task["task_id"] for task in tasks(server)}
    assert len(tasks(server)) == 3
    for task in tasks(server):
        (created, *_) = server.get(f"/api/task/{task['task_id']}/events").json()["events"]
        assert (created["actor"], created["detail"]["schedule_id"]) == ("schedule", schedule["schedule_id"])
        assert created["detail"]["batch_id"] == run["batch_id"]
    sweep_at(server, NINE_IN_SHANGHAI + DAY)
    assert len(tasks(server)) == 6 and len(server.get("/api/batches").json()["batches"]) == 2


def test_a_task_schedule_changed_into_a_batch_schedule_creates_batches(server):
    server.clock.now = NINE_IN_SHANGHAI - 60
    schedule_id = create(server)["schedule"]["schedule_id"]
    changed = patch(server, schedule_id, batch=SPREAD).json()["schedule"]
    assert changed["task"] is None and changed["batch"]["items"] == SPREAD["items"]
    sweep_at(server, NINE_IN_SHANGHAI)
    assert show(server, schedule_id)["runs"][0]["batch_id"] is not None and len(tasks(server)) == 3


def test_a_batch_run_for_no_matching_device_records_why(server):
    server.clock.now = NINE_IN_SHANGHAI - 60
    broadcast = {"task_type": "DELIST", "mode": "each", "target": {"tags": ["shopA"]}, "data": {"product_ids": ["1"]}}
    schedule_id = create(server, task=None, batch=broadcast)["schedule"]["schedule_id"]
    sweep_at(server, NINE_IN_SHANGHAI)
    shown = show(server, schedule_id)
    assert shown["runs"][0]["error"]["error_code"] == "NO_MATCHING_DEVICES" and shown["runs"][0]["batch_id"] is None
    assert shown["next_run_at"] == iso(NINE_IN_SHANGHAI + DAY) and tasks(server) == []


# ---- across a restart ----


@pytest.fixture
def restartable(database):
    """Starts servers, one after another, on this test's database; stops whichever is still running at the end."""
    running = []

    def start(now):
        if running:
            running.pop().stop()
        live = LiveServer(database)
        live.clock.now = now
        running.append(live)
        return live

    yield start
    for live in running:
        live.stop()


def test_a_fire_time_creates_its_task_once_across_a_restart(restartable):
    first = restartable(NINE_IN_SHANGHAI - 60)
    schedule_id = create(first)["schedule"]["schedule_id"]
    sweep_at(first, NINE_IN_SHANGHAI)
    assert len(tasks(first)) == 1

    again = restartable(NINE_IN_SHANGHAI)  # a new process on the same database, at the same instant
    again.sweep()
    assert len(tasks(again)) == 1
    sweep_at(again, NINE_IN_SHANGHAI + DAY)
    assert len(tasks(again)) == 2
    assert len(show(again, schedule_id)["runs"]) == 2


def test_a_fire_time_run_before_a_restart_does_not_run_again_when_the_clock_went_back(restartable):
    first = restartable(NINE_IN_SHANGHAI - 60)
    schedule_id = create(first)["schedule"]["schedule_id"]
    sweep_at(first, NINE_IN_SHANGHAI)
    (task,) = tasks(first)

    again = restartable(NINE_IN_SHANGHAI - 600)  # this host's clock is ten minutes behind the first's
    patch(again, schedule_id, enabled=False)
    resumed = patch(again, schedule_id, enabled=True).json()["schedule"]
    assert resumed["next_run_at"] == iso(NINE_IN_SHANGHAI)  # due again at the fire time already run
    sweep_at(again, NINE_IN_SHANGHAI + 10)
    assert tasks(again) == [task]
    shown = show(again, schedule_id)
    assert len(shown["runs"]) == 1 and shown["next_run_at"] == iso(NINE_IN_SHANGHAI + DAY)


@pytest.fixture
def two_nodes(cluster_settings):
    """Two nodes of one cluster (PostgreSQL and Redis); stopped at the end."""
    settings = dict(cluster_settings)
    database = settings.pop("DATABASE")
    started = [LiveServer(database, **settings), LiveServer(database, **settings)]
    yield started
    for node in reversed(started):
        node.stop()


def test_on_several_nodes_a_fire_time_runs_once_even_with_two_leaders_for_a_moment(two_nodes):
    first, second = two_nodes
    for node in two_nodes:
        node.clock.now = NINE_IN_SHANGHAI - 60
    create(first)
    for node in two_nodes:
        sweep_at(node, NINE_IN_SHANGHAI)  # the first leads (it asked first); the second runs no schedule
    assert len(tasks(second)) == 1
    both = [gevent.spawn(node.service.schedules.fire_due, NINE_IN_SHANGHAI + DAY, 10) for node in two_nodes]
    gevent.joinall(both, raise_error=True)  # as two leaders would, for a moment
    assert sorted(runner.value for runner in both) == [0, 1] and len(tasks(first)) == 2


# ---- fire times in local time (pure: no server) ----


NEW_YORK = "America/New_York"


def new_york(text, fold=0):
    return datetime.fromisoformat(text).replace(tzinfo=cron.zone(NEW_YORK), fold=fold).timestamp()


def test_a_daily_fire_time_in_the_hour_repeated_in_autumn_fires_once():
    first = cron.next_after("30 1 * * *", NEW_YORK, new_york("2025-11-01T12:00:00"))
    assert first == new_york("2025-11-02T01:30:00")  # daylight saving time, the first 01:30
    assert cron.next_after("30 1 * * *", NEW_YORK, first) == new_york("2025-11-03T01:30:00")


def test_an_hourly_schedule_fires_in_each_real_hour_when_clocks_go_back():
    start = new_york("2025-11-02T00:30:00")
    hours = [start]
    for _ in range(3):
        hours.append(cron.next_after("0 * * * *", NEW_YORK, hours[-1]))
    assert (hours[2] - hours[1], hours[3] - hours[2]) == (3600.0, 3600.0)
    assert hours[2] == new_york("2025-11-02T01:00:00", fold=1)


def test_a_fire_time_in_the_hour_skipped_in_spring_runs_once_the_clocks_jumped():
    skipped = cron.next_after("30 2 * * *", NEW_YORK, new_york("2025-03-08T12:00:00"))
    assert skipped == new_york("2025-03-09T03:00:00")
    assert cron.next_after("30 2 * * *", NEW_YORK, skipped) == new_york("2025-03-10T02:30:00")


def test_the_last_fire_time_at_or_before_a_moment_includes_the_moment():
    assert cron.last_at_or_before("0 9 * * *", "Asia/Shanghai", NINE_IN_SHANGHAI) == NINE_IN_SHANGHAI
    assert cron.last_at_or_before("0 9 * * *", "Asia/Shanghai", NINE_IN_SHANGHAI - 0.5) == NINE_IN_SHANGHAI - DAY
