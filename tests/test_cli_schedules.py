"""The operator CLI's schedules against a real server: create, list, show (after a fire time ran), pause and resume,
delete, and what the server or the CLI refuses.

As in ``test_cli.py``: exit codes run the CLI as a subprocess, tables use click's runner in this process. Fire times
run when the test moves the server's fake clock and runs one watchdog step, never by waiting."""

import json
from datetime import UTC, datetime

from test_cli import invoke, rows, run

from taskserver.cli.client import Exit
from taskserver.present import iso

DELIST = {"task_type": "DELIST", "data": {"product_ids": ["123", "456"]}, "tags": ["shopA"]}
EACH = {"task_type": "COLLECT", "mode": "each", "target": {"all": True}, "data": {"target_url": "https://a.example/"}}
NINE_IN_SHANGHAI = datetime(2030, 1, 1, 1, 0, tzinfo=UTC).timestamp()  # 09:00 in Shanghai is 01:00 UTC
DAY = 86400.0


def shown(time):
    """A time as the CLI shows it: the server's local time, with a space."""
    return iso(time).replace("T", " ")


DAILY = ("--cron", "0 9 * * *", "--timezone", "Asia/Shanghai", "--task", json.dumps(DELIST))


def create(server, name="每日下架", *args):
    """``schedule create NAME ARGS`` (a daily DELIST at 09:00 in Shanghai unless told otherwise); return it."""
    made = invoke(server, "schedule", "create", name, *(args or DAILY), "--json")
    assert made.exit_code == 0, made.output
    return json.loads(made.output)["schedule"]


def detail(server, schedule_id):
    return server.get(f"/api/schedule/{schedule_id}").json()["schedule"]


def test_schedule_create_prints_its_id_and_next_run_and_schedules_lists_them(server, tmp_path):
    server.clock.now = NINE_IN_SHANGHAI - 1800
    made = invoke(server, "schedule", "create", "每日下架", *DAILY)
    assert made.exit_code == 0, made.output
    [daily] = server.get("/api/schedules").json()["schedules"]
    next_run = shown(NINE_IN_SHANGHAI)
    assert made.output.strip() == f"schedule {daily['schedule_id']} created: 定时任务已创建 (next run: {next_run})"
    assert (daily["name"], daily["cron"], daily["timezone"]) == ("每日下架", "0 9 * * *", "Asia/Shanghai")
    assert daily["enabled"] is True and daily["misfire"] == "coalesce"
    assert daily["task"]["data"] == DELIST["data"] and daily["task"]["tags"] == ["shopA"] and daily["batch"] is None

    body = tmp_path / "orders.json"
    body.write_text(json.dumps(EACH))
    options = ["--cron", "30 8 * * MON", "--batch", f"@{body}", "--paused", "--misfire", "skip"]
    weekly = create(server, "weekly [orders]", *options)
    assert [weekly[key] for key in ("timezone", "enabled", "misfire", "next_run_at")] == ["UTC", False, "skip", None]
    assert weekly["batch"]["target"] == {"all": True} and weekly["task"] is None

    listed = invoke(server, "schedules")
    assert listed.exit_code == 0, listed.output
    [row] = rows(listed.output, daily["schedule_id"])
    assert row[1:5] == ["每日下架", "0 9 * * *", "Asia/Shanghai", "task DELIST → tags shopA"]
    assert row[5:] == ["enabled", next_run, "-", "-"]  # it has not run yet
    [row] = rows(listed.output, weekly["schedule_id"])
    assert row[1:] == ["weekly [orders]", "30 8 * * MON", "UTC", "batch COLLECT each → all", "paused", "-", "-", "-"]
    assert listed.output.index(weekly["schedule_id"]) < listed.output.index(daily["schedule_id"])  # newest first
    assert "1-2 of 2 schedules" in listed.output
    assert json.loads(invoke(server, "schedules", "--json").output) == server.get("/api/schedules?limit=50").json()
    page = invoke(server, "schedules", "--limit", "1", "--offset", "1")
    assert len(rows(page.output, daily["schedule_id"])) == 1 and "2-2 of 2 schedules" in page.output


def test_after_fire_times_show_and_schedules_give_the_last_run_and_what_it_made_or_why_not(server):
    server.clock.now = NINE_IN_SHANGHAI - 1800
    daily = create(server)
    to_ghost = json.dumps({**DELIST, "tags": None, "device_id": "ghost"})
    ghost = create(server, "for a phone that does not exist", "--cron", "0 1 * * *", "--task", to_ghost)
    server.clock.now = NINE_IN_SHANGHAI + 5  # 09:00 in Shanghai and 01:00 UTC: both are due
    server.sweep()
    [task] = server.get("/api/tasks").json()["tasks"]
    [run] = detail(server, daily["schedule_id"])["runs"]
    assert run["task_id"] == task["task_id"] and run["fire_at"] == iso(NINE_IN_SHANGHAI)

    shown_daily = invoke(server, "schedule", "show", daily["schedule_id"])
    assert shown_daily.exit_code == 0, shown_daily.output
    lines = [line.rstrip() for line in shown_daily.output.splitlines()]
    assert f"schedule  {daily['schedule_id']}" in lines and "state     enabled" in lines
    assert "cron      0 9 * * *  (Asia/Shanghai)" in lines and "creates   task DELIST → tags shopA" in lines
    assert f"next run  {shown(NINE_IN_SHANGHAI + DAY)}" in lines
    assert rows(shown_daily.output, shown(NINE_IN_SHANGHAI)) == [
        [shown(NINE_IN_SHANGHAI), shown(NINE_IN_SHANGHAI + 5), task["task_id"]]
    ]
    as_json = json.loads(invoke(server, "schedule", "show", daily["schedule_id"], "--json").output)
    assert as_json == server.get(f"/api/schedule/{daily['schedule_id']}").json()

    listed = invoke(server, "schedules")
    [row] = rows(listed.output, daily["schedule_id"])
    assert row[6:] == [shown(NINE_IN_SHANGHAI + DAY), shown(NINE_IN_SHANGHAI), task["task_id"]]
    [row] = rows(listed.output, ghost["schedule_id"])
    assert row[7:] == [shown(NINE_IN_SHANGHAI), "DEVICE_NOT_FOUND: 设备 ghost 不存在"]


def test_pause_and_resume_change_the_next_run(server):
    server.clock.now = NINE_IN_SHANGHAI - 1800
    schedule_id = create(server)["schedule_id"]

    paused = invoke(server, "schedule", "pause", schedule_id)
    assert paused.exit_code == 0, paused.output
    assert paused.output.strip() == f"schedule {schedule_id} paused: 定时任务已更新 (next run: -)"
    assert detail(server, schedule_id)["enabled"] is False and detail(server, schedule_id)["next_run_at"] is None
    [row] = rows(invoke(server, "schedules").output, schedule_id)
    assert row[5:7] == ["paused", "-"]
    server.clock.now = NINE_IN_SHANGHAI + 5
    server.sweep()  # paused: its fire time does not run
    assert server.get("/api/tasks").json()["total"] == 0

    resumed = invoke(server, "schedule", "resume", schedule_id, "--json")
    assert resumed.exit_code == 0, resumed.output
    answer = json.loads(resumed.output)
    assert answer["schedule"]["next_run_at"] == iso(NINE_IN_SHANGHAI + DAY)  # the first fire time from now
    assert answer == {**answer, "success": True, "message": "定时任务已更新"}
    [row] = rows(invoke(server, "schedules").output, schedule_id)
    assert row[5:7] == ["enabled", shown(NINE_IN_SHANGHAI + DAY)]
    again = invoke(server, "schedule", "pause", schedule_id)
    assert again.exit_code == 0 and detail(server, schedule_id)["next_run_at"] is None


def test_delete_removes_the_schedule_and_leaves_what_it_made(server):
    server.clock.now = NINE_IN_SHANGHAI - 1800
    schedule_id = create(server)["schedule_id"]
    server.clock.now = NINE_IN_SHANGHAI
    server.sweep()
    deleted = invoke(server, "schedule", "delete", schedule_id)
    assert deleted.exit_code == 0, deleted.output
    assert deleted.output.strip() == f"schedule {schedule_id} deleted: 定时任务已删除"
    assert server.get("/api/schedules").json()["total"] == 0
    assert server.get("/api/tasks").json()["total"] == 1

    code, out, err = run(server, "schedule", "delete", schedule_id)
    assert code == Exit.REFUSED and out == ""
    assert err.strip() == f"Error: 定时任务 {schedule_id} 不存在 (SCHEDULE_NOT_FOUND, HTTP 404)"
    for command in ("show", "pause", "resume"):
        code, _out, err = run(server, "schedule", command, schedule_id)
        assert code == Exit.REFUSED and "(SCHEDULE_NOT_FOUND, HTTP 404)" in err, (command, err)


def test_what_the_server_refuses_prints_its_fields_and_exits_4_and_bad_usage_exits_2(server):
    task = json.dumps(DELIST)
    code, out, err = run(server, "schedule", "create", "x", "--cron", "0 9 * *", "--task", task)
    assert code == Exit.REFUSED == 4 and out == ""
    assert err.splitlines() == [
        "Error: 请求参数无效 (VALIDATION_ERROR, HTTP 400)",
        "  cron: 必须是 5 个字段：分 时 日 月 周（如 0 9 * * *）",
    ]
    zone = invoke(server, "schedule", "create", "x", "--cron", "0 9 * * *", "--timezone", "Mars/Base", "--task", task)
    assert zone.exit_code == Exit.REFUSED
    assert "  timezone: 未知的时区 Mars/Base（IANA 时区名，如 Asia/Shanghai）" in zone.output.splitlines()
    data = invoke(server, "schedule", "create", "x", "--cron", "0 9 * * *", "--task", '{"task_type": "DELIST"}')
    assert data.exit_code == Exit.REFUSED
    assert "  task.data.product_ids: Missing data for required field." in data.output.splitlines()

    mistakes = {
        "give one of --task and --batch": ["--cron", "0 9 * * *"],
        "give one of --task and ": ["--cron", "0 9 * * *", "--task", task, "--batch", json.dumps(EACH)],
        "Missing option '--cron'": ["--task", task],
        "Invalid value for '--task': not JSON": ["--cron", "0 9 * * *", "--task", "{task_type: DELIST}"],
        "Invalid value for '--misfire'": ["--cron", "0 9 * * *", "--task", task, "--misfire", "later"],
    }
    for message, args in mistakes.items():
        refused = invoke(server, "schedule", "create", "x", *args)
        assert refused.exit_code == Exit.USAGE and message in refused.output, (args, refused.output)
    assert server.get("/api/schedules").json()["total"] == 0
