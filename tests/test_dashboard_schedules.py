"""The console's schedules in a real browser (the harness of ``test_dashboard.py``): the view lists schedules with
their next run, pauses, resumes and deletes them on the server, and after a fire time shows the last run with a link
to what it made (or its error); the dispatch form creates them. Fire times run when the test moves the server's fake
clock and runs one watchdog step; every wait is for a selector or a condition in the page, never a sleep."""

from datetime import UTC, datetime

import test_dashboard
from test_dashboard import task_row

from taskserver.present import iso

# the browser and the page, as test_dashboard.py has them
chromium = test_dashboard.chromium
console = test_dashboard.console

DELIST = {"task_type": "DELIST", "data": {"product_ids": ["123"]}}
EACH = {"task_type": "COLLECT", "mode": "each", "target": {"all": True}, "data": {"target_url": "https://a.example/"}}
NINE_IN_SHANGHAI = datetime(2030, 1, 1, 1, 0, tzinfo=UTC).timestamp()  # 09:00 in Shanghai is 01:00 UTC
DAY = 86400.0


def schedule_row(schedule_id, **attributes):
    """The schedules table's row of a schedule, e.g. ``schedule_row(s, enabled="false")``."""
    found = f'#schedules tr[data-schedule-id="{schedule_id}"]'
    return found + "".join(f'[data-{k}="{v}"]' for k, v in attributes.items())


def shown(time):
    """A time as the console shows it: the server's local time, with a space."""
    return iso(time).replace("T", " ")


def create(server, name="每日下架", **body):
    """POST /api/schedules: a daily DELIST at 09:00 in Shanghai unless ``body`` says otherwise (a field given as None
    is left out); return the schedule."""
    body = {"name": name, "cron": "0 9 * * *", "timezone": "Asia/Shanghai", "task": DELIST, **body}
    body = {key: value for key, value in body.items() if value is not None}
    answer = server.post("/api/schedules", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["schedule"]


def on_server(server, schedule_id):
    answer = server.get(f"/api/schedule/{schedule_id}")
    return answer.json()["schedule"] if answer.status_code == 200 else answer.json()["error_code"]


def test_the_view_lists_schedules_with_their_next_run_and_pauses_and_resumes_them(server, console):
    server.clock.now = NINE_IN_SHANGHAI - 1800
    daily = create(server, "<b>每日</b>下架", task={**DELIST, "tags": ["shop-a"]})
    weekly = create(server, "weekly", cron="30 8 * * MON", timezone="UTC", batch=EACH, task=None, enabled=False)
    page = console(server, "/dashboard#/schedules")
    row = schedule_row(daily["schedule_id"], enabled="true")
    page.wait(row)
    assert page.text(row + " .name") == "<b>每日</b>下架" and page.count("#schedules b") == 0  # text, never HTML
    assert page.text(row + " td:nth-child(2)") == "0 9 * * *Asia/Shanghai"
    assert page.text(row + " td:nth-child(3)") == "任务 DELISTshop-a"
    assert page.count(row + ' .tag[data-tag="shop-a"]') == 1
    assert page.text(row + " .badge") == "enabled" and page.text(row + " .next-run") == shown(NINE_IN_SHANGHAI)
    assert page.text(row + " td:nth-child(6)") == "尚未运行"
    paused = schedule_row(weekly["schedule_id"], enabled="false")
    assert page.text(paused + " td:nth-child(3)") == "批次 COLLECT · each全部设备"
    assert page.text(paused + " .badge") == "paused" and page.text(paused + " .next-run") == "—（已暂停）"
    assert page.count(paused + ' [data-action="resume"]') == 1
    assert "共 2" in page.text("#schedule-shown")
    page.screenshot("schedules")

    page.click(row + ' [data-action="pause"]')
    page.wait(schedule_row(daily["schedule_id"], enabled="false") + ' [data-action="resume"]')
    assert on_server(server, daily["schedule_id"])["next_run_at"] is None
    assert page.text(schedule_row(daily["schedule_id"]) + " .next-run") == "—（已暂停）"
    assert "定时任务已更新" in page.text('.notice[data-ok="true"]')
    server.clock.now = NINE_IN_SHANGHAI + 5
    server.sweep()  # paused: its fire time makes nothing
    assert server.get("/api/tasks").json()["total"] == 0

    page.click(schedule_row(daily["schedule_id"]) + ' [data-action="resume"]')
    page.wait(schedule_row(daily["schedule_id"], enabled="true") + ' [data-action="pause"]')
    next_run = on_server(server, daily["schedule_id"])["next_run_at"]
    assert next_run == iso(NINE_IN_SHANGHAI + DAY)  # the first fire time from now
    assert page.text(schedule_row(daily["schedule_id"]) + " .next-run") == shown(NINE_IN_SHANGHAI + DAY)
    patches = [r for r in page.log()["responses"] if r["method"] == "PATCH"]
    assert [r["status"] for r in patches] == [200, 200]


def test_after_a_fire_time_the_last_run_links_to_what_it_made_or_shows_its_error(server, devices, console):
    devices("android_001")
    server.clock.now = NINE_IN_SHANGHAI - 1800
    daily = create(server)
    broadcast = create(server, "每日采集", batch=EACH, task=None)
    ghost = create(server, "给不存在的设备", task={**DELIST, "device_id": "ghost"})
    page = console(server, "/dashboard#/schedules")
    page.wait(schedule_row(ghost["schedule_id"]))
    assert page.text(schedule_row(daily["schedule_id"]) + " td:nth-child(6)") == "尚未运行"

    server.clock.now = NINE_IN_SHANGHAI + 5
    server.sweep()  # the tasks it makes come over the live feed, and the view reads the schedules again
    [run] = on_server(server, daily["schedule_id"])["runs"]
    [batch_run] = on_server(server, broadcast["schedule_id"])["runs"]
    link = schedule_row(daily["schedule_id"]) + f' a[data-run-task="{run["task_id"]}"]'
    page.wait(link)
    assert page.text(schedule_row(daily["schedule_id"]) + " .last-run > div") == shown(NINE_IN_SHANGHAI)
    assert page.text(schedule_row(daily["schedule_id"]) + " .next-run") == shown(NINE_IN_SHANGHAI + DAY)
    batch_link = schedule_row(broadcast["schedule_id"]) + f' a[data-run-batch="{batch_run["batch_id"]}"]'
    assert page.count(batch_link) == 1
    error = page.text(schedule_row(ghost["schedule_id"]) + ' [data-run-error="DEVICE_NOT_FOUND"]')
    assert error == "DEVICE_NOT_FOUND：设备 ghost 不存在"
    page.screenshot("schedules-ran")

    page.click(link)
    page.wait(f'#view-task[data-task-id="{run["task_id"]}"]')
    page.go("#/schedules")
    page.click(batch_link)
    page.wait(f'#task-batch[data-batch-id="{batch_run["batch_id"]}"]')
    page.wait(task_row(server.get(f"/api/tasks?batch_id={batch_run['batch_id']}").json()["tasks"][0]["task_id"]))


def test_delete_asks_first_then_deletes_the_schedule(server, console):
    schedule_id = create(server, "旧的")["schedule_id"]
    page = console(server, "/dashboard#/schedules")
    delete = schedule_row(schedule_id) + ' [data-action="delete"]'
    page.on_dialog(accept=False)
    page.click(delete)
    assert on_server(server, schedule_id)["name"] == "旧的"
    page.on_dialog(accept=True)
    page.click(delete)
    page.wait(schedule_row(schedule_id), state="detached")
    page.wait("#schedules-empty")
    assert on_server(server, schedule_id) == "SCHEDULE_NOT_FOUND"
    log = page.log()
    assert len(log["dialogs"]) == 2 and "旧的" in log["dialogs"][0]
    assert [r["status"] for r in log["responses"] if r["method"] == "DELETE"] == [200]  # the dismissed one sent none
    assert "定时任务已删除" in page.text('.notice[data-ok="true"]')


def test_the_dispatch_form_creates_schedules_of_a_task_or_a_batch(server, console):
    page = console(server, "/dashboard#/dispatch")
    page.wait('#dispatch-type option[value="DELIST"]', state="attached")
    page.check("#dispatch-as-schedule")
    page.wait("#schedule-options")
    assert page.text("#dispatch-submit") == "创建定时任务"
    page.fill('[name="schedule.name"]', "每日下架")
    page.fill('[name="schedule.cron"]', "0 9 * *")
    page.fill('[name="schedule.timezone"]', "Asia/Shanghai")
    page.click("#dispatch-submit")  # the server's errors show at their fields: the cron expression first...
    page.wait('#dispatch-answer[data-ok="false"][data-status="400"]')
    page.wait('label:has([name="schedule.cron"]) .field-error:not(:empty)')
    assert "5 个字段" in page.text('label:has([name="schedule.cron"]) .field-error')
    page.fill('[name="schedule.cron"]', "0 9 * * *")
    page.click("#dispatch-submit")  # ...then the task's data (task.data.product_ids)
    page.wait('[data-field="product_ids"] .field-error:not(:empty)')
    assert page.text('label:has([name="schedule.cron"]) .field-error') == ""
    assert server.get("/api/schedules").json()["total"] == 0

    page.fill('[name="data.product_ids"]', "123\n456")
    page.screenshot("dispatch-schedule")
    page.click("#dispatch-submit")
    page.wait('#dispatch-answer[data-ok="true"][data-status="201"]')
    schedule_id = page.attr("#dispatch-answer [data-schedule-link]", "data-schedule-link")
    made = on_server(server, schedule_id)
    assert (made["name"], made["cron"], made["timezone"], made["batch"]) == (
        "每日下架",
        "0 9 * * *",
        "Asia/Shanghai",
        None,
    )
    assert made["task"]["task_type"] == "DELIST" and made["task"]["data"]["product_ids"] == ["123", "456"]
    assert f"下次运行 {made['next_run_at'].replace('T', ' ')}" in page.text("#dispatch-answer")
    assert server.get("/api/tasks").json()["total"] == 0  # nothing dispatched now

    page.check("#dispatch-as-batch")
    page.fill('[name="schedule.name"]', "每日广播")
    page.click("#dispatch-submit")
    page.wait(f'#dispatch-answer[data-ok="true"] [data-schedule-link]:not([data-schedule-link="{schedule_id}"])')
    batch_id = page.attr("#dispatch-answer [data-schedule-link]", "data-schedule-link")
    made = on_server(server, batch_id)
    assert made["task"] is None and (made["batch"]["mode"], made["batch"]["target"]) == ("each", {"all": True})
    assert server.get("/api/batches").json()["total"] == 0

    page.click(f'[data-schedule-link="{batch_id}"]')
    page.wait(schedule_row(batch_id, enabled="true"))
    assert page.count("#schedules tbody tr") == 2
