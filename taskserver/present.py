"""How tasks and devices look on the wire: the spec's field names and its time format."""

from datetime import datetime


def iso(ts):
    """Epoch seconds as the spec's local time text (``2025-09-17T14:30:00``), or None."""
    return None if ts is None else datetime.fromtimestamp(ts).isoformat(timespec="seconds")


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


def cancel_task_message(task_id):
    """The ``cancel_task`` event exactly as the spec shows it."""
    return {"type": "cancel_task", "task_id": task_id}
