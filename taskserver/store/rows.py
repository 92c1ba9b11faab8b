"""How tasks, devices, batches and schedules cross between Python and database rows."""

import json
from dataclasses import fields
from operator import attrgetter

from taskserver.domain import (
    ACTIVE,
    Batch,
    BatchStatus,
    Device,
    Misfire,
    Schedule,
    ScheduleKind,
    ScheduleRun,
    Task,
    TaskStatus,
)

JSON_COLUMNS = {"data", "result", "device_info", "detail", "target_tags", "tags", "operator_tags", "target", "options"}
JSON_COLUMNS |= {"body", "error"}  # a schedule's body, a schedule run's error
ACTIVE_VALUES = tuple(s.value for s in ACTIVE)
TASK_COLUMNS = [f.name for f in fields(Task)]
BATCH_COLUMNS = [f.name for f in fields(Batch)]
DEVICE_COLUMNS = [f.name for f in fields(Device) if f.name != "node_id"]  # PostgreSQL sets node_id itself
SCHEDULE_COLUMNS = [f.name for f in fields(Schedule)]
SCHEDULE_RUN_COLUMNS = [f.name for f in fields(ScheduleRun)]
to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # one encoder, not one per value
task_values = attrgetter(*TASK_COLUMNS)
TASK_JSON_AT = [n for n, name in enumerate(TASK_COLUMNS) if name in JSON_COLUMNS]


def to_db(name, value):
    """Encode one Python value for its column: JSON columns as text; statuses (str) and flags (int) bind as they are."""
    if name in JSON_COLUMNS and value is not None:
        return to_json(value)
    return value


def task_row(task):
    """The task's values in ``TASK_COLUMNS`` order, each encoded for its column (``to_db`` at the speed a batch of
    10,000 tasks needs)."""
    row = list(task_values(task))
    for n in TASK_JSON_AT:
        if row[n] is not None:
            row[n] = to_json(row[n])
    return row


def changed(task, changes):
    """A copy of ``task`` with ``changes`` applied (``dataclasses.replace`` without its per-call checks: the UPDATE
    has already refused an unknown column)."""
    after = object.__new__(Task)
    after.__dict__.update(task.__dict__, **changes)
    return after


def from_json(text):
    """Decode a JSON column; NaN or Infinity kept by an older server reads as null (no answer may carry them)."""
    return json.loads(text, parse_constant=lambda _constant: None)


def task_from_row(row):
    """Build a Task from a row."""
    values = dict(row)
    values.pop("due", None)  # the store's own columns
    values.pop("held", None)
    values["data"] = from_json(values["data"])
    values["target_tags"] = from_json(values["target_tags"]) if values["target_tags"] is not None else None
    values["result"] = from_json(values["result"]) if values["result"] is not None else None
    values["status"] = TaskStatus(values["status"])
    return Task(**values)


def device_from_row(row):
    """Build a Device from a row."""
    values = dict(row)
    values["device_info"] = from_json(values["device_info"])
    values["tags"] = from_json(values["tags"])
    values["operator_tags"] = from_json(values["operator_tags"])
    values["connected"] = bool(values["connected"])
    values["disabled"] = bool(values["disabled"])
    return Device(**values)


def event_from_row(row):
    """One line of a task's history, its ``detail`` decoded."""
    values = dict(row)
    values["detail"] = from_json(values["detail"]) if values["detail"] is not None else None
    return values


def history_from_row(row):
    """One line of a device's history (its own events and those of tasks on it)."""
    return {
        "at": row["at"],
        "kind": row["kind"],
        "actor": row["actor"],
        "task_id": row["task_id"],
        "attempt": row["attempt"],
        "detail": from_json(row["detail"]) if row["detail"] is not None else None,
    }


def batch_from_row(row):
    """Build a Batch from a row."""
    values = {name: row[name] for name in BATCH_COLUMNS}
    values["target"] = from_json(values["target"])
    values["options"] = from_json(values["options"])
    values["status"] = BatchStatus(values["status"])
    return Batch(**values)


def schedule_from_row(row):
    """Build a Schedule from a row."""
    values = {name: row[name] for name in SCHEDULE_COLUMNS}
    values["body"] = from_json(values["body"])
    values["kind"] = ScheduleKind(values["kind"])
    values["misfire"] = Misfire(values["misfire"])
    values["enabled"] = bool(values["enabled"])
    return Schedule(**values)


def schedule_run_from_row(row):
    """Build a ScheduleRun from a row."""
    values = {name: row[name] for name in SCHEDULE_RUN_COLUMNS}
    values["error"] = from_json(values["error"]) if values["error"] is not None else None
    return ScheduleRun(**values)
