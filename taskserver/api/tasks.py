"""``GET /api/tasks``, ``POST /api/dispatch-task``, and one task: detail, events, status, cancel."""

from flask import current_app

from taskserver import schemas
from taskserver.api import Blueprint, error_doc, idempotency_key, operator_identity, responses, service
from taskserver.domain import ErrorCode, TaskStatus
from taskserver.present import TASK_STATUS, TASK_SUMMARY, task_detail, task_event

blp = Blueprint("tasks", __name__, url_prefix="/api", description="任务管理")


@blp.route("/tasks")
@blp.arguments(schemas.TaskListQuerySchema(), location="query")
@blp.response(200, responses.TaskListSchema)
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR))
def list_tasks(query):
    """Tasks, newest first; filter by ``status`` (one or several), ``task_type``, ``device_id``, ``batch_id``,
    ``created_after``, ``created_before``; page with ``limit`` / ``offset``. ``total`` counts every match, not just
    the page."""
    tasks, total = service().queries.tasks(
        statuses=query["status"],
        task_type=query.get("task_type"),
        device_id=query.get("device_id"),
        limit=query["limit"],
        offset=query["offset"],
        created_after=query.get("created_after"),
        created_before=query.get("created_before"),
        batch_id=query.get("batch_id"),
    )
    page = [TASK_SUMMARY(task) for task in tasks]
    return {"success": True, "tasks": page, "total": total, "limit": query["limit"], "offset": query["offset"]}


@blp.route("/dispatch-task", methods=["POST"])
@blp.arguments(schemas.DispatchSchema())
@blp.response(200, responses.DispatchOutSchema, description="已分发到设备")
@blp.alt_response(202, schema=responses.DispatchOutSchema, description="暂无可用设备或已排期：任务等待分发")
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR, ErrorCode.INVALID_JSON, ErrorCode.UNKNOWN_TASK_TYPE))
@blp.alt_response(404, **error_doc(ErrorCode.DEVICE_NOT_FOUND))
@blp.alt_response(409, **error_doc(ErrorCode.IDEMPOTENCY_KEY_REUSED))
def dispatch_task(body):
    """Create a task and send it to ``device_id``, or to the least-loaded online device (with all of ``tags``, if
    given); queue it if none fits."""
    dispatch = schemas.dispatch_request(body, _extra_types(), operator_identity(), idempotency_key(body))
    task, _created = service().dispatcher.dispatch(dispatch)
    return _dispatch_answer(task)


def _extra_types():
    return current_app.config["EXTRA_TASK_TYPES"]


def _dispatch_answer(task):
    if task.status == TaskStatus.PENDING:
        waiting = "任务已排期，到时自动分发" if task.not_before else "暂无可用设备，任务已进入等待队列"
        target = service().queries.find_device(task.target_device_id) if task.target_device_id else None
        if target is not None and target.disabled:
            waiting = "设备已停用，任务将在设备启用后分发"
        device_id = task.target_device_id
        status_code, message = 202, waiting
    else:
        device_id = task.device_id
        status_code, message = 200, "任务分发成功"
    answer = {
        "success": True,
        "task_id": task.task_id,
        "device_id": device_id,
        "device_name": service().queries.device_names([device_id]).get(device_id),
        "status": task.status.value,
        "message": message,
    }
    return answer, status_code


@blp.route("/task/<task_id>")
@blp.response(200, responses.TaskDetailSchema)
@blp.alt_response(404, **error_doc(ErrorCode.TASK_NOT_FOUND))
def get_task(task_id):
    """The whole task: data, result, error code, every timing and each attempt (device, times, outcome)."""
    queries = service().queries
    return {"success": True, "task": task_detail(queries.task(task_id), queries.task_events(task_id))}


@blp.route("/task/<task_id>/events")
@blp.response(200, responses.TaskEventsSchema)
@blp.alt_response(404, **error_doc(ErrorCode.TASK_NOT_FOUND))
def get_task_events(task_id):
    """The task's history, oldest first: created, dispatched, delivered, progress milestones, result, timeout,
    retry, cancel; each with its time, its actor (operator, server, watchdog or the device) and a message."""
    events = [task_event(event) for event in service().queries.task_events(task_id)]
    return {"success": True, "task_id": task_id, "events": events, "total": len(events)}


@blp.route("/task/<task_id>/status")
@blp.response(200, responses.TaskStatusSchema)
@blp.alt_response(404, **error_doc(ErrorCode.TASK_NOT_FOUND))
def get_task_status(task_id):
    """Status, progress and result of one task."""
    return {"success": True, "task": TASK_STATUS(service().queries.task(task_id))}


@blp.route("/task/<task_id>/cancel", methods=["POST"])
@blp.response(200, responses.TaskStatusSchema)
@blp.alt_response(404, **error_doc(ErrorCode.TASK_NOT_FOUND))
@blp.alt_response(409, **error_doc(ErrorCode.INVALID_STATE))
def cancel_task(task_id):
    """Cancel a task that has not ended; its device gets ``cancel_task`` (now, or when it reconnects)."""
    return {"success": True, "message": "任务已取消", "task": TASK_STATUS(service().tasks.cancel(task_id))}
