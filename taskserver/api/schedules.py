"""``/api/schedules``: recurring schedules (a cron expression in a time zone; each fire time creates a task or a
batch), and one schedule: detail with its latest runs, change, delete."""

from flask import current_app

from taskserver import schemas
from taskserver.api import Blueprint, error_doc, responses, service
from taskserver.domain import ErrorCode
from taskserver.present import schedule_detail, schedule_listed

blp = Blueprint("schedules", __name__, url_prefix="/api", description="定时任务（按 cron 周期创建任务或批次）")


@blp.route("/schedules")
@blp.arguments(schemas.ScheduleListQuerySchema(), location="query")
@blp.response(200, responses.ScheduleListSchema)
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR))
def list_schedules(query):
    """Schedules, newest first, each with its ``last_run``; page with ``limit`` / ``offset``. ``total`` counts them
    all."""
    listed, total = service().schedules.page(query["limit"], query["offset"])
    page = [schedule_listed(schedule, last_run) for schedule, last_run in listed]
    return {"success": True, "schedules": page, "total": total, "limit": query["limit"], "offset": query["offset"]}


@blp.route("/schedules", methods=["POST"])
@blp.arguments(schemas.ScheduleSchema())
@blp.response(201, responses.ScheduleDetailSchema)
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR, ErrorCode.INVALID_JSON, ErrorCode.UNKNOWN_TASK_TYPE))
def create_schedule(body):
    """Create a schedule: each fire time of ``cron`` in ``timezone`` creates ``task`` (a dispatch body) or ``batch``
    (a batch body) once; the watchdog's leader runs it. Fire times missed while no server ran are run once for all
    (``misfire: coalesce``) or skipped (``misfire: skip``: only a fire time at most 60 s late runs)."""
    schedule = service().schedules.create(schemas.schedule_request(body, _extra_types()))
    return {"success": True, "message": "定时任务已创建", "schedule": schedule_detail(schedule, [])}, 201


@blp.route("/schedule/<schedule_id>")
@blp.response(200, responses.ScheduleDetailSchema)
@blp.alt_response(404, **error_doc(ErrorCode.SCHEDULE_NOT_FOUND))
def get_schedule(schedule_id):
    """One schedule, its ``next_run_at`` and its latest 20 runs, newest first (each with the task or batch it
    created, or the error that kept it from creating one)."""
    return {"success": True, "schedule": _detail(service().schedules.schedule(schedule_id))}


@blp.route("/schedule/<schedule_id>", methods=["PATCH"])
@blp.arguments(schemas.SchedulePatchSchema())
@blp.response(200, responses.ScheduleDetailSchema)
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR, ErrorCode.INVALID_JSON, ErrorCode.UNKNOWN_TASK_TYPE))
@blp.alt_response(404, **error_doc(ErrorCode.SCHEDULE_NOT_FOUND))
def update_schedule(body, schedule_id):
    """Change any of a schedule's fields: ``enabled: false`` pauses it (``next_run_at`` null); resuming it or giving
    it another ``cron`` or ``timezone`` makes ``next_run_at`` its first fire time from now."""
    schedule = service().schedules.update(schedule_id, schemas.schedule_changes(body, _extra_types()))
    return {"success": True, "message": "定时任务已更新", "schedule": _detail(schedule)}


@blp.route("/schedule/<schedule_id>", methods=["DELETE"])
@blp.response(200, responses.ScheduleDeletedSchema)
@blp.alt_response(404, **error_doc(ErrorCode.SCHEDULE_NOT_FOUND))
def delete_schedule(schedule_id):
    """Delete a schedule and its runs; the tasks it created stay."""
    service().schedules.delete(schedule_id)
    return {"success": True, "message": "定时任务已删除", "schedule_id": schedule_id}


def _extra_types():
    return current_app.config["EXTRA_TASK_TYPES"]


def _detail(schedule):
    return schedule_detail(schedule, service().schedules.recent_runs(schedule.schedule_id))
