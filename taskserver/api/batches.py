"""``POST /api/batches`` and ``GET /api/batches``, and one batch: detail and cancel."""

from flask import current_app, request

from taskserver import schemas
from taskserver.api import Blueprint, error_doc, idempotency_key, operator_identity, responses, service
from taskserver.domain import ErrorCode
from taskserver.present import batch_view

blp = Blueprint("batches", __name__, url_prefix="/api", description="批次：一次创建多个任务")


@blp.before_request
def room_for_a_batch():
    """A batch body may hold up to ``MAX_BATCH`` tasks' data: it has a limit of its own, ``MAX_BATCH_BODY_BYTES``."""
    if request.endpoint == "batches.create_batch":
        request.max_content_length = current_app.config["MAX_BATCH_BODY_BYTES"]


@blp.route("/batches", methods=["POST"])
@blp.arguments(schemas.BatchSchema())
@blp.response(201, responses.BatchCreatedSchema)
@blp.alt_response(
    400,
    **error_doc(
        ErrorCode.VALIDATION_ERROR, ErrorCode.INVALID_JSON, ErrorCode.UNKNOWN_TASK_TYPE, ErrorCode.NO_MATCHING_DEVICES
    ),
)
@blp.alt_response(200, schema=responses.BatchCreatedSchema, description="同一幂等键的重复请求：返回它创建的批次")
@blp.alt_response(404, **error_doc(ErrorCode.DEVICE_NOT_FOUND))
@blp.alt_response(409, **error_doc(ErrorCode.IDEMPOTENCY_KEY_REUSED))
def create_batch(body):
    """Create many tasks in one request and one transaction. ``mode: each``: one task per matching device, pinned
    to it (``online_only``: only devices online now); ``mode: spread``: one task per item of ``items``, each to any
    matching device. ``max_in_flight`` limits how many are queued, dispatched or running at once; ``abort`` cancels
    the pending rest once enough ended and the failed share reached ``failure_ratio``. With an ``Idempotency-Key``
    (or ``idempotency_key``), the same request again returns the batch it made (200)."""
    extra_types = current_app.config["EXTRA_TASK_TYPES"]
    request = schemas.batch_request(body, extra_types, operator_identity(), idempotency_key(body))
    batch, task_ids, created = service().batches.create(request)
    answer = {"success": True, "batch_id": batch.batch_id, "total": batch.total, "task_ids": task_ids}
    return answer, 201 if created else 200


@blp.route("/batches")
@blp.arguments(schemas.BatchListQuerySchema(), location="query")
@blp.response(200, responses.BatchListSchema)
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR))
def list_batches(query):
    """Batches, newest first, each with its task counts by status and overall progress; page with ``limit`` /
    ``offset``."""
    found, total = service().queries.batches(query["limit"], query["offset"])
    batches = [batch_view(batch, counts) for batch, counts in found]
    return {"success": True, "batches": batches, "total": total, "limit": query["limit"], "offset": query["offset"]}


@blp.route("/batch/<batch_id>")
@blp.response(200, responses.BatchDetailSchema)
@blp.alt_response(404, **error_doc(ErrorCode.BATCH_NOT_FOUND))
def get_batch(batch_id):
    """One batch: status (running, completed, aborted, cancelled), task counts by status, overall progress, times.
    Its tasks: ``GET /api/tasks?batch_id=``."""
    return {"success": True, "batch": batch_view(*service().queries.batch(batch_id))}


@blp.route("/batch/<batch_id>/cancel", methods=["POST"])
@blp.response(200, responses.BatchDetailSchema)
@blp.alt_response(404, **error_doc(ErrorCode.BATCH_NOT_FOUND))
@blp.alt_response(409, **error_doc(ErrorCode.INVALID_STATE))
def cancel_batch(batch_id):
    """Cancel every task of the batch not yet ended (devices running one get ``cancel_task``); the batch is
    ``cancelled``."""
    service().batches.cancel(batch_id)
    return {"success": True, "message": "批次已取消", "batch": batch_view(*service().queries.batch(batch_id))}
