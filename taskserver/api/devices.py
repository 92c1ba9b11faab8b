"""``GET /api/devices``."""

from taskserver import schemas
from taskserver.api import Blueprint, service
from taskserver.present import device_summary

blp = Blueprint("devices", __name__, url_prefix="/api", description="设备管理")


@blp.route("/devices")
@blp.response(200, schemas.DeviceListSchema)
def list_devices():
    """Every known device (offline ones included), most recently registered first."""
    devices = [device_summary(device) for device in service().store.list_devices()]
    return {"success": True, "devices": devices, "total": len(devices)}
