"""``GET /api/devices``, and one device: detail, tags, disable / enable (drain), forget."""

from taskserver import schemas
from taskserver.api import Blueprint, error_doc, responses, service
from taskserver.domain import ErrorCode
from taskserver.present import device_detail, device_summary

blp = Blueprint("devices", __name__, url_prefix="/api", description="设备管理")

RECENT_HISTORY = 50


@blp.route("/devices")
@blp.arguments(schemas.DeviceListQuerySchema(), location="query")
@blp.response(200, responses.DeviceListSchema)
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR))
def list_devices(query):
    """Every known device (offline ones included), most recently registered first; filters: status, disabled, tag
    (``?tag=a&tag=b``: devices with all of them)."""
    queries = service().queries
    found = queries.devices(statuses=query["status"], disabled=query.get("disabled"), tags=query["tag"])
    devices = [device_summary(device, queries.clustered) for device in found]
    return {"success": True, "devices": devices, "total": len(devices)}


@blp.route("/device/<device_id>")
@blp.response(200, responses.DeviceDetailSchema)
@blp.alt_response(404, **error_doc(ErrorCode.DEVICE_NOT_FOUND))
def get_device(device_id):
    """One device: what it said about itself, its capacity, its active tasks and its latest 50 events."""
    return {"success": True, "device": _detail(service().queries.device(device_id))}


@blp.route("/device/<device_id>/tags", methods=["PUT"])
@blp.arguments(schemas.DeviceTagsSchema())
@blp.response(200, responses.DeviceDetailSchema)
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR))
@blp.alt_response(404, **error_doc(ErrorCode.DEVICE_NOT_FOUND))
def set_device_tags(body, device_id):
    """Set the operator's tags of a device (replacing those set before; kept across its registrations). Its
    ``tags`` become their union with the ``device_info.tags`` it registered with."""
    device = service().devices.set_device_tags(device_id, body["tags"])
    return {"success": True, "message": "设备标签已更新", "device": _detail(device)}


@blp.route("/device/<device_id>/disable", methods=["POST"])
@blp.response(200, responses.DeviceDetailSchema)
@blp.alt_response(404, **error_doc(ErrorCode.DEVICE_NOT_FOUND))
def disable_device(device_id):
    """Drain a device: it gets no new tasks (tasks pinned to it wait as pending); its running tasks finish."""
    device = service().devices.set_device_disabled(device_id, True)
    return {"success": True, "message": "设备已停用，不再分配新任务", "device": _detail(device)}


@blp.route("/device/<device_id>/enable", methods=["POST"])
@blp.response(200, responses.DeviceDetailSchema)
@blp.alt_response(404, **error_doc(ErrorCode.DEVICE_NOT_FOUND))
def enable_device(device_id):
    """Undo ``disable``: the device takes new tasks again, starting with those waiting for it."""
    device = service().devices.set_device_disabled(device_id, False)
    return {"success": True, "message": "设备已启用", "device": _detail(device)}


@blp.route("/device/<device_id>", methods=["DELETE"])
@blp.response(200, responses.DeletedSchema)
@blp.alt_response(404, **error_doc(ErrorCode.DEVICE_NOT_FOUND))
@blp.alt_response(
    409, **error_doc(ErrorCode.DEVICE_ONLINE, ErrorCode.DEVICE_HAS_ACTIVE_TASKS, ErrorCode.DEVICE_HAS_PENDING_TASKS)
)
def forget_device(device_id):
    """Forget an offline device that has no dispatched or running task and no pending task pinned to it."""
    service().devices.forget_device(device_id)
    return {"success": True, "message": "设备已删除", "device_id": device_id}


@blp.route("/device/<device_id>/token", methods=["POST"])
@blp.arguments(schemas.DevicePathSchema(), location="path", as_kwargs=True)
@blp.response(201, responses.DeviceTokenSchema)
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR))
def issue_device_token(device_id):
    """Issue a token bound to this device id (it may not have registered yet); it is shown once, stored hashed.

    From then on only this token can register the id; issuing again replaces it. The device's live connection, if
    any, gets an ``UNAUTHORIZED`` error and is closed: it reconnects with the new token."""
    token = service().devices.issue_device_token(device_id)
    return {"success": True, "device_id": device_id, "token": token, "message": "令牌只显示这一次，请妥善保存"}, 201


@blp.route("/device/<device_id>/token", methods=["DELETE"])
@blp.response(200, responses.DeletedSchema)
@blp.alt_response(404, **error_doc(ErrorCode.TOKEN_NOT_FOUND))
def revoke_device_token(device_id):
    """Revoke the device's own token: the id registers with a fleet token again (or freely, if none are set).

    The device's live connection, if any, gets an ``UNAUTHORIZED`` error and is closed."""
    service().devices.revoke_device_token(device_id)
    return {"success": True, "message": "设备专属令牌已撤销", "device_id": device_id}


def _detail(device):
    queries = service().queries
    return device_detail(
        device,
        queries.active_tasks_of(device.device_id),
        queries.device_history(device.device_id, RECENT_HISTORY),
        queries.clustered,
    )
