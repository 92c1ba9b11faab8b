"""How tasks, devices, batches and schedules look on the wire: the spec's field names and its time format.

Each answer's shape is defined once, here: ``api/responses.py`` documents it with the shape's ``schema``."""

import math
from datetime import datetime
from operator import itemgetter

from taskserver import domain
from taskserver.domain import ACTIVE, TERMINAL, ErrorCode, EventKind, ScheduleKind, TaskStatus
from taskserver.shapes import Shape, boolean, given, integer, listing, mapping, nested, number, strings, text

EARLIEST, LATEST = "0001-01-01T00:00:00", "9999-12-31T23:59:59"


def iso(ts):
    """Epoch seconds as the spec's local time text (``2025-09-17T14:30:00``), or None.

    A time beyond the years 1-9999 (kept by an older server that accepted it) shows as the nearest end of that range."""
    if ts is None or not math.isfinite(ts):
        return None
    try:
        return datetime.fromtimestamp(ts).isoformat(timespec="seconds")
    except (ValueError, OverflowError, OSError):
        return EARLIEST if ts < 0 else LATEST


ATTEMPT_ENDS = {  # the event that ends an attempt -> its outcome
    EventKind.COMPLETED: TaskStatus.COMPLETED,
    EventKind.FAILED: TaskStatus.FAILED,
    EventKind.RETRY_SCHEDULED: TaskStatus.FAILED,
    EventKind.CANCELLED: TaskStatus.CANCELLED,
}


def attempts(events):
    """Each dispatch of the task, from its history: device, times, and how it ended (None while it runs)."""
    found, current = [], None
    for event in events:
        if event["kind"] == EventKind.DISPATCHED:
            current = dict.fromkeys(ATTEMPT.fields)
            current.update(attempt=event["attempt"], device_id=event["device_id"], dispatched_at=iso(event["at"]))
            found.append(current)
        elif current is not None and event["kind"] == EventKind.DELIVERED:
            current["delivered_at"] = iso(event["at"])
        elif current is not None and event["kind"] in ATTEMPT_ENDS:
            detail = event["detail"] or {}
            current.update(ended_at=iso(event["at"]), outcome=ATTEMPT_ENDS[event["kind"]])
            current["error_code"] = detail.get("error_code")
            current = None
    return found


FAILURES = {ErrorCode.TASK_TIMEOUT: "执行超时", ErrorCode.DEVICE_OFFLINE: "设备离线超过宽限期"}
OFFLINE_REASONS = {"disconnected": "连接断开", "heartbeat_timeout": "心跳超时"}


def _failure(detail):
    code = detail.get("error_code")
    return FAILURES.get(code) or f"执行失败（{code}）"


def _created(detail, device):
    by = f"（定时任务 {detail['schedule_id']}）" if detail.get("schedule_id") else ""
    return f"任务创建{by}" + (f"，指定设备 {device}" if device else "")


def event_message(event):
    """One history event in words, for people reading it."""
    detail, device = event.get("detail") or {}, event.get("device_id")
    note = f"：{detail['message']}" if detail.get("message") else ""
    messages = {
        EventKind.CREATED: _created(detail, device),
        EventKind.DISPATCHED: f"分发到设备 {device}",
        EventKind.DELIVERED: f"设备 {device} 确认收到任务",
        EventKind.STARTED: f"设备 {device} 开始执行",
        EventKind.PROGRESS: f"进度 {detail.get('progress')}%{note}",
        EventKind.COMPLETED: "执行完成",
        EventKind.FAILED: f"{_failure(detail)}，任务失败" if detail else "任务失败",
        EventKind.RETRY_SCHEDULED: f"{_failure(detail)}，将于 {detail.get('retry_at')} 重试" if detail else "等待重试",
        EventKind.CANCELLED: "任务已取消",
        EventKind.CANCEL_CONFIRMED: f"设备 {device} 确认已取消",
        EventKind.REGISTERED: f"设备注册（容量 {detail.get('capacity')}）",
        EventKind.OFFLINE: f"设备离线（{OFFLINE_REASONS.get(detail.get('reason'), detail.get('reason'))}）",
        EventKind.DISABLED: "设备已停用：不再分配新任务",
        EventKind.ENABLED: "设备已启用",
    }
    return messages.get(event["kind"], event["kind"])


def time(source=None, nullable=True, **metadata):
    """A field holding a time kept as epoch seconds, shown as the spec's local time text."""
    return text(source, nullable, convert=iso, **metadata)


def _status(task_or_device):
    return task_or_device.status.value


def _device_of(task):
    """The device a task is on, or the one it waits for."""
    return task.device_id or task.target_device_id


def _timeout_at(task):
    return iso(task.dispatched_at + task.timeout) if task.status in ACTIVE else None


def _registered_tags(device):
    return domain.device_tags(device.device_info, ())


def _disconnected_at(device):
    return iso(device.disconnected_at) if not device.connected else None


# A task as ``GET /api/tasks`` lists it.
TASK_SUMMARY = Shape(
    "TaskOut",
    task_id=text("task_id"),
    task_type=text("task_type"),
    status=text(_status),
    device_id=text(_device_of, nullable=True),
    created_at=time("created_at", nullable=False),
    data=mapping("data"),
    progress=integer("progress"),
    priority=integer("priority"),
    attempt=integer("attempt"),
    max_retries=integer("max_retries"),
    timeout=integer("timeout"),
    error_code=text("error_code", nullable=True),
    updated_at=time("updated_at", nullable=False),
    tags=strings("target_tags", nullable=True, description="只分发给同时具有这些标签的设备；null 为不限"),
    batch_id=text("batch_id", nullable=True, description="创建该任务的批次"),
)

# A task as ``GET /api/task/{id}/status`` shows it.
TASK_STATUS = Shape(
    "TaskStatusOut",
    task_id=text("task_id"),
    status=text(_status),
    progress=integer("progress"),
    result=mapping("result", nullable=True),
    updated_at=time("updated_at", nullable=False),
    task_type=text("task_type"),
    device_id=text(_device_of, nullable=True),
    progress_message=text("progress_message", nullable=True),
    error_code=text("error_code", nullable=True),
    attempt=integer("attempt"),
)

# One dispatch of a task, as ``attempts`` finds it in the task's history.
ATTEMPT = Shape(
    "AttemptOut",
    attempt=integer(),
    device_id=text(nullable=True),
    dispatched_at=text(),
    delivered_at=text(nullable=True),
    ended_at=text(nullable=True),
    outcome=text(nullable=True, description="completed / failed / cancelled；进行中为 null"),
    error_code=text(nullable=True),
)

# A task as ``GET /api/task/{id}`` shows it: everything the store keeps, its attempts (given) and their times.
TASK_DETAIL = TASK_SUMMARY.extend(
    "TaskDetailOut",
    target_device_id=text("target_device_id", nullable=True),
    progress_message=text("progress_message", nullable=True),
    result=mapping("result", nullable=True),
    dispatched_at=time("dispatched_at"),
    delivered_at=time("delivered_at"),
    started_at=time("started_at"),
    finished_at=time("finished_at"),
    not_before=time("not_before", description="排期或重试退避：此前不会分发"),
    timeout_at=text(_timeout_at, nullable=True, description="进行中的执行在此时超时"),
    idempotency_key=text("idempotency_key", nullable=True),
    attempts=listing(ATTEMPT),
)

# One line of a task's history as ``GET /api/task/{id}/events`` lists it (read from the store's event rows).
TASK_EVENT = Shape(
    "TaskEventOut",
    reads=itemgetter,
    at=time("at", nullable=False),
    kind=text(
        "kind",
        description="created, dispatched, delivered, started, progress, completed, failed, retry_scheduled, "
        "cancelled, cancel_confirmed",
    ),
    actor=text("actor", description="operator, server, watchdog 或设备 id"),
    device_id=text("device_id", nullable=True),
    attempt=integer("attempt", nullable=True),
    detail=mapping("detail", nullable=True),
    message=text(event_message),
)

# One line of a device's recent history: its own events and those of tasks on it (``message`` given).
DEVICE_EVENT = Shape(
    "DeviceEventOut",
    reads=itemgetter,
    at=time("at", nullable=False),
    kind=text("kind", description="registered, offline, disabled, enabled, 或其任务的事件"),
    actor=text("actor"),
    task_id=text("task_id", nullable=True),
    attempt=integer("attempt", nullable=True),
    detail=mapping("detail", nullable=True),
    message=text(),
)

CONNECTION_INFO = Shape(
    "ConnectionInfo", sid=text("sid", nullable=True), registered_at=time("registered_at", nullable=True)
)

DEVICE_FIELDS = {
    "device_id": text("device_id"),
    "device_name": text("device_name"),
    "status": text(_status),
    "last_heartbeat": time("last_heartbeat"),
    "task_count": integer("active_tasks"),
    "connection_info": nested(CONNECTION_INFO),
    "device_info": mapping("device_info"),
    "capacity": integer("capacity"),
    "disabled": boolean("disabled"),
    "tags": strings("tags", description="设备的全部标签：注册时 device_info.tags 与运营者设置的标签之并集"),
    "device_tags": strings(_registered_tags, description="设备注册时在 device_info.tags 中带来的标签"),
    "operator_tags": strings("operator_tags", description="运营者用 PUT /api/device/{id}/tags 设置的标签"),
}
# Given only on a cluster (a single server's answers have no such field).
NODE_ID = text(nullable=True, description="多节点部署时：持有该设备连接的节点（离线为 null）；单机部署无此字段")

# A device as ``GET /api/devices`` lists it.
DEVICE_SUMMARY = Shape("DeviceOut", **DEVICE_FIELDS, node_id=NODE_ID)

# A device as ``GET /api/device/{id}`` shows it: the list's fields, its tasks now and its recent history (given).
DEVICE_DETAIL = Shape(
    "DeviceDetailOut",
    **DEVICE_FIELDS,
    created_at=time("created_at", nullable=False),
    disconnected_at=text(_disconnected_at, nullable=True),
    active_tasks=listing(TASK_SUMMARY),
    recent_history=listing(DEVICE_EVENT),
    node_id=NODE_ID,
)


def _body_if(kind):
    """The body of a schedule that creates ``kind``, else None."""
    return lambda schedule: schedule.body if schedule.kind == kind else None


# One fire time run: what it created, or why it created nothing.
SCHEDULE_RUN = Shape(
    "ScheduleRunOut",
    fire_at=time("fire_at", nullable=False, description="触发时间（错过的多个合并为一次时：其中最晚的）"),
    ran_at=time("ran_at", nullable=False),
    task_id=text("task_id", nullable=True),
    batch_id=text("batch_id", nullable=True),
    error=mapping("error", nullable=True, description="未能创建时：{message, error_code}"),
)

# A schedule as ``GET /api/schedules`` lists it: ``task`` or ``batch`` holds what each fire time creates; its latest
# run is given.
SCHEDULE = Shape(
    "ScheduleOut",
    schedule_id=text("schedule_id"),
    name=text("name"),
    cron=text("cron"),
    timezone=text("timezone"),
    enabled=boolean("enabled"),
    misfire=text("misfire", convert=str),
    task=mapping(_body_if(ScheduleKind.TASK), nullable=True, description="每个触发时间创建的任务（派发请求体）"),
    batch=mapping(_body_if(ScheduleKind.BATCH), nullable=True, description="每个触发时间创建的批次（批次请求体）"),
    next_run_at=time("next_run_at", description="下一个触发时间；停用时为 null"),
    created_at=time("created_at", nullable=False),
    updated_at=time("updated_at", nullable=False),
    last_run=given(SCHEDULE_RUN, nullable=True, description="最近一次运行；尚未运行时为 null"),
)

# A schedule as ``GET /api/schedule/{id}`` shows it: the list's fields and its latest runs (given).
SCHEDULE_DETAIL = SCHEDULE.extend("ScheduleDetailOut", runs=listing(SCHEDULE_RUN))


def new_task_message(task):
    """The ``new_task`` event exactly as the spec shows it, plus the attempt number."""
    return {
        "type": "new_task",
        "task_id": task.task_id,
        "task_type": task.task_type,
        "data": task.data,
        "created_at": iso(task.created_at),
        "timeout": task.timeout,
        "priority": task.priority,
        "attempt": task.attempt,
    }


def cancel_task_message(task_id, attempt):
    """The ``cancel_task`` event exactly as the spec shows it, plus the attempt it stops."""
    return {"type": "cancel_task", "task_id": task_id, "attempt": attempt}


def task_detail(task, events):
    """A task as ``GET /api/task/{id}`` shows it, its attempts found in its history ``events``."""
    return TASK_DETAIL(task, attempts=attempts(events))


def task_event(event):
    """One line of a task's history as ``GET /api/task/{id}/events`` lists it."""
    return TASK_EVENT(event)


def device_summary(device, clustered=False):
    """A device as ``GET /api/devices`` lists it; on a cluster (``clustered``) with the node holding its connection."""
    return DEVICE_SUMMARY(device, node_id=device.node_id) if clustered else DEVICE_SUMMARY(device)


def device_detail(device, active_tasks, history, clustered=False):
    """A device as ``GET /api/device/{id}`` shows it: the list's fields, its tasks now and its recent history; on a
    cluster (``clustered``) also the node holding its connection."""
    return DEVICE_DETAIL(
        device,
        active_tasks=[TASK_SUMMARY(task) for task in active_tasks],
        recent_history=[device_event(event, device.device_id) for event in history],
        **({"node_id": device.node_id} if clustered else {}),
    )


def device_event(event, device_id):
    """One line of a device's recent history (its own events and those of tasks on it)."""
    return DEVICE_EVENT(event, message=event_message({**event, "device_id": device_id}))


def _abort_rule(batch):
    if batch.abort_failure_ratio is None:
        return None
    return {"failure_ratio": batch.abort_failure_ratio, "min_finished": batch.abort_min_finished}


# A batch as ``GET /api/batches`` lists it and ``GET /api/batch/{id}`` shows it; its task counts by status and its
# progress are given (read from its tasks).
BATCH = Shape(
    "BatchOut",
    batch_id=text("batch_id"),
    task_type=text("task_type"),
    mode=text("mode", description="each：每台匹配设备一个任务；spread：每个 item 一个任务，由任一匹配设备执行"),
    target=mapping("target", description='{"tags": [...]} / {"device_ids": [...]} / {"all": true}'),
    status=text(_status, description="running / completed / aborted / cancelled"),
    total=integer("total"),
    max_in_flight=integer("max_in_flight", nullable=True),
    abort=mapping(_abort_rule, nullable=True, description='{"failure_ratio", "min_finished"}'),
    options=mapping("options", description="priority, timeout, max_retries, schedule_time, online_only"),
    created_at=time("created_at", nullable=False),
    updated_at=time("updated_at", nullable=False),
    finished_at=time("finished_at", description="其所有任务都已结束的时间"),
    counts=mapping(description="各状态的任务数：pending, dispatched, running, completed, failed, cancelled"),
    progress=number(description="整体进度 0-100：已结束的任务计 100，其余按各自进度"),
)


def batch_view(batch, tasks_by_status):
    """A batch as answers show it, from ``Store.count_batch_tasks``: counts by status and the overall progress."""
    counts = {status.value: tasks_by_status.get(status.value, (0, 0))[0] for status in TaskStatus}
    done = sum(counts[status.value] for status in TERMINAL) * 100
    moving = sum(tasks_by_status.get(status.value, (0, 0))[1] for status in ACTIVE)
    progress = round((done + moving) / batch.total, 1) if batch.total else 100.0
    return BATCH(batch, counts=counts, progress=progress)


def schedule_listed(schedule, last_run):
    """A schedule as ``GET /api/schedules`` lists it, with its ``last_run`` (None if it has not run)."""
    return SCHEDULE(schedule, last_run=SCHEDULE_RUN(last_run) if last_run else None)


def schedule_detail(schedule, runs):
    """A schedule as ``GET /api/schedule/{id}`` shows it, with its latest ``runs``, newest first."""
    shown = [SCHEDULE_RUN(run) for run in runs]
    return SCHEDULE_DETAIL(schedule, last_run=shown[0] if shown else None, runs=shown)
