"""``GET /`` (the spec's system status), health and readiness, metrics, and the locally served Swagger UI assets."""

import flask
from flask import Response, current_app, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from taskserver.api import Blueprint, responses, service
from taskserver.domain import ErrorCode

blp = Blueprint("system", __name__, description="系统状态")

SYSTEM_NAME = "分布式任务系统"
VERSION = "1.0.0"


@blp.route("/")
@blp.response(200, responses.SystemSchema)
def system_status():
    """System status, exactly the spec's fields plus ``pending_tasks``."""
    return {
        "system": SYSTEM_NAME,
        "version": VERSION,
        "status": "running",
        "port": current_app.config["PORT"],
        **service().queries.system_status(),
    }


@blp.route("/healthz")
@blp.response(200, responses.HealthSchema, description="进程存活")
def healthz():
    """Liveness: the process answers (nothing else is checked, so a busy store never gets the process restarted)."""
    return {"success": True, "status": "ok"}


@blp.route("/readyz")
@blp.response(200, responses.ReadinessSchema, description="就绪")
@blp.alt_response(503, schema=responses.ReadinessSchema, description="未就绪：error_code `NOT_READY`，checks 说明原因")
def readyz():
    """Readiness: the store takes a write now, and the watchdog runs and has swept within three intervals (+5 s); on
    a cluster also Redis answers with this node subscribed, and this node's lease holds."""
    store_ok, store_reason = service().queries.store_health()
    checks = {"store": {"ok": store_ok, "reason": store_reason}, "watchdog": _watchdog_check()}
    if (cluster := current_app.extensions.get("cluster")) is not None:
        checks.update({name: {"ok": ok, "reason": reason} for name, (ok, reason) in cluster.checks().items()})
    if all(check["ok"] for check in checks.values()):
        return {"success": True, "status": "ready", "checks": checks}
    reasons = "；".join(check["reason"] for check in checks.values() if not check["ok"])
    answer = {
        "success": False,
        "status": "not_ready",
        "message": f"服务未就绪：{reasons}",
        "error_code": ErrorCode.NOT_READY,
    }
    return {**answer, "checks": checks}, 503


def _watchdog_check():
    watchdog = current_app.extensions.get("watchdog")
    if watchdog is None:
        return {"ok": False, "reason": "看门狗未运行（TASKSERVER_WATCHDOG_INTERVAL=0）", "interval": None}
    health = watchdog.health()
    check = {key: health[key] for key in ("ok", "interval", "lag", "last_sweep_age")}
    if not health["ok"]:
        check["reason"] = "看门狗已停止" if not health["running"] else "看门狗长时间未完成巡检"
    return check


@blp.route("/metrics")
@blp.doc(
    responses={
        200: {
            "description": "Prometheus 文本格式的指标（prometheus-client）",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    }
)
def metrics():
    """Prometheus metrics: devices and tasks by status, dispatches, results, timeouts, retries, device events,
    dispatch-to-result latency, watchdog lag."""
    metrics = service().metrics
    return Response(metrics.render(), content_type=metrics.content_type)


def swagger_assets(filename):
    """Swagger UI's files, served from the installed bundle (nothing is fetched from the internet)."""
    return send_from_directory(swagger_ui_path, filename)


# Flask's own add_url_rule: static files stay out of the OpenAPI document (flask-smorest has no "hide").
flask.Blueprint.add_url_rule(blp, "/api/docs/assets/<path:filename>", view_func=swagger_assets)
