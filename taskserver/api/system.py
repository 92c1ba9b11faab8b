"""``GET /`` (the spec's system status), health, and the locally served Swagger UI assets."""

from flask import current_app, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from taskserver import schemas
from taskserver.api import Blueprint, service

blp = Blueprint("system", __name__, description="系统状态")

SYSTEM_NAME = "分布式任务系统"
VERSION = "1.0.0"


@blp.route("/")
@blp.response(200, schemas.SystemSchema)
def system_status():
    """System status, exactly the spec's fields plus ``pending_tasks``."""
    return {
        "system": SYSTEM_NAME,
        "version": VERSION,
        "status": "running",
        "port": current_app.config["PORT"],
        **service().system_status(),
    }


@blp.route("/healthz")
@blp.doc(responses={200: {"description": "进程存活"}})
def healthz():
    """Liveness: the process answers."""
    return {"success": True, "status": "ok"}


@blp.route("/api/docs/assets/<path:filename>")
@blp.doc(hide=True)
def swagger_assets(filename):
    """Swagger UI's files, served from the installed bundle (nothing is fetched from the internet)."""
    return send_from_directory(swagger_ui_path, filename)
