"""Read-only endpoints the web console draws from (any operator's script may use them too):
task types with their ``data`` schema, tasks ended per minute, devices online per minute."""

from functools import cache

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import current_app

from taskserver import schemas
from taskserver.api import Blueprint, error_doc, responses, service
from taskserver.domain import ErrorCode
from taskserver.present import iso
from taskserver.stats import throughput

blp = Blueprint("console", __name__, url_prefix="/api", description="控制台数据（只读）")

FREE_FORM = {"type": "object", "additionalProperties": True}


@blp.route("/task-types")
@blp.response(200, responses.TaskTypesSchema)
def task_types():
    """Every task type this server accepts, with the JSON Schema of its ``data`` (required fields, defaults,
    bounds); types enabled by ``TASKSERVER_EXTRA_TASK_TYPES`` take any JSON object."""
    known = [*schemas.DATA_SCHEMAS, *current_app.config["EXTRA_TASK_TYPES"]]
    listed = [{"task_type": name, "data_schema": data_json_schema(name)} for name in dict.fromkeys(known)]
    return {"success": True, "task_types": listed}


@blp.route("/stats/throughput")
@blp.arguments(schemas.StatsQuerySchema(), location="query")
@blp.response(200, responses.ThroughputSchema)
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR))
def stats_throughput(query):
    """Tasks that ended in each of the last ``minutes`` minutes (the current one included), oldest first:
    completed, failed (after their last attempt) and cancelled; counted from the tasks' ``finished_at``."""
    rows = throughput(service().queries, service().clock(), query["minutes"])
    totals = {key: sum(row[key] for row in rows) for key in ("completed", "failed", "cancelled")}
    per_minute = [{**row, "at": iso(row["at"])} for row in rows]
    return {"success": True, "minutes": query["minutes"], "totals": totals, "per_minute": per_minute}


@blp.route("/stats/devices")
@blp.arguments(schemas.StatsQuerySchema(), location="query")
@blp.response(200, responses.FleetHistorySchema)
@blp.alt_response(400, **error_doc(ErrorCode.VALIDATION_ERROR))
def stats_devices(query):
    """Devices online (connected) and busy in each of the last ``minutes`` minutes, oldest first, as sampled in
    memory every 15 s while the server runs (null for minutes without a sample, e.g. before a restart)."""
    history, now = current_app.extensions["fleet_history"], service().clock()
    history.sample(service().queries, now)
    per_minute = [{**row, "at": iso(row["at"])} for row in history.series(now, query["minutes"])]
    current = {key: per_minute[-1][key] for key in ("online", "busy")}
    return {"success": True, "minutes": query["minutes"], "now": current, "per_minute": per_minute}


@cache
def data_json_schema(task_type):
    """The JSON Schema of a task type's ``data``, nested schemas inlined; any object for types without a schema."""
    schema = schemas.DATA_SCHEMAS.get(task_type)
    if schema is None:
        return FREE_FORM
    plugin = MarshmallowPlugin(schema_name_resolver=lambda _schema: None)  # None: inline nested schemas
    APISpec("task data", "1", "3.0.3", plugins=[plugin])
    plugin.map_to_openapi_type(schemas.Timestamp, "string", None)
    return plugin.converter.schema2jsonschema(schema)
