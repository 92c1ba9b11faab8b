"""How tasks and devices look on the wire: the spec's field names and its time format."""

import math
from datetime import datetime

from taskserver.domain import ACTIVE, ErrorCode, EventKind, TaskStatus

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


def task_summary(task):
    """A task as ``GET /api/tasks`` lists it."""
    return {
        "task_id": task.task_id,
        "task_type": task.task_type,
        "status": task.status.value,
        "device_id": task.device_id or task.target_device_id,
        "created_at": iso(task.created_at),
        "data": task.data,
        "progress": task.progress,
        "priority": task.priority,
        "attempt": task.attempt,
        "max_retries": task.max_retries,
        "timeout": task.timeout,
        "error_code": task.error_code,
        "updated_at": iso(task.updated_at),
    }


def task_status(task):
    """A task as ``GET /api/task/{id}/status`` shows it."""
    return {
        "task_id": task.task_id,
        "status": task.status.value,
        "progress": task.progress,
        "result": task.result,
        "updated_at": iso(task.updated_at),
        "task_type": task.task_type,
        "device_id": task.device_id or task.target_device_id,
        "progress_message": task.progress_message,
        "error_code": task.error_code,
        "attempt": task.attempt,
    }


def device_summary(device):
    """A device as ``GET /api/devices`` lists it."""
    return {
        "device_id": device.device_id,
        "device_name": device.device_name,
        "status": device.status.value,
        "last_heartbeat": iso(device.last_heartbeat),
        "task_count": device.active_tasks,
        "connection_info": {"sid": device.sid, "registered_at": iso(device.registered_at)},
        "device_info": device.device_info,
        "capacity": device.capacity,
        "disabled": device.disabled,
    }


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
    """A task as ``GET /api/task/{id}`` shows it: everything the store keeps, its attempts and their times."""
    return {
        **task_summary(task),
        "target_device_id": task.target_device_id,
        "progress_message": task.progress_message,
        "result": task.result,
        "dispatched_at": iso(task.dispatched_at),
        "delivered_at": iso(task.delivered_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
        "not_before": iso(task.not_before),
        "timeout_at": iso(task.dispatched_at + task.timeout) if task.status in ACTIVE else None,
        "idempotency_key": task.idempotency_key,
        "attempts": attempts(events),
    }


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
            current = {"attempt": event["attempt"], "device_id": event["device_id"], "dispatched_at": iso(event["at"])}
            current.update(delivered_at=None, ended_at=None, outcome=None, error_code=None)
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


def event_message(event):
    """One history event in words, for people reading it."""
    detail, device = event.get("detail") or {}, event.get("device_id")
    note = f"：{detail['message']}" if detail.get("message") else ""
    messages = {
        EventKind.CREATED: "任务创建" + (f"，指定设备 {device}" if device else ""),
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


def task_event(event):
    """One line of a task's history as ``GET /api/task/{id}/events`` lists it."""
    return {
        "at": iso(event["at"]),
        "kind": event["kind"],
        "actor": event["actor"],
        "device_id": event["device_id"],
        "attempt": event["attempt"],
        "detail": event["detail"],
        "message": event_message(event),
    }


def device_event(event, device_id):
    """One line of a device's recent history (its own events and those of tasks on it)."""
    return {
        "at": iso(event["at"]),
        "kind": event["kind"],
        "actor": event["actor"],
        "task_id": event["task_id"],
        "attempt": event["attempt"],
        "detail": event["detail"],
        "message": event_message({**event, "device_id": device_id}),
    }


def device_detail(device, active_tasks, history):
    """A device as ``GET /api/device/{id}`` shows it: the list's fields, its tasks now and its recent history."""
    return {
        **device_summary(device),
        "created_at": iso(device.created_at),
        "disconnected_at": iso(device.disconnected_at) if not device.connected else None,
        "active_tasks": [task_summary(task) for task in active_tasks],
        "recent_history": [device_event(event, device.device_id) for event in history],
    }
