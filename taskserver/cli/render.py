"""How answers look in a terminal: rich tables and panels, or the server's JSON as it came (``--json``).

Every value from the server goes in as ``Text``, never as markup: a device name like ``[red]`` stays as written."""

import json

import click
from rich.console import Group
from rich.table import Table
from rich.text import Text

STATUS_STYLES = {
    "online": "green",
    "busy": "yellow",
    "offline": "dim",
    "pending": "cyan",
    "dispatched": "blue",
    "running": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "aborted": "red",
}
NONE = "-"

json_option = click.option("--json", "json_", is_flag=True, help="Print the server's JSON answer instead.")


def page_options(command):
    """``--limit`` and ``--offset`` of a command that lists one page."""
    command = click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)(command)
    return click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)(command)


def as_json(answer):
    """The server's JSON, indented, its text as written (not \\u escapes)."""
    return json.dumps(answer, ensure_ascii=False, indent=2)


def cell(value):
    """One value as plain text; None as a dash, dicts and lists as compact JSON."""
    if value is None:
        return Text(NONE, style="dim")
    if isinstance(value, dict | list):
        return Text(json.dumps(value, ensure_ascii=False))
    return Text(str(value))


def status(value):
    return Text(value or NONE, style=STATUS_STYLES.get(value, ""))


def when(value):
    """The server's local ISO time (``2025-09-17T14:30:00``) as ``2025-09-17 14:30:00``."""
    return cell(value.replace("T", " ") if value else None)


def devices_table(answer):
    """``GET /api/devices`` as a table."""
    table = Table(caption=f"{answer['total']} devices", caption_justify="left")
    for column in ("id", "name", "status", "tasks", "disabled", "last heartbeat", "tags"):
        table.add_column(column, no_wrap=column in ("id", "status", "tasks", "last heartbeat"))
    for device in answer["devices"]:
        table.add_row(
            cell(device["device_id"]),
            cell(device["device_name"]),
            status(device["status"]),
            cell(f"{device['task_count']}/{device['capacity']}"),
            Text("disabled", style="red") if device["disabled"] else Text(""),
            when(device["last_heartbeat"]),
            Text(", ".join(device["tags"])),
        )
    return table


def page_table(answer, items):
    """A table for one page of a list answer (``items``: its key), captioned ``21-40 of 95 tasks``."""
    shown, offset = len(answer[items]), answer["offset"]
    span = f"{offset + 1}-{offset + shown}" if shown else "none"
    return Table(caption=f"{span} of {answer['total']} {items}", caption_justify="left")


def detail_grid():
    """Two columns for one object: a bold name, then its value."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    return grid


def tasks_table(answer):
    """``GET /api/tasks`` as a table, newest first, with how many match in all."""
    table = page_table(answer, "tasks")
    for column in ("id", "type", "status", "progress", "device", "attempt", "error", "created"):
        table.add_column(column, no_wrap=True, justify="right" if column in ("progress", "attempt") else "left")
    for task in answer["tasks"]:
        table.add_row(
            cell(task["task_id"]),
            cell(task["task_type"]),
            status(task["status"]),
            cell(f"{task['progress']}%"),
            cell(task["device_id"]),
            cell(f"{task['attempt']}/{task['max_retries'] + 1}"),
            cell(task["error_code"]),
            when(task["created_at"]),
        )
    return table


TASK_FIELDS = [  # (label, key) of ``show``'s top part; times go through ``when``
    ("type", "task_type"),
    ("device", "device_id"),
    ("target device", "target_device_id"),
    ("tags", "tags"),
    ("batch", "batch_id"),
    ("priority", "priority"),
    ("timeout", "timeout"),
    ("error", "error_code"),
    ("idempotency key", "idempotency_key"),
    ("data", "data"),
    ("result", "result"),
]
TASK_TIMES = ["created_at", "not_before", "dispatched_at", "delivered_at", "started_at", "timeout_at", "finished_at"]


def task_view(task, events):
    """``show``: the task (``GET /api/task/{id}``), its attempts, and its history (``/events``)."""
    grid = detail_grid()
    grid.add_row("task", cell(task["task_id"]))
    grid.add_row("status", Text.assemble(status(task["status"]), f"  {task['progress']}%"))
    grid.add_row("message", cell(task["progress_message"]))
    grid.add_row("attempt", cell(f"{task['attempt']} of at most {task['max_retries'] + 1}"))
    for label, key in TASK_FIELDS:
        grid.add_row(label, cell(task[key]))
    for key in TASK_TIMES:
        if task[key]:
            grid.add_row(key.removesuffix("_at").replace("_", " "), when(task[key]))
    return Group(grid, attempts_table(task["attempts"]), events_table(events))


def attempts_table(attempts):
    table = Table(title="attempts", title_justify="left")
    for column in ("#", "device", "dispatched", "delivered", "ended", "outcome", "error"):
        table.add_column(column, no_wrap=True)
    for attempt in attempts:
        table.add_row(
            cell(attempt["attempt"]),
            cell(attempt["device_id"]),
            when(attempt["dispatched_at"]),
            when(attempt["delivered_at"]),
            when(attempt["ended_at"]),
            status(attempt["outcome"]),
            cell(attempt["error_code"]),
        )
    return table


def events_table(events):
    table = Table(title="history", title_justify="left")
    for column in ("at", "event", "actor", "attempt", "message"):
        table.add_column(column, no_wrap=column != "message")
    for event in events:
        table.add_row(
            when(event["at"]), cell(event["kind"]), cell(event["actor"]), cell(event["attempt"]), cell(event["message"])
        )
    return table


COUNTED = ("completed", "failed", "cancelled", "running", "dispatched", "pending")


def batch_counts(batch):
    """``8 completed, 1 failed, 3 running, 20 pending``: the batch's tasks by status, those there are."""
    return ", ".join(f"{batch['counts'][name]} {name}" for name in COUNTED if batch["counts"][name])


def target(batch):
    """``tags shopA, vip``, ``devices p1, p2`` or ``all``."""
    chosen = batch["target"]
    if "tags" in chosen:
        return Text("tags " + ", ".join(chosen["tags"]))
    if "device_ids" in chosen:
        return Text("devices " + ", ".join(chosen["device_ids"]))
    return Text("all")


def batches_table(answer):
    """``GET /api/batches`` as a table, newest first, with how many there are in all."""
    table = page_table(answer, "batches")
    for column in ("id", "type", "mode", "target", "status", "progress", "tasks", "created"):
        wraps = column in ("target", "tasks")
        table.add_column(
            column,
            no_wrap=not wraps,
            min_width=12 if wraps else None,
            justify="right" if column == "progress" else "left",
        )
    for batch in answer["batches"]:
        table.add_row(
            cell(batch["batch_id"]),
            cell(batch["task_type"]),
            cell(batch["mode"]),
            target(batch),
            status(batch["status"]),
            cell(f"{batch['progress']:g}%"),
            cell(f"{batch['total']}: {batch_counts(batch)}"),
            when(batch["created_at"]),
        )
    return table


def batch_view(batch):
    """``show BATCH``: the batch as ``GET /api/batch/{id}`` has it."""
    grid = detail_grid()
    grid.add_row("batch", cell(batch["batch_id"]))
    grid.add_row("status", Text.assemble(status(batch["status"]), f"  {batch['progress']:g}%"))
    grid.add_row("tasks", cell(f"{batch['total']}: {batch_counts(batch)}"))
    grid.add_row("type", cell(batch["task_type"]))
    grid.add_row("mode", cell(batch["mode"]))
    grid.add_row("target", target(batch))
    grid.add_row("max in flight", cell(batch["max_in_flight"]))
    grid.add_row("abort", cell(batch["abort"]))
    grid.add_row("options", cell(batch["options"]))
    for key in ("created_at", "updated_at", "finished_at"):
        grid.add_row(key.removesuffix("_at"), when(batch[key]))
    return grid


def creates(schedule):
    """What each fire time of a schedule makes: ``task DELIST → tags shopA``, ``batch COLLECT each → all``."""
    task = schedule["task"]
    if task is None:
        batch = schedule["batch"]
        return Text.assemble(f"batch {batch['task_type']} {batch['mode']} → ", target(batch))
    if task.get("device_id"):
        return Text(f"task {task['task_type']} → device {task['device_id']}")
    if task.get("tags"):
        return Text(f"task {task['task_type']} → tags " + ", ".join(task["tags"]))
    return Text(f"task {task['task_type']} → any device")


def schedule_state(schedule):
    return Text("enabled", style="green") if schedule["enabled"] else Text("paused", style="yellow")


def run_outcome(run):
    """What a fire time made (its ``task_...`` or ``batch_...`` id), or the error that kept it from making one."""
    if run is None:
        return cell(None)
    if run["error"]:
        return Text(f"{run['error']['error_code']}: {run['error']['message']}", style="red")
    return cell(run["batch_id"] or run["task_id"])


def schedules_table(answer):
    """``GET /api/schedules`` as a table, newest first, each with its last run."""
    table = page_table(answer, "schedules")
    for column in ("id", "name", "cron", "timezone", "creates", "state", "next run", "last run", "outcome"):
        table.add_column(column, no_wrap=column not in ("name", "creates"))
    for schedule in answer["schedules"]:
        last = schedule["last_run"]
        table.add_row(
            cell(schedule["schedule_id"]),
            cell(schedule["name"]),
            cell(schedule["cron"]),
            cell(schedule["timezone"]),
            creates(schedule),
            schedule_state(schedule),
            when(schedule["next_run_at"]),
            when(last and last["fire_at"]),
            run_outcome(last),
        )
    return table


def schedule_view(schedule):
    """``schedule show``: the schedule as ``GET /api/schedule/{id}`` has it, and its latest runs, newest first."""
    grid = detail_grid()
    grid.add_row("schedule", cell(schedule["schedule_id"]))
    grid.add_row("name", cell(schedule["name"]))
    grid.add_row("state", schedule_state(schedule))
    grid.add_row("cron", cell(f"{schedule['cron']}  ({schedule['timezone']})"))
    grid.add_row("misfire", cell(schedule["misfire"]))
    grid.add_row("creates", creates(schedule))
    grid.add_row("body", cell(schedule["task"] or schedule["batch"]))
    for key in ("next_run_at", "created_at", "updated_at"):
        grid.add_row(key.removesuffix("_at").replace("_", " "), when(schedule[key]))
    runs = Table(title="runs", title_justify="left")
    for column in ("fire at", "ran at", "outcome"):
        runs.add_column(column, no_wrap=column != "outcome")
    for run in schedule["runs"]:
        runs.add_row(when(run["fire_at"]), when(run["ran_at"]), run_outcome(run))
    return Group(grid, runs)
